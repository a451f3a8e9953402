"""Pure-functional decoder of every supported family, driven by a per-layer plan.

`ModelConfig.layer_plan()` gives each block a `LayerSpec`: its attention (global or a
sliding window), RoPE (theta and scaling), norm placement (before, or before and after,
attention and MLP), MLP kind (SwiGLU or GeGLU) and whether it carries a memory layer.
`run_layers` scans each run of consecutive identical blocks (`jax.lax.scan`, so compile
time grows with the number of distinct runs, not with depth) and hands memory blocks to
the memory implementation that registered itself in `MEMORY_LAYERS` (memjax.memory), so
this module never imports memjax.memory.

Parameters are a plain dict of arrays laid out by the family's parameter table
(`memjax.models.table`, `families.param_table`): per-layer weights stacked on a leading layer
axis L, matrices applied as `x @ w`. That stacked layout is what checkpoints, training and
the sharding rules use. Inference reads `per_layer(params)` instead: `params["layers"]` a
tuple of one dict per layer, each weight its own buffer, and `run_layers` unrolls the
blocks. Measured on SmolLM2-135M (float32, 2 CPU cores, one token): 29 ms a forward with
per-layer buffers against 45 ms scanning the stack (XLA copies each layer's slice of the
stacked weights on every call) and 141 ms slicing the stack inside the jit. The same `run_layers` serves the plain forward, the gated
(TRIM-KV) forward (memjax.retention.model), memory decoders (memjax.memory.decoder) and the
budgeted cache's layer groups (memjax.generation.step): they differ only in their `Mixer`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, NamedTuple

import einops
import jax
import jax.numpy as jnp
import numpy as np

from memjax import kernels
from memjax.attention import reference
from memjax.models.config import LayerSpec, ModelConfig, RopeScaling
from memjax.models.families import param_table
from memjax.sharding import kernels as mesh_kernels

Params = dict[str, Any]
# mix(spec, layer_params, h, q, k, v, positions, layer_state) -> (attention output, new
# layer_state), where h [B, T, D] is the normed hidden state that q, k and v were projected
# from and `spec` the block's LayerSpec (its attention window, RoPE).
Mixer = Callable[..., tuple[jax.Array, Any]]
# memory_block(index, x_BxTxD) -> x_BxTxD: block `index` with its memory layer.
MemoryBlock = Callable[[int, jax.Array], jax.Array]


class MemoryLayers(NamedTuple):
  """The memory-layer implementation (memjax.memory.decoder registers one on import).

  init_params(cfg, key) -> params["memory"]; forward(params, tokens, cfg, remat, mix=...)
  -> (logits, per-block lookups).
  """
  init_params: Callable[..., Params]
  forward: Callable[..., tuple[jax.Array, list]]


MEMORY_LAYERS: dict[str, MemoryLayers] = {}


def memory_layers() -> MemoryLayers:
  """The registered memory implementation, or a clear error when none is."""
  if "memory" not in MEMORY_LAYERS:
    raise ValueError("this config has memory layers: import memjax.memory (it registers "
                     "their implementation) before building or running the model")
  return MEMORY_LAYERS["memory"]


def init_params(cfg: ModelConfig, key: jax.Array, scale: float = 0.02) -> Params:
  """Random parameters by the family table: N(0, scale) matrices, unit norms, zero biases."""
  dtype = cfg.jnp_dtype
  params = {"layers": {}}
  for i, t in enumerate(param_table(cfg)):
    shape = (cfg.n_layers, *t.shape(cfg)) if t.per_layer else t.shape(cfg)
    if t.init == "normal":
      value = scale * jax.random.normal(jax.random.fold_in(key, i), shape)
    else:
      value = jnp.full(shape, 1.0 if t.init == "ones" else 0.0)
    if t.per_layer:
      params["layers"][t.path.split("/", 1)[1]] = value.astype(dtype)
    else:
      params[t.path] = value.astype(dtype)
  if cfg.memory is not None:
    params["memory"] = jax.tree.map(lambda a: a.astype(dtype), memory_layers().init_params(
        cfg, jax.random.fold_in(key, 1 << 20)))
  return params


def cast_params(params: Params, cfg: ModelConfig) -> Params:
  """Params as jnp arrays in the config's compute dtype."""
  return jax.tree.map(lambda a: jnp.asarray(a, cfg.jnp_dtype), params)


