"""`h2o`: heavy hitters by accumulated attention, plus a recent window (H2O, arXiv 2306.14048)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import (Candidates, Policy, group_mean, in_recent_window,
                                        protect)


@dataclasses.dataclass(frozen=True)
class H2O(Policy):
  """Keeps the keys that received the most attention, normalised by how many queries saw them.

  The statistic is the attention mass each key received, summed over every query since it
  entered the cache and averaged over the GQA group; the score divides it by the number of
  queries that could see the key (t - pos), so old keys are not favoured for being old.

  Attributes:
    recent_fraction: share of the budget reserved for the most recent tokens (the paper
      splits the budget evenly between heavy hitters and recent tokens: 0.5).
  """

  name = "h2o"
  needs_attention = True
  recent_fraction: float = 0.5

  def recent_window(self, capacity: int) -> int:
    return int(self.recent_fraction * capacity)

  def protected_slots(self, capacity: int) -> int:
    return self.recent_window(capacity)

  def observe(self, stats, probs, query_valid):
    mass_BxHkvxCxN = group_mean(probs) * query_valid[:, None, :, None]
    return stats + jnp.sum(mass_BxHkvxCxN, axis=2)

  def score(self, c: Candidates):
    seen_by = jnp.maximum(c.t[:, None, None] - c.pos, 1).astype(jnp.float32)
    return protect(c.stats / seen_by, in_recent_window(c, self.recent_window(c.capacity)))
