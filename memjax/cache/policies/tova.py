"""`tova`: keep what the current query attends to (TOVA, arXiv 2401.06104)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy, group_mean, last_valid_index


@dataclasses.dataclass(frozen=True)
class TOVA(Policy):
  """Scores each slot by the attention of the last query of the chunk, averaged over the group."""

  name = "tova"
  needs_attention = True

  def observe(self, stats, probs, query_valid):
    last_B = last_valid_index(query_valid)
    probs_BxHkvxCxN = group_mean(probs)
    current = jnp.take_along_axis(probs_BxHkvxCxN, jnp.maximum(last_B, 0)[:, None, None, None],
                                  axis=2)[:, :, 0]
    # A row with no real token in this chunk keeps its previous scores.
    return jnp.where((last_B >= 0)[:, None, None], current, stats)

  def score(self, c: Candidates):
    return c.stats
