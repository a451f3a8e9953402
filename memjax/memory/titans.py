"""Titans neural long-term memory (Behrouz et al. 2025): an MLP written to at test time.

Per head, the memory is M_w(x) = silu(x W1) W2 with weights w = (W1 [Dh, F], W2 [F, Dh]).
Token t (key k_t, value v_t, query q_t, gates α_t forget, η_t momentum, θ_t step size)
updates it by the surprise rule and is then read:

  g_t = ∇_w ‖M_w(k_t) − v_t‖²  at w = the weights at the start of t's chunk
  S_t = η_t S_{t−1} − θ_t g_t
  w_t = (1 − α_t) w_{t−1} + S_t
  y_t = M_{w_t}(q_t)

With chunk size 1 this is online gradient descent with momentum and forgetting. In the
parallel form all gradients of a chunk are taken at once (they share their weights), and
both linear recurrences run as associative scans over the chunk; the per-token weights
[C, |w|] exist one chunk at a time. Decoding carries a constant-size `MemoryState`.
"""

from __future__ import annotations

from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp

from memjax.models.config import MemoryConfig

Params = dict[str, jax.Array]
Weights = dict[str, jax.Array]  # {"w1": [..., Dh, F], "w2": [..., F, Dh]}


class MemoryState(NamedTuple):
  """Decode state of one neural-memory layer; every weight leaf is [B, H, ...].

  Attributes:
    weights: the memory's current weights w_t.
    momentum: the surprise S_t.
    chunk_start: weights at the start of the current chunk (where gradients are taken).
    pos: int32 [], tokens consumed so far.
  """

  weights: Weights
  momentum: Weights
  chunk_start: Weights
  pos: jax.Array


def init_params(mem: MemoryConfig, d_model: int, key: jax.Array) -> Params:
  """Projections "wq", "wk", "wv" [D, D], "wo" [D, D]; gates "w_gates" [D, 3, H] with
  biases "b_gates" [3, H] (forget, momentum, step size); initial memory "w1" [H, Dh, F],
  "w2" [H, F, Dh] (learned by the outer loop)."""
  h, f = mem.heads, mem.titans_hidden
  dh = d_model // h
  ks = jax.random.split(key, 7)
  dense = lambda k, shape: jax.random.normal(k, shape) / jnp.sqrt(shape[-2])
  return {
      "wq": dense(ks[0], (d_model, d_model)), "wk": dense(ks[1], (d_model, d_model)),
      "wv": dense(ks[2], (d_model, d_model)), "wo": dense(ks[3], (d_model, d_model)) * 0.1,
      "w_gates": 0.01 * jax.random.normal(ks[4], (d_model, 3, h)),
      # forget ≈ 0.02, momentum ≈ 0.88, step ≈ θ_max / 2 at init.
      "b_gates": jnp.array([[-4.0] * h, [2.0] * h, [0.0] * h]),
      "w1": dense(ks[5], (h, dh, f)), "w2": dense(ks[6], (h, f, dh)),
  }


def memory_mlp(w: Weights, x_Dh: jax.Array) -> jax.Array:
  """M_w(x) for one head: [Dh]."""
  return jax.nn.silu(x_Dh @ w["w1"]) @ w["w2"]


def surprise_grad(w: Weights, k_Dh: jax.Array, v_Dh: jax.Array) -> Weights:
  """∇_w ‖M_w(k) − v‖²."""
  return jax.grad(lambda w: jnp.sum(jnp.square(memory_mlp(w, k_Dh) - v_Dh)))(w)


def project(p: Params, h_BxTxD: jax.Array, mem: MemoryConfig):
  """q, k, v [B, T, H, Dh] (q and k L2-normalised) and gates α, η, θ [B, T, H]."""
  split = lambda w: einops.rearrange(h_BxTxD @ w, "b t (h d) -> b t h d", h=mem.heads)
  l2 = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)
  gates = jax.nn.sigmoid(jnp.einsum("btd,dgh->gbth", h_BxTxD, p["w_gates"])
                         + p["b_gates"][:, None, None, :])
  return (l2(split(p["wq"])), l2(split(p["wk"])), split(p["wv"]),
          gates[0], gates[1], mem.titans_lr_max * gates[2])


def _recurrence(a_C: jax.Array, b: Weights, h0: Weights) -> Weights:
  """h_t = a_t h_{t−1} + b_t over a chunk (leaves of b: [C, ...]); every h_t, [C, ...]."""
  def combine(x, y):
    (a1, b1), (a2, b2) = x, y
    return a1 * a2, jax.tree.map(lambda u, v: _bcast(a2, u) * u + v, b1, b2)

  cum_a, cum_b = jax.lax.associative_scan(combine, (a_C, b))
  return jax.tree.map(lambda u, h: _bcast(cum_a, u) * h + u, cum_b, h0)


