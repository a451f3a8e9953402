"""Product-key lookup (Lample et al. 2019): queries, two-stage top-k, chunked weighted bag.

A table of n_keys² value rows is addressed by pairs of sub-keys: slot (i, j) has key
concat(keys1[i], keys2[j]), so q · key = q1 · keys1[i] + q2 · keys2[j]. The exact top-k over
all n_keys² slots is among the pairs of each half's top-k, so two top-k of n_keys and one of
k² find it without scoring every slot.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

from memjax.models.config import MemoryConfig

Params = dict[str, jax.Array]


def init_keys(mem: MemoryConfig, d_model: int, key: jax.Array) -> Params:
  """Query projection "wq" [D, H·k_dim] and sub-keys "subkeys" [H, 2, n_keys, k_dim/2]."""
  kq, kk = jax.random.split(key)
  half = mem.k_dim // 2
  return {
      "wq": jax.random.normal(kq, (d_model, mem.heads * mem.k_dim)) / jnp.sqrt(d_model),
      "subkeys": jax.random.normal(kk, (mem.heads, 2, mem.n_keys, half)) / jnp.sqrt(half),
  }


def _normalize(x: jax.Array, kind: str, eps: float = 1e-6) -> jax.Array:
  """RMS or layer normalisation (no affine) over the last axis."""
  if kind == "layer":
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def queries(p: Params, h_BxTxD: jax.Array, mem: MemoryConfig) -> jax.Array:
  """Normalised product-key queries q [B, T, H, 2, k_dim/2] (halves on axis 3)."""
  q = einops.rearrange(h_BxTxD @ p["wq"], "b t (h k) -> b t h k", h=mem.heads)
  q = _normalize(q, mem.query_norm)
  return einops.rearrange(q, "b t h (two k) -> b t h two k", two=2)


def subkeys(p: Params, mem: MemoryConfig) -> jax.Array:
  """Sub-keys [H, 2, n_keys, k_dim/2], RMS-normalised when mem.qk_norm."""
  return _normalize(p["subkeys"], "rms") if mem.qk_norm else p["subkeys"]


def top_slots(q_BxTxHx2xK: jax.Array, keys_Hx2xNxK: jax.Array,
              topk: int) -> tuple[jax.Array, jax.Array]:
  """The `topk` best slots of each (token, head) and their scores q · key.

  Returns:
    scores [B, T, H, topk] (descending) and slot ids [B, T, H, topk] in [0, n_keys²),
    slot = i · n_keys + j for sub-keys i (first half) and j (second half).
  """
  n_keys = keys_Hx2xNxK.shape[2]
  s_BxTxHx2xN = jnp.einsum("bthik,hink->bthin", q_BxTxHx2xK, keys_Hx2xNxK)
  s_half, i_half = jax.lax.top_k(s_BxTxHx2xN, topk)  # [B, T, H, 2, topk]
  pair_s = s_half[..., 0, :, None] + s_half[..., 1, None, :]
  pair_i = i_half[..., 0, :, None] * n_keys + i_half[..., 1, None, :]
  scores, flat = jax.lax.top_k(einops.rearrange(pair_s, "... a b -> ... (a b)"), topk)
  slots = jnp.take_along_axis(einops.rearrange(pair_i, "... a b -> ... (a b)"), flat, axis=-1)
  return scores, slots


def weighted_bag(values_NxV: jax.Array, idx_MxK: jax.Array, w_MxK: jax.Array,
                 max_elems: int) -> jax.Array:
  """sum_k w[m, k] · values[idx[m, k]] for every row m: [M, V] (an EmbeddingBag).

  Rows go through in chunks of c = max(1, max_elems // (K · V)), so the gathered
  [c, K, V] block never exceeds `max_elems` elements.
  """
  m, k = idx_MxK.shape
  v = values_NxV.shape[1]
  chunk = max(1, min(m, max_elems // (k * v)))
  n_chunks = -(-m // chunk)
  pad = n_chunks * chunk - m
  idx = einops.rearrange(jnp.pad(idx_MxK, ((0, pad), (0, 0))), "(n c) k -> n c k", c=chunk)
  w = einops.rearrange(jnp.pad(w_MxK, ((0, pad), (0, 0))), "(n c) k -> n c k", c=chunk)

  def gather_sum(args):
    idx_CxK, w_CxK = args
    return jnp.einsum("ck,ckv->cv", w_CxK.astype(values_NxV.dtype), values_NxV[idx_CxK])

  out = jax.lax.map(gather_sum, (idx, w))
  return einops.rearrange(out, "n c v -> (n c) v")[:m]


def lookup(p: Params, h_BxTxD: jax.Array, mem: MemoryConfig) -> tuple[jax.Array, jax.Array]:
  """Slots [B, T, H·topk] and their softmax weights [B, T, H·topk] (softmax per head)."""
  scores, slots = top_slots(queries(p, h_BxTxD, mem), subkeys(p, mem), mem.topk)
  w = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
  flat = lambda x: einops.rearrange(x, "b t h k -> b t (h k)")
  return flat(slots), flat(w)
