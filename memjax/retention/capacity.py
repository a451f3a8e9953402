"""The TRIM-KV capacity term: how many tokens the retention gates try to keep alive.

At step t, token j ≤ t keeps weight β_j^(t−j) = exp(log β_j · (t − j)); the sum

    S_t = Σ_{j≤t} β_j^(t−j)        per (layer, batch row, KV head, t)

is the number of tokens the gates would like to hold. With a memory budget M, the loss
penalises S_t above M. Time t and j are indices in the row (one sequence per row, t = 0
for the first token), so S_t <= t + 1 and only steps t >= M can exceed the budget.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

from memjax.attention.decayed import to_blocks


def capacity_sums(log_beta_xTxHkv: jax.Array, block: int = 128) -> jax.Array:
  """float32 S_t with the shape of log β [..., T, Hkv] (any leading axes, e.g. [L, B]).

  Computed over block × block tiles of (t, j), skipping tiles with j > t entirely; each
  query block is recomputed in the backward pass (`jax.checkpoint`), so neither pass
  holds a T × T array.
  """
  *lead, t, n_kv = log_beta_xTxHkv.shape
  log_beta_NxTxHkv = log_beta_xTxHkv.reshape(-1, t, n_kv).astype(jnp.float32)
  key_blocks = to_blocks(log_beta_NxTxHkv, block)
  starts_n = jnp.arange(key_blocks.shape[0], dtype=jnp.int32) * block
  offsets_K = jnp.arange(block, dtype=jnp.int32)

  @jax.checkpoint
  def query_block(q_start):
    t_Q = q_start + offsets_K

    def key_step(sum_NxQxHkv, key):
      k_start, log_beta_NxKxHkv = key
      j_K = k_start + offsets_K
      distance_QxK = t_Q[:, None] - j_K[None, :]
      seen_QxK = (distance_QxK >= 0) & (j_K < t)[None, :]

      def add(sum_NxQxHkv):
        # Distances of unseen pairs are clamped to 0 so that exp never overflows.
        exponent_NxQxKxHkv = (log_beta_NxKxHkv[:, None]
                              * jnp.maximum(distance_QxK, 0)[None, :, :, None])
        terms = jnp.where(seen_QxK[None, :, :, None], jnp.exp(exponent_NxQxKxHkv), 0.0)
        return sum_NxQxHkv + terms.sum(axis=2)

      return jax.lax.cond(k_start <= q_start, add, lambda s: s, sum_NxQxHkv), None

    init = jnp.zeros((log_beta_NxTxHkv.shape[0], block, n_kv), jnp.float32)
    sum_NxQxHkv, _ = jax.lax.scan(key_step, init, (starts_n, key_blocks))
    return sum_NxQxHkv

  sums = einops.rearrange(jax.lax.map(query_block, starts_n), "n b q h -> b (n q) h")
  return sums[:, :t].reshape(*lead, t, n_kv)


def budget_at(t: int, memory_M: int, memory_ratio: float = 0.0) -> jax.Array:
  """float32 [t]: the budget M_t at steps 0..t-1: memory_M, or max(memory_M, memory_ratio ·
  (t + 1)) when memory_ratio > 0 (a kept fraction, as the evaluation's budgets are, with
  memory_M as its floor: a gate cannot see t, and a pure fraction would demand the decay
  of t ≈ 10 everywhere)."""
  fixed = jnp.full((t,), float(memory_M), jnp.float32)
  if memory_ratio > 0:
    return jnp.maximum(fixed, memory_ratio * (jnp.arange(t, dtype=jnp.float32) + 1.0))
  return fixed


def capacity_loss(log_beta_xTxHkv: jax.Array, memory_M: int, block: int = 128,
                  memory_ratio: float = 0.0) -> jax.Array:
  """float32 scalar: mean of max(0, S_t − M_t) / max(t − M_t, 1) over the entries where
  S_t > M_t; M_t is `budget_at(t, memory_M, memory_ratio)` (fixed M by default).

  The normalisation follows TRIM-KV (arXiv 2512.03324): each excess is divided by how far t
  is past the budget, max(t − M, 1), and the mean runs over the (leading axes, t, head)
  entries whose excess is non-zero only; the loss is 0 when no entry exceeds M. (The paper
  writes (1/T) Σ_t (1/t) max(0, S_t − M), which dilutes the term over steps t < M that can
  never exceed the budget.)
  """
  sums_xTxHkv = capacity_sums(log_beta_xTxHkv, block)
  t = sums_xTxHkv.shape[-2]
  t_Tx1 = jnp.arange(t, dtype=jnp.float32)[:, None]
  m_Tx1 = budget_at(t, memory_M, memory_ratio)[:, None]
  excess = jnp.maximum(sums_xTxHkv - m_Tx1, 0.0) / jnp.maximum(t_Tx1 - m_Tx1, 1.0)
  n_active = jnp.sum(sums_xTxHkv > m_Tx1)
  return jnp.sum(excess) / jnp.maximum(n_active, 1)
