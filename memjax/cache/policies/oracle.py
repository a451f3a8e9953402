"""`oracle`: keeps the tokens it is told matter, then the most recent: an upper bound."""

from __future__ import annotations

import dataclasses

from memjax.cache.policies.base import Candidates, Policy, protect, recency


@dataclasses.dataclass(frozen=True)
class Oracle(Policy):
  """Protects every token whose mark is set (e.g. the needle's own tokens of a retrieval
  case) and the first `n_sink` tokens, and fills the other slots with the most recent.

  It is not a method: the marks come from outside (`generate_ids(..., marks=...)`; the
  evaluation marks the needle sentences), so its accuracy bounds what a retention policy
  could reach on a task at the same budget, had it kept exactly the right tokens. Marked
  tokens beyond the budget are ranked by recency among themselves.

  Attributes:
    n_sink: the first tokens of the sequence are kept too (attention sinks: without them
      the model's attention degrades whatever else is kept); 0 keeps marks and recency only.
  """

  name = "oracle"
  uses_marks = True
  n_sink: int = 4

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink

  def score(self, c: Candidates):
    return protect(recency(c), (c.pos >= 0) & ((c.stats > 0) | (c.pos < self.n_sink)))
