"""`keydiff`: keep keys that differ from the average key (KeyDiff, arXiv 2504.15364)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy


def _unit(x, axis=-1):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class KeyDiff(Policy):
  """Score = -cos(k_j, mean of the unit-normalised valid keys); needs no attention scores."""

  name = "keydiff"

  def score(self, c: Candidates):
    k_unit = _unit(c.k.astype(jnp.float32))
    valid = (c.pos >= 0)[..., None]
    anchor_BxHkvxDh = jnp.sum(k_unit * valid, axis=2) / jnp.maximum(jnp.sum(valid, axis=2), 1)
    return -jnp.einsum("bhnd,bhd->bhn", k_unit, _unit(anchor_BxHkvxDh))
