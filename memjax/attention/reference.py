"""Reference (oracle) attention in plain XLA: explicit logits, mask and softmax.

Every other attention path in memjax (chunked cache attention, Pallas kernels) is checked
against this one.
"""

from __future__ import annotations

import functools

import einops
import jax
import jax.numpy as jnp

_MASKED = -1e30


def attend(q_BxCxHqxDh: jax.Array, k_BxHkvxNxDh: jax.Array, v_BxHkvxNxDh: jax.Array,
           mask_BxHkvxCxN: jax.Array,
           soft_cap: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Grouped-query softmax attention of C queries over N keys.

  Query head h reads KV head h // G, where G = Hq // Hkv. Masked keys get zero probability;
  a query whose keys are all masked gets a zero output (no NaN).

  Args:
    q_BxCxHqxDh: queries, already rotated.
    k_BxHkvxNxDh: keys, already rotated.
    v_BxHkvxNxDh: values.
    mask_BxHkvxCxN: True where query c may attend key n (may broadcast over B or Hkv).
    soft_cap: optional cap c of the scaled logits, c · tanh(s / c) (Gemma 2).

  Returns:
    out_BxCxHqxDh: attention output in the dtype of q.
    probs_BxHkvxGxCxN: float32 attention probabilities.
  """
  out, (probs,) = attend_blocks(q_BxCxHqxDh, [(k_BxHkvxNxDh, v_BxHkvxNxDh, mask_BxHkvxCxN)],
                                soft_cap)
  return out, probs


def attend_blocks(q_BxCxHqxDh: jax.Array, blocks, soft_cap: float | None = None):
  """`attend` over the union of several blocks of keys, one softmax across all of them,
  without concatenating the keys: a cache read in place plus the fresh tokens beside it.

  Args:
    blocks: (k [B, Hkv, N_i, Dh], v [B, Hkv, N_i, Dh], mask [B, Hkv, C, N_i]) per block.

  Returns:
    out_BxCxHqxDh, and each block's float32 probabilities [B, Hkv, G, C, N_i].
  """
  b, c, hq, _ = q_BxCxHqxDh.shape
  n_kv = blocks[0][0].shape[1]
  g = hq // n_kv
  # The G query heads of a KV head and the C queries form one row axis (g c): a batched
  # matrix product per KV head. Einsums that keep g and c apart are lowered by XLA:CPU to a
  # much slower loop (3x slower decode attention over a 4k cache, even at C = 1).
  q_BxHkvxRxDh = einops.rearrange(q_BxCxHqxDh, "b c (h g) d -> b h (g c) d", h=n_kv)
  scale = q_BxCxHqxDh.shape[-1] ** -0.5
  logits, masks = [], []
  for k, _, mask in blocks:
    s = jnp.einsum("bhrd,bhnd->bhrn", q_BxHkvxRxDh, k,
                   preferred_element_type=jnp.float32) * scale
    s = s.reshape(b, n_kv, g, c, k.shape[2])
    if soft_cap is not None:
      s = soft_cap * jnp.tanh(s / soft_cap)
    masks.append(mask[:, :, None])
    logits.append(jnp.where(masks[-1], s, _MASKED))
  peak = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s in logits])
  weights = [jnp.where(m, jnp.exp(s - peak), 0.0) for s, m in zip(logits, masks)]
  total = sum(jnp.sum(w, axis=-1, keepdims=True) for w in weights)
  probs = [w / jnp.where(total > 0, total, 1.0) for w in weights]
  out = sum(jnp.einsum("bhrn,bhnd->bhrd", p.reshape(b, n_kv, g * c, -1).astype(v.dtype), v)
            for p, (_, v, _) in zip(probs, blocks))
  out_BxCxHqxDh = einops.rearrange(out, "b h (g c) d -> b c (h g) d", g=g)
  return out_BxCxHqxDh.astype(q_BxCxHqxDh.dtype), probs


def causal_mask(positions_BxT: jax.Array) -> jax.Array:
  """Causal mask [B, 1, T, T] from token positions: key j is visible to query i iff pos_j <= pos_i."""
  return (positions_BxT[:, None, :] <= positions_BxT[:, :, None])[:, None]
