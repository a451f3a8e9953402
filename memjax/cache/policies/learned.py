"""`learned`: TRIM-KV retention scores from trained gates (arXiv 2512.03324)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy


@dataclasses.dataclass(frozen=True)
class Learned(Policy):
  """Keeps the tokens whose learned retention has decayed least: score = log β · (t − pos).

  A slot's statistic is the log β (per KV head) that the layer's retention gate gave the
  token when it was inserted (`uses_retention_gate`: the cache mixer fills fresh stats from
  `memjax.retention.gate.log_beta`). t is the clock after the chunk, the position of the
  next query, so the score is the log of the weight β^(t − pos) that query would give the
  token. There is no hand-made sink or window: the gates learn them.
  """

  name = "learned"
  uses_retention_gate = True

  def score(self, c: Candidates):
    return c.stats * (c.t[:, None, None] - c.pos).astype(jnp.float32)
