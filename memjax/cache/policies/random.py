"""`random`: uniformly random eviction, the floor every table should show."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy


def hash_uniform(*ints: jnp.ndarray) -> jnp.ndarray:
  """A stateless hash of integer arrays (broadcast together) to floats in [0, 1)."""
  h = jnp.uint32(0x9E3779B9)
  for i, x in enumerate(ints):
    h = (h ^ jnp.asarray(x).astype(jnp.uint32)) * jnp.uint32(0x85EBCA6B + 2 * i)
    h = h ^ (h >> 13)
  h = (h * jnp.uint32(0xC2B2AE35)) ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) / float(1 << 24)


@dataclasses.dataclass(frozen=True)
class Random(Policy):
  """Each (token, layer, KV head) draws one fixed random score, so a token's fate is decided
  once, like a coin flip at insertion; `seed` picks a different draw."""

  name = "random"
  seed: int = 0

  def score(self, c: Candidates):
    head = jnp.arange(c.pos.shape[1])[None, :, None]
    return hash_uniform(c.pos, head, c.layer, self.seed)
