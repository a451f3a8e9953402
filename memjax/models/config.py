"""Shape and numeric settings of a Llama-family decoder."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

# Attention implementations: "auto" = Pallas kernels on TPU/GPU, XLA on CPU (memjax.kernels).
AttentionImpl = Literal["auto", "xla", "tpu", "gpu"]
ATTENTION_IMPLS = ("auto", "xla", "tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU).

  Attributes:
    vocab_size: number of token ids V.
    d_model: residual width D.
    n_layers: number of decoder blocks L.
    n_heads: query heads Hq.
    n_kv_heads: key/value heads Hkv; Hq must be a multiple of Hkv (GQA group G = Hq // Hkv).
    head_dim: width Dh of one attention head.
    d_ff: hidden width F of the SwiGLU MLP.
    rope_theta: RoPE base frequency.
    norm_eps: RMSNorm epsilon.
    max_positions: longest sequence the model was trained for (tokens).
    tie_embeddings: the output projection reuses the token embedding.
    dtype: compute dtype name, "float32" or "bfloat16".
    attention_impl: "auto" (Pallas kernels on TPU/GPU, the XLA reference on CPU), "xla",
      "tpu" or "gpu"; selects the attention of `llama.forward`, of budgeted chunks
      (`generation.step`) and of retention-decayed attention.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  max_positions: int = 2048
  tie_embeddings: bool = True
  dtype: str = "float32"
  attention_impl: AttentionImpl = "auto"

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")

  @property
  def group_size(self) -> int:
    """Query heads per KV head (G)."""
    return self.n_heads // self.n_kv_heads

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def tiny_config(**overrides) -> ModelConfig:
  """A small random-weight model for tests: 2 layers, 4 query heads, 2 KV heads."""
  fields = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64, rope_theta=10000.0, max_positions=256)
  fields.update(overrides)
  return ModelConfig(**fields)
