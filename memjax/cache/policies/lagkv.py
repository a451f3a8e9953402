"""`lagkv`: score each partition of tokens by its keys' and values' spread relative to the
next partition's range (LagKV, Liang et al. 2025, "LagKV: Lag-Relative Information of the KV
Cache Tells Which Tokens Are Important", https://arxiv.org/abs/2504.04704)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Chunk, Policy, is_sink, protect


def partition_of(pos: jax.Array, n_sink: int, lag: int) -> jax.Array:
  """int32: index of the partition of `lag` tokens that follows the sinks; -1 for sinks and
  empty slots."""
  return jnp.where(pos >= n_sink, (pos - n_sink) // lag, -1)


def complete_partitions(t_B: jax.Array, n_sink: int, lag: int) -> jax.Array:
  """int32 [B]: partitions entirely seen after t tokens."""
  return jnp.maximum(t_B - n_sink, 0) // lag


def lag_relative_spread(x_BxHxNxD: jax.Array, part_BxHxN: jax.Array, first_B: jax.Array,
                        n_parts: int) -> jax.Array:
  """float32 [B, H, N]: for a token of partition p in [first, first + n_parts), the standard
  deviation over channels of x normalised by the channel-wise min and max of partition p + 1,
  softmaxed over the tokens of p; 0 for other tokens."""
  x = x_BxHxNxD.astype(jnp.float32)
  spread = jnp.zeros(part_BxHxN.shape, jnp.float32)
  for j in range(n_parts):  # static and small: partitions scored in this chunk
    p_B = first_B + j
    in_ref = (part_BxHxN == (p_B + 1)[:, None, None])[..., None]
    lo = jnp.min(jnp.where(in_ref, x, jnp.inf), axis=2, keepdims=True)
    hi = jnp.max(jnp.where(in_ref, x, -jnp.inf), axis=2, keepdims=True)
    normed = (x - lo) / jnp.maximum(hi - lo, 1e-6)
    std = jnp.std(normed, axis=-1, ddof=1)
    member = part_BxHxN == p_B[:, None, None]
    spread = jnp.where(member, jax.nn.softmax(jnp.where(member, std, -jnp.inf), axis=-1), spread)
  return spread


def rank_within(x_BxHxN: jax.Array, part_BxHxN: jax.Array, lag: int) -> jax.Array:
  """float32 [B, H, N]: rank of x among the tokens of its partition (0 = smallest), / lag."""
  same = part_BxHxN[..., :, None] == part_BxHxN[..., None, :]
  below = same & (x_BxHxN[..., None, :] < x_BxHxN[..., :, None])
  return jnp.sum(below, axis=-1).astype(jnp.float32) / lag


@dataclasses.dataclass(frozen=True)
class LagKV(Policy):
  """Score = rank, within its partition, of the mean of the key and value lag-relative spreads.

  After the `n_sink` sinks the sequence is cut into partitions of `lag` positions; partition
  p is scored against partition p + 1 (its "lag"), once p + 1 has been seen entirely, so a
  chunk scores the partitions its tokens complete and the scores are kept as the slot's
  statistics. Tokens whose next partition is not complete yet (the tail, at most 2·lag - 1
  tokens) score in [1, 2) by recency, above every scored token ([0, 1)), like kvpress's
  tail; sinks are kept. The chunk sees partition p + 1 only as far as it survived eviction:
  with a budget below the tail, that is part of it.

  Attributes:
    n_sink: first tokens always kept (kvpress: 4).
    lag: partition size in tokens (kvpress: 128).
  """

  name = "lagkv"
  needs_values = True
  observes_chunk = True
  n_sink: int = 4
  lag: int = 128

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink

  def observe_chunk(self, c: Candidates, chunk: Chunk):
    n_chunk = chunk.positions.shape[-1]
    t_start_B = c.t - jnp.sum(chunk.valid, axis=-1, dtype=jnp.int32)
    # Partitions p with p + 1 complete now but not before: [first, last].
    first_B = jnp.maximum(complete_partitions(t_start_B, self.n_sink, self.lag) - 1, 0)
    last_B = complete_partitions(c.t, self.n_sink, self.lag) - 2
    part = partition_of(c.pos, self.n_sink, self.lag)
    n_parts = n_chunk // self.lag + 2
    spread = (lag_relative_spread(c.k, part, first_B, n_parts)
              + lag_relative_spread(c.v, part, first_B, n_parts)) / 2
    fresh = (part >= first_B[:, None, None]) & (part <= last_B[:, None, None])
    return jnp.where(fresh, rank_within(spread, jnp.where(fresh, part, -1), self.lag), c.stats)

  def score(self, c: Candidates):
    part = partition_of(c.pos, self.n_sink, self.lag)
    in_tail = part + 1 >= complete_partitions(c.t, self.n_sink, self.lag)[:, None, None]
    tail_score = 1.0 + c.pos.astype(jnp.float32) / (c.t[:, None, None] + 1).astype(jnp.float32)
    return protect(jnp.where(in_tail, tail_score, c.stats), is_sink(c, self.n_sink))
