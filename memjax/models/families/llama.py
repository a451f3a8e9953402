"""Llama 1-3 (and SmolLM2): pre-norm blocks, SwiGLU, no biases; Llama 3.x RoPE scaling
comes through the common RoPE fields."""

from __future__ import annotations

from memjax.models.table import LLAMA_TENSORS, Family


def hf_fields(hf: dict) -> dict:
  """Rejects the LlamaConfig options memjax does not implement."""
  for option in ("attention_bias", "mlp_bias"):
    if hf.get(option, False):
      raise ValueError(f"{option} is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (supported: 'silu')")
  return {}


FAMILY = Family(name="llama", tensors=LLAMA_TENSORS, hf_model_types=("llama",),
                gguf_architecture="llama", hf_fields=hf_fields, gguf_fields=lambda get: {},
                gguf_interleaved_rope=True)
