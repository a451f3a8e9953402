"""`streaming`: attention sinks plus a recent window (StreamingLLM, arXiv 2309.17453)."""

from __future__ import annotations

import dataclasses

from memjax.cache.policies.base import Candidates, Policy, protect, recency


@dataclasses.dataclass(frozen=True)
class Streaming(Policy):
  """Keeps the first `n_sink` tokens of the sequence and fills the rest with the most recent.

  Attributes:
    n_sink: number of initial tokens always kept (the paper uses 4).
  """

  name = "streaming"
  n_sink: int = 4

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink

  def score(self, c: Candidates):
    return protect(recency(c), (c.pos >= 0) & (c.pos < self.n_sink))
