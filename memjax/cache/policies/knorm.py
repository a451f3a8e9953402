"""`knorm`: keep low-norm keys (arXiv 2406.11430)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy


@dataclasses.dataclass(frozen=True)
class KNorm(Policy):
  """Score = -||k||_2: keys with a small norm tend to draw the most attention."""

  name = "knorm"

  def score(self, c: Candidates):
    return -jnp.linalg.norm(c.k.astype(jnp.float32), axis=-1)
