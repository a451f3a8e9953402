"""Pure-functional Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Parameters are a plain dict of arrays with the per-layer weights stacked on a leading
layer axis L (see `init_params`); matrices are applied as `x @ w`. The layer loop is a
`jax.lax.scan`, so compile time does not grow with depth.

A config with `memory` set adds memory layers (memjax.memory.decoder): their params live
under params["memory"], outside the scanned stack, and `forward` runs the plain layers
between them as scanned segments.
"""

from __future__ import annotations

from typing import Any, Callable

import einops
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from memjax import kernels
from memjax.attention import reference
from memjax.models.config import ModelConfig
from memjax.sharding import kernels as mesh_kernels
from memjax.sharding.rules import Rules

Params = dict[str, Any]
# mix(layer_params, h, q, k, v, positions, layer_state) -> (attention output, new layer_state),
# where h [B, T, D] is the normed hidden state that q, k and v were projected from.
Mixer = Callable[..., tuple[jax.Array, Any]]


def init_params(cfg: ModelConfig, key: jax.Array, scale: float = 0.02) -> Params:
  """Random parameters N(0, scale) with unit norm weights; layout as documented above."""
  d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layers
  shapes = {
      "wq": (L, d, cfg.n_heads * cfg.head_dim),
      "wk": (L, d, cfg.n_kv_heads * cfg.head_dim),
      "wv": (L, d, cfg.n_kv_heads * cfg.head_dim),
      "wo": (L, cfg.n_heads * cfg.head_dim, d),
      "w_gate": (L, d, f), "w_up": (L, d, f), "w_down": (L, f, d),
  }
  keys = jax.random.split(key, len(shapes) + 2)
  dtype = cfg.jnp_dtype
  layers = {name: (scale * jax.random.normal(k, shape)).astype(dtype)
            for k, (name, shape) in zip(keys, shapes.items())}
  layers["attn_norm"] = jnp.ones((L, d), dtype)
  layers["mlp_norm"] = jnp.ones((L, d), dtype)
  params = {"embed": (scale * jax.random.normal(keys[-1], (cfg.vocab_size, d))).astype(dtype),
            "layers": layers, "final_norm": jnp.ones((d,), dtype)}
  if not cfg.tie_embeddings:
    params["lm_head"] = (scale * jax.random.normal(keys[-2], (d, cfg.vocab_size))).astype(dtype)
  if cfg.memory is not None:
    from memjax.memory import decoder  # builds on this module
    params["memory"] = jax.tree.map(lambda a: a.astype(dtype),
                                    decoder.init_params(cfg, jax.random.fold_in(key, 1)))
  return params


def cast_params(params: Params, cfg: ModelConfig) -> Params:
  """Params as jnp arrays in the config's compute dtype."""
  return jax.tree.map(lambda a: jnp.asarray(a, cfg.jnp_dtype), params)


def rms_norm(x_BxTxD: jax.Array, w_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm computed in float32, returned in the input dtype."""
  x = x_BxTxD.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return (x * w_D.astype(jnp.float32)).astype(x_BxTxD.dtype)


def rope(x_BxTxHxDh: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the "rotate half" layout: dims i and i + Dh/2 form a pair."""
  half = x_BxTxHxDh.shape[-1] // 2
  inv_freq = theta ** (-np.arange(half, dtype=np.float32) / half)
  angle_BxTxHalf = positions_BxT[..., None].astype(jnp.float32) * inv_freq
  cos = jnp.cos(angle_BxTxHalf)[:, :, None, :]
  sin = jnp.sin(angle_BxTxHalf)[:, :, None, :]
  x = x_BxTxHxDh.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxHxDh.dtype)


def qkv(p: Params, h_BxTxD: jax.Array, positions_BxT: jax.Array, cfg: ModelConfig):
  """Projected and rotated q [B,T,Hq,Dh], k [B,T,Hkv,Dh], v [B,T,Hkv,Dh] from the normed state."""
  split = lambda w: einops.rearrange(h_BxTxD @ w, "b t (h d) -> b t h d", d=cfg.head_dim)
  q, k, v = split(p["wq"]), split(p["wk"]), split(p["wv"])
  return rope(q, positions_BxT, cfg.rope_theta), rope(k, positions_BxT, cfg.rope_theta), v


