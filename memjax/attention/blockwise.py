"""Attention over an in-order cache that reads only its occupied slots, block by block.

A cache that only appends (the `full` policy, a prompt compressed once) holds its tokens in
slots [0, n) of a buffer sized for the whole generation. `attend_filled` walks that buffer
in blocks of `block` slots inside a `lax.fori_loop` whose trip count is the number of blocks
holding a token (a traced value: one compilation for every fill level), merging the blocks
with a running softmax (the same maximum/sum rescaling a flash-attention kernel uses), then
merges the extra blocks (the chunk's own keys). Empty slots past the last occupied block
cost nothing; for a prefill of T tokens in chunks that halves the attention work, and every
block's logits stay small instead of one [rows, capacity] array per layer.

The oracle is `reference.attend_blocks` over the whole buffer; they agree to float rounding.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

_MASKED = -1e30


def _block_scores(q_BxHkvxRxDh, k_BxHkvxNxDh, soft_cap, scale):
  s = jnp.einsum("bhrd,bhnd->bhrn", q_BxHkvxRxDh, k_BxHkvxNxDh,
                 preferred_element_type=jnp.float32) * scale
  return soft_cap * jnp.tanh(s / soft_cap) if soft_cap is not None else s


def attend_filled(q_BxCxHqxDh: jax.Array, k_BxHkvxSxDh: jax.Array, v_BxHkvxSxDh: jax.Array,
                  pos_BxHkvxS: jax.Array, filled_B: jax.Array, extra, query_pos_BxC: jax.Array,
                  *, block: int = 512, soft_cap: float | None = None) -> jax.Array:
  """Grouped-query attention of C queries over an in-order cache's occupied slots plus
  `extra` blocks, one softmax over all of them.

  Args:
    k_BxHkvxSxDh, v_BxHkvxSxDh, pos_BxHkvxS: the cache; row b holds its tokens in slots
      [0, filled_B[b]) (pos -1 after them).
    filled_B: int32 [B] occupied slots of each row.
    extra: (k [B, Hkv, N, Dh], v, pos [B, Hkv, N]) blocks attended as well (the chunk).
    query_pos_BxC: int32 positions of the queries; slot j is visible to query c when
      0 <= pos_j <= query_pos_c.
    block: slots per loop step (the buffer is read in whole blocks; the last one may
      overlap the one before it, whose slots it then skips).

  Returns:
    out [B, C, Hq, Dh] in the dtype of q (zero for a query that sees no slot).
  """
  b, c, hq, d = q_BxCxHqxDh.shape
  n_kv, capacity = k_BxHkvxSxDh.shape[1], k_BxHkvxSxDh.shape[2]
  g = hq // n_kv
  block = min(block, capacity)
  q = einops.rearrange(q_BxCxHqxDh, "b c (h g) d -> b h (g c) d", h=n_kv)
  q_pos_Bx1xRx1 = einops.repeat(query_pos_BxC, "b c -> b 1 (g c) 1", g=g)
  scale = d ** -0.5

  def fold(carry, k, v, visible_BxHkvxRxN):
    peak, total, acc = carry
    s = jnp.where(visible_BxHkvxRxN, _block_scores(q, k, soft_cap, scale), _MASKED)
    new_peak = jnp.maximum(peak, jnp.max(s, axis=-1, keepdims=True))
    w = jnp.where(visible_BxHkvxRxN, jnp.exp(s - new_peak), 0.0)
    rescale = jnp.exp(peak - new_peak)
    acc = acc * rescale + jnp.einsum("bhrn,bhnd->bhrd", w.astype(v.dtype), v,
                                     preferred_element_type=jnp.float32)
    return new_peak, total * rescale + jnp.sum(w, axis=-1, keepdims=True), acc

  def body(i, carry):
    start = jnp.minimum(i * block, capacity - block)
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, block, axis=2)
    slot = start + jnp.arange(block)
    pos = take(pos_BxHkvxS)[:, :, None, :]
    visible = (pos >= 0) & (pos <= q_pos_Bx1xRx1) & (slot >= i * block)
    return fold(carry, take(k_BxHkvxSxDh), take(v_BxHkvxSxDh), visible)

  rows = g * c
  carry = (jnp.full((b, n_kv, rows, 1), _MASKED, jnp.float32),
           jnp.zeros((b, n_kv, rows, 1), jnp.float32),
           jnp.zeros((b, n_kv, rows, d), jnp.float32))
  n_blocks = (jnp.max(filled_B) + block - 1) // block
  carry = jax.lax.fori_loop(0, n_blocks, body, carry)
  for k, v, pos in extra:
    visible = (pos[:, :, None, :] >= 0) & (pos[:, :, None, :] <= q_pos_Bx1xRx1)
    carry = fold(carry, k, v, visible)
  _, total, acc = carry
  out = acc / jnp.where(total > 0, total, 1.0)
  out = einops.rearrange(out, "b h (g c) d -> b c (h g) d", g=g)
  return out.astype(q_BxCxHqxDh.dtype)