def rms_norm(x_BxTxD: jax.Array, w_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm over the last axis, computed in float32, returned in the input dtype."""
  x = x_BxTxD.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return (x * w_D.astype(jnp.float32)).astype(x_BxTxD.dtype)


def rope_frequencies(head_dim: int, theta: float,
                     scaling: RopeScaling | None = None) -> np.ndarray:
  """float32 [Dh/2] angular frequency of each rotated pair, after `scaling`."""
  half = head_dim // 2
  inv_freq = theta ** (-np.arange(half, dtype=np.float64) / half)
  if scaling is None:
    return inv_freq.astype(np.float32)
  if scaling.kind == "linear":
    return (inv_freq / scaling.factor).astype(np.float32)
  if scaling.kind == "factors":
    if len(scaling.factors) != half:
      raise ValueError(f"{len(scaling.factors)} RoPE frequency factors for {half} frequencies")
    return (inv_freq / np.asarray(scaling.factors)).astype(np.float32)
  wavelength = 2 * math.pi / inv_freq
  long_wavelength = scaling.original_max_positions / scaling.low_freq_factor
  short_wavelength = scaling.original_max_positions / scaling.high_freq_factor
  smooth = ((scaling.original_max_positions / wavelength - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
  scaled = np.where(wavelength > long_wavelength, inv_freq / scaling.factor,
                    np.where(wavelength < short_wavelength, inv_freq, blended))
  return scaled.astype(np.float32)


def rope(x_BxTxHxDh: jax.Array, positions_BxT: jax.Array, theta: float,
         scaling: RopeScaling | None = None) -> jax.Array:
  """Rotary embedding in the "rotate half" layout: dims i and i + Dh/2 form a pair."""
  half = x_BxTxHxDh.shape[-1] // 2
  inv_freq = rope_frequencies(x_BxTxHxDh.shape[-1], theta, scaling)
  angle_BxTxHalf = positions_BxT[..., None].astype(jnp.float32) * inv_freq
  cos = jnp.cos(angle_BxTxHalf)[:, :, None, :]
  sin = jnp.sin(angle_BxTxHalf)[:, :, None, :]
  x = x_BxTxHxDh.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxHxDh.dtype)


def qkv(p: Params, h_BxTxD: jax.Array, positions_BxT: jax.Array, spec: LayerSpec,
        cfg: ModelConfig):
  """Projected (biased, head-normed) and rotated q [B,T,Hq,Dh], k [B,T,Hkv,Dh] and v
  [B,T,Hkv,Dh] from the normed state. q carries the family's logit scale relative to
  Dh^-0.5 (`query_pre_attn_scalar`), so every attention path scales by Dh^-0.5."""
  def project(name):
    y = h_BxTxD @ p[f"w{name}"]
    if cfg.qkv_bias:
      y = y + p[f"b{name}"]
    y = einops.rearrange(y, "b t (h d) -> b t h d", d=cfg.head_dim)
    return rms_norm(y, p[f"{name}_norm"], cfg.norm_eps) if cfg.qk_norm and name != "v" else y

  q, k, v = project("q"), project("k"), project("v")
  if cfg.query_pre_attn_scalar is not None:
    q = q * jnp.asarray(math.sqrt(cfg.head_dim / cfg.query_pre_attn_scalar), q.dtype)
  return (rope(q, positions_BxT, spec.rope_theta, spec.rope_scaling),
          rope(k, positions_BxT, spec.rope_theta, spec.rope_scaling), v)


def mlp(p: Params, x_BxTxD: jax.Array, spec: LayerSpec, cfg: ModelConfig) -> jax.Array:
  """The gated feed-forward sublayer's output (to add to the residual stream)."""
  h = rms_norm(x_BxTxD, p["mlp_norm"], cfg.norm_eps)
  gate = h @ p["w_gate"]
  act = jax.nn.silu(gate) if spec.mlp == "swiglu" else jax.nn.gelu(gate, approximate=True)
  out = (act * (h @ p["w_up"])) @ p["w_down"]
  return rms_norm(out, p["mlp_post_norm"], cfg.norm_eps) if spec.post_norms else out


def attention(p: Params, x_BxTxD: jax.Array, positions_BxT: jax.Array, state: Any,
              mix: Mixer, spec: LayerSpec, cfg: ModelConfig) -> tuple[jax.Array, Any]:
  """The attention sublayer's output [B, T, D] (to add to the residual stream) and state."""
  h_BxTxD = rms_norm(x_BxTxD, p["attn_norm"], cfg.norm_eps)
  q, k, v = qkv(p, h_BxTxD, positions_BxT, spec, cfg)
  o_BxTxHqxDh, state = mix(spec, p, h_BxTxD, q, k, v, positions_BxT, state)
  out = einops.rearrange(o_BxTxHqxDh, "b t h d -> b t (h d)") @ p["wo"]
  if spec.post_norms:
    out = rms_norm(out, p["attn_post_norm"], cfg.norm_eps)
  return out, state


def block(p: Params, x_BxTxD: jax.Array, positions_BxT: jax.Array, state: Any,
          mix: Mixer, spec: LayerSpec, cfg: ModelConfig) -> tuple[jax.Array, Any]:
  """One decoder block; `mix` attends q over k/v (and whatever state it keeps)."""
  o_BxTxD, state = attention(p, x_BxTxD, positions_BxT, state, mix, spec, cfg)
  x_BxTxD = x_BxTxD + o_BxTxD
  return x_BxTxD + mlp(p, x_BxTxD, spec, cfg), state


def embed(params: Params, tokens_BxT: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Token embeddings [B, T, D] in the compute dtype (times sqrt(D) where the family
  scales them)."""
  x = params["embed"][tokens_BxT].astype(cfg.jnp_dtype)
  return x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype) if cfg.embed_scale else x


def unembed(params: Params, x_BxTxD: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Final norm and output projection; float32 logits [B, T, V] (soft-capped if set)."""
  h = rms_norm(x_BxTxD, params["final_norm"], cfg.norm_eps)
  w_DxV = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  logits = jnp.einsum("btd,dv->btv", h, w_DxV.astype(h.dtype),
                      preferred_element_type=jnp.float32)
  if cfg.final_soft_cap is not None:
    logits = cfg.final_soft_cap * jnp.tanh(logits / cfg.final_soft_cap)
  return logits


def layer_runs(cfg: ModelConfig, start: int = 0,
               stop: int | None = None) -> list[tuple[int, int, LayerSpec]]:
  """(first, end, spec) of each run of consecutive identical blocks in [start, stop);
  a memory block is a run of its own."""
  plan = cfg.layer_plan()
  stop = len(plan) if stop is None else stop
  runs, first = [], start
  for spec, group in itertools.groupby(range(start, stop), key=lambda i: plan[i]):
    n = len(list(group))
    for _ in range(n if spec.memory else 1):
      width = 1 if spec.memory else n
      runs.append((first, first + width, spec))
      first += width
  return runs


def _slice(tree: Any, start: int, stop: int) -> Any:
  return jax.tree.map(lambda a: a[start:stop], tree)


def is_per_layer(params: Params) -> bool:
  """Whether `params["layers"]` holds one dict per layer (`per_layer`) rather than stacks."""
  return isinstance(params["layers"], (tuple, list))


def per_layer(params: Params) -> Params:
  """The inference layout: `params["layers"]` as a tuple of L dicts, layer l's weights
  [...] (the stack's [L, ...] sliced), each its own buffer. Already per-layer params
  come back as they are. Other entries (embeddings, final norm) are shared, not copied."""
  if is_per_layer(params):
    return params
  stack = params["layers"]
  n = jax.tree.leaves(stack)[0].shape[0]
  return {**params, "layers": tuple(jax.tree.map(lambda a: a[i], stack) for i in range(n))}


def run_layers(params: Params, x_BxTxD: jax.Array, positions_BxT: jax.Array, states: Any,
               mix: Mixer, cfg: ModelConfig, remat: bool = False, *, start: int = 0,
               stop: int | None = None,
               memory_block: MemoryBlock | None = None) -> tuple[jax.Array, Any]:
  """Blocks start..stop-1 (default all): each run of identical blocks scanned when the
  params are stacked, every block in turn when they are `per_layer`.

  Args:
    params: the model params, stacked (their "layers" stack is sliced per run) or
      `per_layer`.
    states: per-layer states over [start, stop) (or None): stacked like the layers for
      stacked params, a sequence of one state per layer for per-layer params; the updated
      states come back in the same form (without states, what the blocks emit comes back
      stacked [L, ...] either way).
    mix: the attention of every block.
    remat: recompute each block's activations in the backward pass instead of storing them.
    memory_block: runs a block with a memory layer (memjax.memory.decoder); needed when
      the range holds one.
  """
  outputs, unrolled = [], is_per_layer(params)
  for first, end, spec in layer_runs(cfg, start, stop):
    if spec.memory:
      if memory_block is None:
        raise ValueError(f"layer {first} carries a memory layer: run it with "
                         "memjax.memory.decoder.forward")
      x_BxTxD = memory_block(first, x_BxTxD)
      continue
    if unrolled:
      run_block = jax.checkpoint(block, static_argnums=(4, 5, 6)) if remat else block
      for i in range(first, end):
        state = None if states is None else states[i - start]
        x_BxTxD, new = run_block(params["layers"][i], x_BxTxD, positions_BxT, state, mix, spec,
                                 cfg)
        outputs.append(new)
      continue

    def step(x, layer, spec=spec):
      p, state = layer
      return block(p, x, positions_BxT, state, mix, spec, cfg)

    run_states = None if states is None else _slice(states, first - start, end - start)
    x_BxTxD, new = jax.lax.scan(jax.checkpoint(step) if remat else step, x_BxTxD,
                                (_slice(params["layers"], first, end), run_states))
    outputs.append(new)
  if states is None and all(o is None for o in outputs):
    return x_BxTxD, None
  if unrolled and states is not None:
    return x_BxTxD, tuple(outputs)
  if unrolled:  # what the blocks emitted, stacked as a scan stacks it
    return x_BxTxD, jax.tree.map(lambda *a: jnp.stack(a), *outputs)
  return x_BxTxD, jax.tree.map(lambda *a: jnp.concatenate(a), *outputs)


def visible_keys(positions_BxT: jax.Array, spec: LayerSpec) -> jax.Array:
  """bool [B, 1, T, T]: query i sees key j (causal, and within the block's window)."""
  gap_BxTxT = positions_BxT[:, :, None] - positions_BxT[:, None, :]
  visible = gap_BxTxT >= 0
  if spec.window is not None:
    visible &= gap_BxTxT < spec.window
  return visible[:, None]


def _plan_mix(spec, p, h, q, k_BxTxHkvxDh, v_BxTxHkvxDh, positions_BxT, state):
  """The XLA reference attention of a whole sequence over itself under the block's mask."""
  k = einops.rearrange(k_BxTxHkvxDh, "b t h d -> b h t d")
  v = einops.rearrange(v_BxTxHkvxDh, "b t h d -> b h t d")
  mask = visible_keys(positions_BxT, spec)
  return reference.attend(q, k, v, mask, spec.attn_soft_cap)[0], state


def full_causal_mixer(cfg: ModelConfig) -> Mixer:
  """Causal attention over the whole sequence (positions 0..T-1 in every row), each block
  within its own window (`LayerSpec.window`). Global blocks run by `cfg.attention_impl`:
  the XLA reference, or the Pallas flash-attention kernel (per device block of batch rows
  and KV heads on the placement's mesh, see `memjax.sharding.kernels`); sliding-window
  blocks always take the XLA path (the kernels have no window)."""
  backend = kernels.resolve(cfg.attention_impl)
  if backend == "xla":
    return _plan_mix

  def mix(spec, p, h, q, k, v, positions_BxT, state):
    if spec.window is not None:
      return _plan_mix(spec, p, h, q, k, v, positions_BxT, state)
    return mesh_kernels.flash_attention(q, k, v, causal=True, soft_cap=spec.attn_soft_cap,
                                        backend=backend), state

  return mix


def sliding_window_mixer(window: int) -> Mixer:
  """Causal attention over the last `window` positions of each query (itself included) in
  every block, whatever its spec, on the XLA reference path: a query at position i sees
  keys at i - window < j <= i."""
  if window < 1:
    raise ValueError(f"the attention window must be >= 1, got {window}")

  def mix(spec, p, h, q, k, v, positions_BxT, state):
    windowed = LayerSpec(window=window, attn_soft_cap=spec.attn_soft_cap)
    return _plan_mix(windowed, p, h, q, k, v, positions_BxT, state)

  return mix


def forward(params: Params, tokens_BxT: jax.Array, cfg: ModelConfig, remat: bool = False, *,
            mix: Mixer | None = None) -> jax.Array:
  """Causal attention over the whole sequence: float32 logits [B, T, V].

  Traced under a placement with a mesh (`memjax.sharding.placement`), Pallas attention
  runs per device block; the XLA path ignores it (GSPMD partitions it). `mix` replaces the
  attention of every block (default: the plan's, `full_causal_mixer`), e.g.
  `sliding_window_mixer(w)`.
  """
  mix = mix or full_causal_mixer(cfg)
  if cfg.memory is not None:
    return memory_layers().forward(params, tokens_BxT, cfg, remat, mix=mix)[0]
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  x, _ = run_layers(params, embed(params, tokens_BxT, cfg), positions_BxT, None, mix, cfg,
                    remat)
  return unembed(params, x, cfg)
