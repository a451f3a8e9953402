"""Retention-decayed attention in plain XLA: the oracle of the Pallas kernels.

Causal grouped-query softmax attention whose scaled logits carry the additive bias

    log β_j · (t − j)        t = query position, j = key position, β of the key's KV head,

so a key with retention β_j fades as β_j^(t−j) (query head h reads KV head h // G). Keys
are visible when pos_j <= pos_t and, if segment ids are given, when both tokens belong to
the same segment (packed sequences).

Two paths share one signature:
  - "reference" materialises the T×T logits and bias: the oracle for tests and short T.
  - "blockwise" maps over query blocks and scans over key blocks with an online softmax;
    no tensor larger than a block × block tile per (batch row, head) is formed, and tiles
    that are entirely masked are skipped. Any T works: the sequence is padded to a
    multiple of the block and padded keys are masked.
`memjax.retention.decayed_attention` dispatches between these and the Pallas kernels.
"""

from __future__ import annotations

from typing import Literal

import einops
import jax
import jax.numpy as jnp

Impl = Literal["reference", "blockwise"]
_MASKED = -1e30


def xla_decayed_attention(q_BxTxHqxDh: jax.Array, k_BxTxHkvxDh: jax.Array,
                          v_BxTxHkvxDh: jax.Array, log_beta_BxTxHkv: jax.Array,
                          positions_BxT: jax.Array, *, segment_ids: jax.Array | None = None,
                          soft_cap: float | None = None, impl: Impl = "blockwise",
                          block: int = 128, remat: bool = False) -> jax.Array:
  """out_BxTxHqxDh of the decayed attention in XLA (arguments as in
  `memjax.retention.decayed_attention`); softmax and accumulation run in float32."""
  if segment_ids is None:
    segment_ids = jnp.zeros(positions_BxT.shape, jnp.int32)
  args = (q_BxTxHqxDh, k_BxTxHkvxDh, v_BxTxHkvxDh, log_beta_BxTxHkv, positions_BxT, segment_ids)
  if impl == "reference":
    return _reference(*args, soft_cap=soft_cap)
  if impl == "blockwise":
    return _blockwise(*args, soft_cap=soft_cap, block=block, remat=remat)
  raise ValueError(f"unknown decayed attention impl {impl!r}; use 'reference' or 'blockwise'")


def visible(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, q_seg_BxT: jax.Array,
            k_seg_BxS: jax.Array) -> jax.Array:
  """bool [B, T, S]: query t may attend key s (causal by position, same segment)."""
  return ((k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None])
          & (k_seg_BxS[:, None, :] == q_seg_BxT[:, :, None]))


def decay_bias(log_beta_BxSxHkv: jax.Array, q_pos_BxT: jax.Array,
               k_pos_BxS: jax.Array) -> jax.Array:
  """float32 [B, Hkv, T, S]: log β_s · (pos_t − pos_s), with the distance clamped at zero
  where s comes after t (those logits are masked; the clamp keeps them finite)."""
  distance_BxTxS = jnp.maximum(q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :], 0)
  log_beta_BxHkvx1xS = einops.rearrange(log_beta_BxSxHkv.astype(jnp.float32), "b s h -> b h 1 s")
  return log_beta_BxHkvx1xS * distance_BxTxS[:, None].astype(jnp.float32)


def scaled_scores(q: jax.Array, k: jax.Array, soft_cap: float | None, spec: str) -> jax.Array:
  """float32 logits q·k / √Dh contracted by the einsum `spec` (head dim last in q and k),
  soft-capped as c · tanh(s / c) when a cap c is given."""
  s = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
  return s if soft_cap is None else soft_cap * jnp.tanh(s / soft_cap)


def to_blocks(x_BxT_: jax.Array, block: int, fill=0) -> jax.Array:
  """[n, B, block, ...]: axis 1 (time) padded with `fill` to n·block and split into blocks."""
  pad = -x_BxT_.shape[1] % block
  widths = [(0, 0), (0, pad)] + [(0, 0)] * (x_BxT_.ndim - 2)
  x = jnp.pad(x_BxT_, widths, constant_values=fill)
  return einops.rearrange(x, "b (n k) ... -> n b k ...", k=block)


