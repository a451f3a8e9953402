"""Parameter tables: every tensor of a model family, read by init, loaders and sharding.

A family's table lists each parameter once with its shape, logical sharding axes, and
its names in Hugging Face and GGUF checkpoints. `memjax.models.llama.init_params`,
`memjax.io.safetensors_loader`, `memjax.io.gguf_loader` and `memjax.sharding.logical` all
read it, so a new weight is one new row. Per-layer tensors have paths "layers/<key>"
and are stacked over a leading layer axis L; their shapes and axes here leave L out.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

from memjax.models.config import ModelConfig

Init = Literal["normal", "ones", "zeros"]


def _always(cfg: ModelConfig) -> bool:
  del cfg
  return True


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One parameter of a family.

  Attributes:
    path: "/"-joined keys in the params dict, e.g. "embed" or "layers/wq".
    shape: the config -> its shape (without the layer axis), in memjax's `x @ w` layout.
    axes: logical axis name of each dimension (memjax.sharding), without "layers".
    hf: name in a Hugging Face checkpoint; "{i}" stands for the layer index.
    gguf: name in a GGUF file (llama.cpp), "{i}" likewise; None if GGUF has none.
    init: "normal" (N(0, scale)), "ones" or "zeros" in `init_params`.
    transpose: checkpoints store it as [out, in]; transposed on loading.
    hf_offset: added to the Hugging Face values on loading (Gemma stores norm weights w
      for a norm that scales by 1 + w; memjax always scales by the stored weight).
    rope_heads: "heads" or "kv_heads" for the q / k projections that llama.cpp permutes
      for its interleaved RoPE in families with `gguf_interleaved_rope`.
    when: whether a config has this tensor (e.g. only with untied embeddings).
  """

  path: str
  shape: Callable[[ModelConfig], tuple[int, ...]]
  axes: tuple[str | None, ...]
  hf: str
  gguf: str | None
  init: Init = "normal"
  transpose: bool = False
  hf_offset: float = 0.0
  rope_heads: Literal["heads", "kv_heads"] | None = None
  when: Callable[[ModelConfig], bool] = _always

  @property
  def per_layer(self) -> bool:
    return self.path.startswith("layers/")


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its parameter table and how its checkpoints describe a config.

  Attributes:
    name: the `ModelConfig.family` value.
    tensors: the parameter table.
    hf_model_types: Hugging Face `model_type` values of its config.json.
    gguf_architecture: `general.architecture` of its GGUF files, or None.
    hf_fields: the parsed config.json -> family-specific ModelConfig fields (the loader
      reads the common ones: sizes, RoPE, sliding window, layer kinds).
    gguf_fields: a GGUF metadata reader `get(key after "<architecture>.")` ->
      family-specific ModelConfig fields.
    gguf_interleaved_rope: llama.cpp permuted the q / k projections of its GGUF files
      (the "llama" architecture; others keep Hugging Face's layout).
  """

  name: str
  tensors: tuple[Tensor, ...]
  hf_model_types: tuple[str, ...]
  gguf_architecture: str | None
  hf_fields: Callable[[dict], dict]
  gguf_fields: Callable[[Callable], dict]
  gguf_interleaved_rope: bool = False

  def tensors_of(self, cfg: ModelConfig) -> tuple[Tensor, ...]:
    """The rows a config has."""
    return tuple(t for t in self.tensors if t.when(cfg))


def q_width(cfg: ModelConfig) -> int:
  return cfg.n_heads * cfg.head_dim


def kv_width(cfg: ModelConfig) -> int:
  return cfg.n_kv_heads * cfg.head_dim


def untied(cfg: ModelConfig) -> bool:
  return not cfg.tie_embeddings


LLAMA_TENSORS = (
    Tensor("embed", lambda c: (c.vocab_size, c.d_model), ("vocab", "embed"),
           "model.embed_tokens.weight", "token_embd.weight"),
    Tensor("final_norm", lambda c: (c.d_model,), ("norm",), "model.norm.weight",
           "output_norm.weight", init="ones"),
    Tensor("lm_head", lambda c: (c.d_model, c.vocab_size), ("embed", "vocab"),
           "lm_head.weight", "output.weight", transpose=True, when=untied),
    Tensor("layers/attn_norm", lambda c: (c.d_model,), ("norm",),
           "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", init="ones"),
    Tensor("layers/wq", lambda c: (c.d_model, q_width(c)), ("embed", "heads"),
           "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight",
           transpose=True, rope_heads="heads"),
    Tensor("layers/wk", lambda c: (c.d_model, kv_width(c)), ("embed", "kv_heads"),
           "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight",
           transpose=True, rope_heads="kv_heads"),
    Tensor("layers/wv", lambda c: (c.d_model, kv_width(c)), ("embed", "kv_heads"),
           "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight",
           transpose=True),
    Tensor("layers/wo", lambda c: (q_width(c), c.d_model), ("heads", "embed"),
           "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight",
           transpose=True),
    Tensor("layers/mlp_norm", lambda c: (c.d_model,), ("norm",),
           "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight",
           init="ones"),
    Tensor("layers/w_gate", lambda c: (c.d_model, c.d_ff), ("embed", "mlp"),
           "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", transpose=True),
    Tensor("layers/w_up", lambda c: (c.d_model, c.d_ff), ("embed", "mlp"),
           "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", transpose=True),
    Tensor("layers/w_down", lambda c: (c.d_ff, c.d_model), ("mlp", "embed"),
           "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", transpose=True),
)


def qk_norm_tensors(hf_offset: float = 0.0) -> tuple[Tensor, ...]:
  """RMSNorm weights [Dh] over each query / key head (Qwen3, Gemma 3)."""
  return tuple(
      Tensor(f"layers/{x}_norm", lambda c: (c.head_dim,), ("head_dim",),
             f"model.layers.{{i}}.self_attn.{x}_norm.weight", f"blk.{{i}}.attn_{x}_norm.weight",
             init="ones", hf_offset=hf_offset, when=lambda c: c.qk_norm)
      for x in ("q", "k"))


def replace(tensors: tuple[Tensor, ...], path: str, **changes) -> tuple[Tensor, ...]:
  """`tensors` with the row at `path` changed (its HF name, say)."""
  if path not in {t.path for t in tensors}:
    raise KeyError(f"no tensor {path!r} in the table")
  return tuple(dataclasses.replace(t, **changes) if t.path == path else t for t in tensors)
