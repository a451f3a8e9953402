"""Qwen2 / Qwen2.5: the Llama block with biases on the q, k and v projections."""

from __future__ import annotations

from memjax.models.table import LLAMA_TENSORS, Family, Tensor, kv_width, q_width


def bias(name: str, width, axis: str) -> Tensor:
  return Tensor(f"layers/b{name}", lambda c: (width(c),), (axis,),
                f"model.layers.{{i}}.self_attn.{name}_proj.bias", f"blk.{{i}}.attn_{name}.bias",
                init="zeros", when=lambda c: c.qkv_bias)


QKV_BIASES = (bias("q", q_width, "heads"), bias("k", kv_width, "kv_heads"),
              bias("v", kv_width, "kv_heads"))


def without_unused_window(hf: dict) -> dict:
  """Qwen configs carry a `sliding_window` that only `use_sliding_window` switches on."""
  return {} if hf.get("use_sliding_window") else {"sliding_window": None, "layer_kinds": None}


FAMILY = Family(name="qwen2", tensors=LLAMA_TENSORS + QKV_BIASES, hf_model_types=("qwen2",),
                gguf_architecture="qwen2",
                hf_fields=lambda hf: {"qkv_bias": True, **without_unused_window(hf)},
                gguf_fields=lambda get: {"qkv_bias": True})