def _reference(q, k, v, log_beta, positions, segment_ids, *, soft_cap):
  n_kv = k.shape[2]
  q_BxHkvxGxTxDh = einops.rearrange(q, "b t (h g) d -> b h g t d", h=n_kv)
  logits_BxHkvxGxTxS = scaled_scores(q_BxHkvxGxTxDh, k, soft_cap, "bhgtd,bshd->bhgts")
  logits_BxHkvxGxTxS += decay_bias(log_beta, positions, positions)[:, :, None]
  mask_Bx1x1xTxS = visible(positions, positions, segment_ids, segment_ids)[:, None, None]
  probs = jax.nn.softmax(jnp.where(mask_Bx1x1xTxS, logits_BxHkvxGxTxS, _MASKED), axis=-1)
  probs = jnp.where(mask_Bx1x1xTxS, probs, 0.0)
  out = jnp.einsum("bhgts,bshd->bthgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return einops.rearrange(out, "b t h g d -> b t (h g) d").astype(q.dtype)


def _blockwise(q, k, v, log_beta, positions, segment_ids, *, soft_cap, block, remat):
  b, t, _, dh = q.shape
  n_kv = k.shape[2]
  key_blocks = (to_blocks(k, block), to_blocks(v, block), to_blocks(log_beta, block),
                to_blocks(positions, block), to_blocks(segment_ids, block),
                to_blocks(jnp.ones((b, t), bool), block, fill=False))

  def query_block(query):
    q_BxQxHkvxGxDh, q_pos_BxQ, q_seg_BxQ = query

    def key_step(carry, key):
      k_BxKxHkvxDh, v_BxKxHkvxDh, log_beta_BxKxHkv, k_pos_BxK, k_seg_BxK, k_valid_BxK = key
      mask_BxQxK = visible(q_pos_BxQ, k_pos_BxK, q_seg_BxQ, k_seg_BxK) & k_valid_BxK[:, None]

      def update(carry):
        max_BxHkvxGxQ, sum_BxHkvxGxQ, acc_BxHkvxGxQxDh = carry
        logits = scaled_scores(q_BxQxHkvxGxDh, k_BxKxHkvxDh, soft_cap, "bqhgd,bkhd->bhgqk")
        logits += decay_bias(log_beta_BxKxHkv, q_pos_BxQ, k_pos_BxK)[:, :, None]
        logits = jnp.where(mask_BxQxK[:, None, None], logits, -jnp.inf)
        # The running max only shifts the exponent: the result does not depend on it.
        new_max = jax.lax.stop_gradient(jnp.maximum(max_BxHkvxGxQ, logits.max(axis=-1)))
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        probs_BxHkvxGxQxK = jnp.exp(logits - shift[..., None])
        rescale = jnp.exp(max_BxHkvxGxQ - shift)
        acc = acc_BxHkvxGxQxDh * rescale[..., None] + jnp.einsum(
            "bhgqk,bkhd->bhgqd", probs_BxHkvxGxQxK.astype(v.dtype), v_BxKxHkvxDh,
            preferred_element_type=jnp.float32)
        return new_max, sum_BxHkvxGxQ * rescale + probs_BxHkvxGxQxK.sum(axis=-1), acc

      return jax.lax.cond(jnp.any(mask_BxQxK), update, lambda c: c, carry), None

    stat_shape = (b, n_kv, q_BxQxHkvxGxDh.shape[3], block)
    init = (jnp.full(stat_shape, -jnp.inf), jnp.zeros(stat_shape),
            jnp.zeros(stat_shape + (dh,)))
    (_, sum_BxHkvxGxQ, acc_BxHkvxGxQxDh), _ = jax.lax.scan(key_step, init, key_blocks)
    # A query that sees no key (only padding can) gets a zero output, not NaN.
    return acc_BxHkvxGxQxDh / jnp.where(sum_BxHkvxGxQ > 0, sum_BxHkvxGxQ, 1.0)[..., None]

  if remat:
    query_block = jax.checkpoint(query_block)
  q_blocks = to_blocks(einops.rearrange(q, "b t (h g) d -> b t h g d", h=n_kv), block)
  out_NxBxHkvxGxQxDh = jax.lax.map(
      query_block, (q_blocks, to_blocks(positions, block), to_blocks(segment_ids, block)))
  out = einops.rearrange(out_NxBxHkvxGxQxDh, "n b h g q d -> b (n q) (h g) d")
  return out[:, :t].astype(q.dtype)