def mlp(p: Params, x_BxTxD: jax.Array, cfg: ModelConfig) -> jax.Array:
  """SwiGLU feed-forward on the normed residual stream."""
  h = rms_norm(x_BxTxD, p["mlp_norm"], cfg.norm_eps)
  return (jax.nn.silu(h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]


def attention(p: Params, x_BxTxD: jax.Array, positions_BxT: jax.Array, state: Any,
              mix: Mixer, cfg: ModelConfig) -> tuple[jax.Array, Any]:
  """The attention sublayer's output [B, T, D] (to add to the residual stream) and state."""
  h_BxTxD = rms_norm(x_BxTxD, p["attn_norm"], cfg.norm_eps)
  q, k, v = qkv(p, h_BxTxD, positions_BxT, cfg)
  o_BxTxHqxDh, state = mix(p, h_BxTxD, q, k, v, positions_BxT, state)
  return einops.rearrange(o_BxTxHqxDh, "b t h d -> b t (h d)") @ p["wo"], state


def block(p: Params, x_BxTxD: jax.Array, positions_BxT: jax.Array, state: Any,
          mix: Mixer, cfg: ModelConfig) -> tuple[jax.Array, Any]:
  """One decoder block; `mix` attends q over k/v (and whatever state it keeps)."""
  o_BxTxD, state = attention(p, x_BxTxD, positions_BxT, state, mix, cfg)
  x_BxTxD = x_BxTxD + o_BxTxD
  return x_BxTxD + mlp(p, x_BxTxD, cfg), state


def embed(params: Params, tokens_BxT: jax.Array, cfg: ModelConfig) -> jax.Array:
  return params["embed"][tokens_BxT].astype(cfg.jnp_dtype)


def unembed(params: Params, x_BxTxD: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Final norm and output projection; float32 logits [B, T, V]."""
  h = rms_norm(x_BxTxD, params["final_norm"], cfg.norm_eps)
  w_DxV = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  return jnp.einsum("btd,dv->btv", h, w_DxV.astype(h.dtype),
                    preferred_element_type=jnp.float32)


def run_layers(layers: Params, x_BxTxD: jax.Array, positions_BxT: jax.Array, states: Any,
               mix: Mixer, cfg: ModelConfig, remat: bool = False) -> tuple[jax.Array, Any]:
  """Scan the blocks whose stacked params are `layers` (leading axis = layer).

  `states` is stacked the same way (or None) and is returned updated. With `remat`, each
  block's activations are recomputed in the backward pass instead of stored.
  """
  def step(x, layer):
    p, state = layer
    return block(p, x, positions_BxT, state, mix, cfg)

  return jax.lax.scan(jax.checkpoint(step) if remat else step, x_BxTxD, (layers, states))


def _attend_sequence(q, k_BxTxHkvxDh, v_BxTxHkvxDh, mask_BxHkvxTxT):
  """The XLA reference attention of a whole sequence over itself under `mask`."""
  k = einops.rearrange(k_BxTxHkvxDh, "b t h d -> b h t d")
  v = einops.rearrange(v_BxTxHkvxDh, "b t h d -> b h t d")
  return reference.attend(q, k, v, mask_BxHkvxTxT)[0]


def _full_causal_mix(p, h, q, k, v, positions_BxT, state):
  return _attend_sequence(q, k, v, reference.causal_mask(positions_BxT)), state


def full_causal_mixer(cfg: ModelConfig, mesh: Mesh | None = None,
                      rules: Rules | None = None) -> Mixer:
  """Causal attention over the whole sequence (positions 0..T-1 in every row) by
  `cfg.attention_impl`: the XLA reference, or the Pallas flash-attention kernel (per
  device block of batch rows and KV heads on `mesh`, see `memjax.sharding.kernels`)."""
  backend = kernels.resolve(cfg.attention_impl)
  if backend == "xla":
    return _full_causal_mix

  def mix(p, h, q, k, v, positions_BxT, state):
    return mesh_kernels.flash_attention(q, k, v, causal=True, backend=backend, mesh=mesh,
                                        rules=rules), state

  return mix


def sliding_window_mixer(window: int) -> Mixer:
  """Causal attention over the last `window` positions of each query (itself included),
  on the XLA reference path: a query at position i sees keys at i - window < j <= i."""
  if window < 1:
    raise ValueError(f"the attention window must be >= 1, got {window}")

  def mix(p, h, q, k, v, positions_BxT, state):
    gap_BxTxT = positions_BxT[:, :, None] - positions_BxT[:, None, :]
    return _attend_sequence(q, k, v, ((gap_BxTxT >= 0) & (gap_BxTxT < window))[:, None]), state

  return mix


def forward(params: Params, tokens_BxT: jax.Array, cfg: ModelConfig, remat: bool = False, *,
            mesh: Mesh | None = None, rules: Rules | None = None,
            mix: Mixer | None = None) -> jax.Array:
  """Causal attention over the whole sequence: float32 logits [B, T, V].

  Under a `jit` sharded on `mesh` (logical axis `rules`, default
  `memjax.sharding.DEFAULT_RULES`), Pallas attention runs per device block; the XLA path
  ignores both (GSPMD partitions it). `mix` replaces the attention of every block
  (default: full causal, `full_causal_mixer`), e.g. `sliding_window_mixer(w)`.
  """
  mix = mix or full_causal_mixer(cfg, mesh, rules)
  if cfg.memory is not None:
    from memjax.memory import decoder  # builds on this module
    return decoder.forward(params, tokens_BxT, cfg, remat, mix=mix)[0]
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  x, _ = run_layers(params["layers"], embed(params, tokens_BxT, cfg), positions_BxT, None,
                    mix, cfg, remat)
  return unembed(params, x, cfg)