def _bcast(a_C: jax.Array, like: jax.Array) -> jax.Array:
  return a_C.reshape(a_C.shape + (1,) * (like.ndim - a_C.ndim))


def _chunk(w0: Weights, s0: Weights, q_CxDh, k_CxDh, v_CxDh, alpha_C, eta_C, theta_C,
           last: jax.Array):
  """One head's chunk in parallel: outputs [C, Dh], and weights and momentum after token
  `last` (the chunk's final real token)."""
  g = jax.vmap(surprise_grad, in_axes=(None, 0, 0))(w0, k_CxDh, v_CxDh)
  s = _recurrence(eta_C, jax.tree.map(lambda x: -_bcast(theta_C, x) * x, g), s0)
  w = _recurrence(1.0 - alpha_C, s, w0)
  y_CxDh = jax.vmap(memory_mlp)(w, q_CxDh)
  at_last = lambda t: jax.tree.map(lambda x: x[last], t)
  return y_CxDh, at_last(w), at_last(s)


def initial_state(p: Params, batch: int) -> MemoryState:
  """The state before any token: learned initial weights, zero momentum."""
  w = {name: jnp.broadcast_to(p[name], (batch,) + p[name].shape) for name in ("w1", "w2")}
  return MemoryState(w, jax.tree.map(jnp.zeros_like, w), w, jnp.zeros((), jnp.int32))


def forward(p: Params, h_BxTxD: jax.Array, mem: MemoryConfig) -> tuple[jax.Array, MemoryState]:
  """Chunked parallel form from the initial state: outputs [B, T, D] and the state after T.

  T need not be a multiple of the chunk: the last chunk is padded, and its state is read
  at its last real token.
  """
  b, t, _ = h_BxTxD.shape
  c = mem.titans_chunk
  n = -(-t // c)
  pad = n * c - t
  q, k, v, alpha, eta, theta = project(p, h_BxTxD, mem)
  pad_t = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
  chunks = lambda x: einops.rearrange(pad_t(x), "b (n c) h ... -> n b h c ...", c=c)
  last_N = jnp.full((n,), c - 1).at[-1].set((t - 1) % c)
  xs = tuple(chunks(x) for x in (q, k, v, alpha, eta, theta)) + (last_N,)
  per_head = jax.vmap(jax.vmap(_chunk, in_axes=(0,) * 8 + (None,)),
                      in_axes=(0,) * 8 + (None,))  # over B, then H

  def step(carry, x):
    w0, s0, _ = carry
    y, w, s = per_head(w0, s0, *x)
    return (w, s, w0), y

  state0 = initial_state(p, b)
  (w, s, last_start), y = jax.lax.scan(
      step, (state0.weights, state0.momentum, state0.weights), xs)
  y_BxTxHxDh = einops.rearrange(y, "n b h c d -> b (n c) h d")[:, :t]
  out = einops.rearrange(y_BxTxHxDh, "b t h d -> b t (h d)") @ p["wo"]
  state = MemoryState(w, s, w if t % c == 0 else last_start, jnp.asarray(t, jnp.int32))
  return out.astype(h_BxTxD.dtype), state


def decode_step(p: Params, h_BxD: jax.Array, state: MemoryState,
                mem: MemoryConfig) -> tuple[jax.Array, MemoryState]:
  """One token per row: output [B, D] and the state after it (same sizes as `state`)."""
  q, k, v, alpha, eta, theta = (x[:, 0] for x in project(p, h_BxD[:, None], mem))
  per_head = lambda f: jax.vmap(jax.vmap(f))
  g = per_head(surprise_grad)(state.chunk_start, k, v)
  s = jax.tree.map(lambda m, g: _bcast(eta, m) * m - _bcast(theta, g) * g, state.momentum, g)
  w = jax.tree.map(lambda w, s: _bcast(1.0 - alpha, w) * w + s, state.weights, s)
  y_BxHxDh = per_head(memory_mlp)(w, q)
  pos = state.pos + 1
  start = jax.tree.map(lambda new, old: jnp.where(pos % mem.titans_chunk == 0, new, old),
                       w, state.chunk_start)
  out = einops.rearrange(y_BxHxDh, "b h d -> b (h d)") @ p["wo"]
  return out.astype(h_BxD.dtype), MemoryState(w, s, start, pos)
