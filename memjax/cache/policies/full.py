"""`full`: never evicts. The cache is sized to hold every token (capacity = total length)."""

from __future__ import annotations

import dataclasses

from memjax.cache.policies.base import Candidates, Policy, recency


@dataclasses.dataclass(frozen=True)
class Full(Policy):
  """Keeps everything; generation sizes its cache to the whole sequence."""

  name = "full"
  evicts = False

  def score(self, c: Candidates):
    return recency(c)
