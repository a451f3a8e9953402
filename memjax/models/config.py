"""Shape and numeric settings of a decoder, and its per-layer plan.

`ModelConfig` holds the hyper-parameters of every supported family (Llama, Qwen2/3,
Mistral, Gemma 2/3; memjax.models.families); `ModelConfig.layer_plan()` turns them into one
`LayerSpec` per block, which the decoder (memjax.models.llama) runs in scanned runs of
identical layers.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

MEMORY_KINDS = ("pkm", "memory_plus", "titans")
# Where a product-key memory goes in its block; Titans variants (memjax.memory.titans).
PKM_PLACEMENTS = ("replace_mlp", "parallel")
TITANS_VARIANTS = ("mag", "mal")

# Attention implementations: "auto" = Pallas kernels on TPU/GPU, XLA on CPU (memjax.kernels).
AttentionImpl = Literal["auto", "xla", "tpu", "gpu"]
ATTENTION_IMPLS = ("auto", "xla", "tpu", "gpu")
ROPE_SCALINGS = ("linear", "llama3", "factors")
MLP_ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_KINDS = ("global", "sliding")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Stretched RoPE frequencies for contexts beyond the pre-training length.

  Attributes:
    kind: "linear" (every frequency divided by `factor`, i.e. positions / factor),
      "llama3" (Llama 3.1: wavelengths longer than original_max_positions / low_freq_factor
      are divided by `factor`, those shorter than original_max_positions / high_freq_factor
      kept, and the band between interpolated smoothly) or "factors" (frequency i divided
      by factors[i], as llama.cpp stores Llama 3 scaling in GGUF files: rope_freqs.weight).
    factor: the stretch ("linear", "llama3").
    low_freq_factor, high_freq_factor, original_max_positions: "llama3" only.
    factors: "factors" only: one divisor per rotated pair [Dh / 2].
  """

  kind: Literal["linear", "llama3", "factors"]
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_positions: int = 8192
  factors: tuple[float, ...] = ()

  def __post_init__(self):
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(f"RoPE scaling {self.kind!r} is not supported; supported: "
                       f"{', '.join(ROPE_SCALINGS)}")
    object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
    if self.factor <= 0 or any(f <= 0 for f in self.factors):
      raise ValueError(f"RoPE scaling factors must be > 0, got {self.factor}, {self.factors}")
    if (self.kind == "factors") != bool(self.factors):
      raise ValueError("RoPE scaling kind 'factors' needs factors (and only it takes them)")
    if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
      raise ValueError(f"llama3 RoPE scaling needs high_freq_factor > low_freq_factor, got "
                       f"{self.high_freq_factor} and {self.low_freq_factor}")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """What one decoder block does (the entries of `ModelConfig.layer_plan()`).

  Attributes:
    window: None for global causal attention; w for a sliding window: a query at position
      i sees the keys at i - w < j <= i.
    rope_theta: RoPE base of this block.
    rope_scaling: its RoPE frequency scaling, or None.
    post_norms: RMSNorm the attention and MLP outputs too before adding them to the
      residual stream (Gemma 3), besides the norms before them.
    mlp: "swiglu" (silu(x W_gate) ⊙ x W_up) W_down or "geglu" (tanh-approximate GELU).
    memory: the block carries a memory layer (`ModelConfig.memory`, memjax.memory).
    attn_soft_cap: cap c of its scaled attention logits, c · tanh(s / c) (Gemma 2), or None.
  """

  window: int | None = None
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  post_norms: bool = False
  mlp: Literal["swiglu", "geglu"] = "swiglu"
  memory: bool = False
  attn_soft_cap: float | None = None


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """Memory layers of a decoder (memjax.memory: PKM, Memory+, Titans).

  Attributes:
    kind: "pkm" (product-key memory, Lample et al. 2019), "memory_plus" (Berges et al.
      2024: W2(bag ⊙ silu(W1 x))) or "titans" (neural long-term memory, Behrouz et al. 2025).
    layers: indices of the blocks that carry a memory.
    placement: product keys only: "replace_mlp" (the memory is the block's feed-forward)
      or "parallel" (memory output added to the MLP's, same normed input).
    heads: product-key query heads, or Titans memory heads.
    k_dim: width of one product-key query (two halves of k_dim / 2).
    n_keys: sub-keys per half; the table has n_keys² value rows.
    topk: slots kept per half and per head after the second top-k.
    value_dim: width of a value row; None = d_model (required for "pkm").
    query_norm: "rms" or "layer" normalisation of the queries (never batch norm: it leaks
      future tokens in a causal model).
    qk_norm: also RMS-normalise the sub-keys ("memory_plus" stability trick).
    share_values: one value table for every memory layer (Memory+) instead of one each.
    max_gather_elems: the chunked gather never builds a [tokens, heads·topk, value_dim]
      tensor with more elements than this.
    titans_variant: "mal" (memory as a layer before attention) or "mag" (memory output
      gates the attention output).
    titans_hidden: hidden width of each head's memory MLP.
    titans_chunk: tokens per chunk of the parallel form (gradients at chunk-start weights).
    titans_lr_max: largest inner learning rate θ. At 0.1 the memory's weights blow up
      (outputs -inf) within 256 tokens at initialisation (d_model 128, 4 heads, hidden 64);
      at 0.01 they stay bounded. Long sequences need it small.
    window: if set, memory blocks attend over the last `window` positions only (the
      sliding-window branch of Titans); None = full causal attention.
  """

  kind: Literal["pkm", "memory_plus", "titans"] = "pkm"
  layers: tuple[int, ...] = ()
  placement: Literal["replace_mlp", "parallel"] = "replace_mlp"
  heads: int = 4
  k_dim: int = 64
  n_keys: int = 32
  topk: int = 8
  value_dim: int | None = None
  query_norm: Literal["rms", "layer"] = "rms"
  qk_norm: bool = False
  share_values: bool = False
  max_gather_elems: int = 1 << 22
  titans_variant: Literal["mag", "mal"] = "mal"
  titans_hidden: int = 64
  titans_chunk: int = 16
  titans_lr_max: float = 0.01
  window: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(self.layers))
    if self.kind not in MEMORY_KINDS:
      raise ValueError(f"memory kind must be one of {MEMORY_KINDS}, got {self.kind!r}")
    if self.placement not in PKM_PLACEMENTS:
      raise ValueError(f"memory placement must be one of {PKM_PLACEMENTS}, got {self.placement!r}")
    if self.titans_variant not in TITANS_VARIANTS:
      raise ValueError(
          f"titans_variant must be one of {TITANS_VARIANTS}, got {self.titans_variant!r}")
    if self.query_norm not in ("rms", "layer"):
      raise ValueError(f"query_norm must be 'rms' or 'layer' (no batch norm: it leaks future "
                       f"tokens), got {self.query_norm!r}")
    if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
      raise ValueError(f"memory layers must be distinct non-negative indices, got {self.layers}")
    if self.k_dim % 2:
      raise ValueError(f"k_dim must be even (two product-key halves), got {self.k_dim}")
    if not 1 <= self.topk <= self.n_keys:
      raise ValueError(f"need 1 <= topk <= n_keys={self.n_keys}, got topk={self.topk}")
    for field in ("heads", "n_keys", "max_gather_elems", "titans_hidden", "titans_chunk"):
      if getattr(self, field) < 1:
        raise ValueError(f"memory {field} must be >= 1, got {getattr(self, field)}")
    if self.kind == "pkm" and self.value_dim is not None:
      raise ValueError("pkm values are added to the residual stream: leave value_dim unset "
                       "(it is d_model); memory_plus has its own width")
    if self.window is not None and self.window < 1:
      raise ValueError(f"window must be >= 1 or null, got {self.window}")

  @property
  def n_slots(self) -> int:
    """Value rows of one table (n_keys²)."""
    return self.n_keys * self.n_keys


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder (RMSNorm, RoPE, GQA, gated MLP) of any supported family.

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
    memory: memory layers (memjax.memory), or None for a plain decoder.
    family: the model family (memjax.models.families) whose parameter table names and
      shapes the params: "llama", "qwen2", "qwen3", "mistral", "gemma2" or "gemma3".
    qkv_bias: q, k and v projections carry biases (Qwen2).
    qk_norm: RMSNorm over the head dim of every query and key head before RoPE, weights
      [Dh] (Qwen3, Gemma 3).
    mlp_act: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma).
    post_norms: RMSNorm the attention and MLP outputs as well (Gemma 3).
    embed_scale: multiply the embeddings by sqrt(d_model) (Gemma).
    query_pre_attn_scalar: attention logits are scaled by this ** -0.5 instead of
      head_dim ** -0.5 (Gemma); None = head_dim.
    rope_scaling: RoPE frequency scaling of the global layers, or None.
    sliding_window: window w of the sliding-window layers (a query sees its last w keys,
      itself included), or None.
    layer_kinds: per layer "global" or "sliding"; None = every layer sliding when
      sliding_window is set (Mistral), else every layer global.
    rope_local_theta: RoPE base of the sliding layers, which then get no RoPE scaling
      (Gemma 3); None = the global layers' rope_theta and scaling.
    final_soft_cap: cap c of the output logits, c · tanh(logits / c) (Gemma 2), or None.
    attn_soft_cap: cap c of the scaled attention logits of every layer (Gemma 2), or None.
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
  memory: MemoryConfig | None = None
  family: str = "llama"
  qkv_bias: bool = False
  qk_norm: bool = False
  mlp_act: Literal["silu", "gelu_tanh"] = "silu"
  post_norms: bool = False
  embed_scale: bool = False
  query_pre_attn_scalar: float | None = None
  rope_scaling: RopeScaling | None = None
  sliding_window: int | None = None
  layer_kinds: tuple[str, ...] | None = None
  rope_local_theta: float | None = None
  final_soft_cap: float | None = None
  attn_soft_cap: float | None = None

  def __post_init__(self):
    if self.layer_kinds is not None:
      object.__setattr__(self, "layer_kinds", tuple(self.layer_kinds))
      if len(self.layer_kinds) != self.n_layers or set(self.layer_kinds) - set(LAYER_KINDS):
        raise ValueError(f"layer_kinds must give one of {LAYER_KINDS} for each of the "
                         f"{self.n_layers} layers, got {self.layer_kinds}")
      if "sliding" in self.layer_kinds and self.sliding_window is None:
        raise ValueError("layer_kinds has sliding layers but sliding_window is not set")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
    if self.mlp_act not in MLP_ACTIVATIONS:
      raise ValueError(f"mlp_act must be one of {MLP_ACTIVATIONS}, got {self.mlp_act!r}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
    if self.memory is not None:
      bad = [i for i in self.memory.layers if i >= self.n_layers]
      if bad or not self.memory.layers:
        raise ValueError(f"memory layers {self.memory.layers} must be a non-empty subset of "
                         f"0..{self.n_layers - 1}")
      if self.memory.kind == "titans" and self.d_model % self.memory.heads:
        raise ValueError(f"d_model={self.d_model} is not a multiple of memory heads="
                         f"{self.memory.heads}")

  def layer_plan(self) -> tuple[LayerSpec, ...]:
    """One `LayerSpec` per block, in layer order."""
    memory_layers = set(self.memory.layers) if self.memory is not None else set()
    default = "sliding" if self.sliding_window is not None else "global"
    kinds = self.layer_kinds or (default,) * self.n_layers
    local = self.rope_local_theta is not None
    mlp = "swiglu" if self.mlp_act == "silu" else "geglu"
    return tuple(
        LayerSpec(window=self.sliding_window if kind == "sliding" else None,
                  rope_theta=self.rope_local_theta if kind == "sliding" and local
                  else self.rope_theta,
                  rope_scaling=None if kind == "sliding" and local else self.rope_scaling,
                  post_norms=self.post_norms, mlp=mlp, memory=i in memory_layers,
                  attn_soft_cap=self.attn_soft_cap)
        for i, kind in enumerate(kinds))

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
