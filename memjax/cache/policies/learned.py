"""`learned`: TRIM-KV retention scores from trained gates (arXiv 2512.03324)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy, in_recent_window, protect


@dataclasses.dataclass(frozen=True)
class Learned(Policy):
  """Keeps the tokens whose learned retention has decayed least: score = log β · (t − pos).

  A slot's statistic is the log β (per KV head) that the layer's retention gate gave the
  token when it was inserted (`uses_retention_gate`: the cache mixer fills fresh stats from
  `memjax.retention.gate.log_beta`). t is the clock after the chunk, the position of the
  next query, so the score is the log of the weight β^(t − pos) that query would give the
  token.

  Attributes:
    n_sink: the first tokens of the sequence are protected (default 4; 0 is the paper's
      pure form, where the gates decide alone). Gates that give facts long lives can rate
      the attention sinks below them, and a cache without its sinks degrades whatever else
      it keeps: on the validation cases the shipped gates answer 50% with n_sink=0 and 75%
      with 4 (step 60 of their run; experiments/results/trimkv_smollm2.md).
    n_recent: the most recent tokens are protected too (default 0).
  """

  name = "learned"
  uses_retention_gate = True
  n_sink: int = 4
  n_recent: int = 0

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink + self.n_recent

  def score(self, c: Candidates):
    scores = c.stats * (c.t[:, None, None] - c.pos).astype(jnp.float32)
    keep = (c.pos >= 0) & ((c.pos < self.n_sink) | in_recent_window(c, self.n_recent))
    return protect(scores, keep) if self.n_sink or self.n_recent else scores
