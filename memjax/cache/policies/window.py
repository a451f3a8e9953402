"""`window`: a sliding window over the most recent S tokens."""

from __future__ import annotations

import dataclasses

from memjax.cache.policies.base import Candidates, Policy, recency


@dataclasses.dataclass(frozen=True)
class Window(Policy):
  """Keeps the most recent `capacity` tokens."""

  name = "window"

  def score(self, c: Candidates):
    return recency(c)
