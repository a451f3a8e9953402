"""The shared signature of eviction policies.

A policy is a frozen dataclass holding its hyper-parameters. `score` ranks the S + C
candidate slots of one layer (higher = keep); protected slots score +inf. `observe`
folds the chunk's attention probabilities into the per-slot statistics before scoring;
policies that need no attention leave the statistics alone. Fresh tokens start with zero
statistics, or, for a policy with `uses_retention_gate`, with the log β of the layer's
retention gate (the params must then carry gates), or, for a policy with `uses_marks`, with
per-token flags given to generation (an oracle that knows which tokens matter).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp


class Candidates(NamedTuple):
  """What a policy sees of one layer when it must choose `capacity` of N = S + C slots.

  k: [B, Hkv, N, Dh] rotated keys.
  pos: int32 [B, Hkv, N] token positions, -1 for empty slots.
  stats: float32 [B, Hkv, N] statistics after `observe`.
  t: int32 [B] clock after the chunk (tokens seen, = the next token's position).
  layer: int32 [] layer index.
  capacity: the layer's budget S (static).
  """
  k: jax.Array
  pos: jax.Array
  stats: jax.Array
  t: jax.Array
  layer: jax.Array
  capacity: int


@dataclasses.dataclass(frozen=True)
class Policy:
  """Base class: subclasses set `name` and override `score` (and `observe` if needed)."""

  name: ClassVar[str] = ""
  needs_attention: ClassVar[bool] = False
  uses_retention_gate: ClassVar[bool] = False
  # True for a policy that reads per-token marks given to generation (the `oracle`).
  uses_marks: ClassVar[bool] = False
  # False for a policy whose cache holds every token: chunks are appended in place.
  evicts: ClassVar[bool] = True

  def protected_slots(self, capacity: int) -> int:
    """Slots this policy always keeps (sinks, recent window); must be < capacity."""
    del capacity
    return 0

  def observe(self, stats_BxHkvxN: jax.Array, probs_BxHkvxGxCxN: jax.Array,
              query_valid_BxC: jax.Array) -> jax.Array:
    """Fold the chunk's attention (float32 probabilities, zero where masked) into stats."""
    del probs_BxHkvxGxCxN, query_valid_BxC
    return stats_BxHkvxN

  def score(self, c: Candidates) -> jax.Array:
    """float32 [B, Hkv, N]: higher keeps; +inf for protected slots."""
    raise NotImplementedError


def recency(c: Candidates) -> jax.Array:
  """Position as a float score: the most recent token scores highest."""
  return c.pos.astype(jnp.float32)


def in_recent_window(c: Candidates, window: int) -> jax.Array:
  """bool [B, Hkv, N]: the slot holds one of the last `window` tokens seen."""
  return c.pos >= (c.t[:, None, None] - window)


def protect(scores: jax.Array, keep: jax.Array) -> jax.Array:
  """Scores with +inf where `keep` is set."""
  return jnp.where(keep, jnp.inf, scores)


def last_valid_index(query_valid_BxC: jax.Array) -> jax.Array:
  """int32 [B]: index of the last valid query of each row (chunks are padded at the end)."""
  return jnp.sum(query_valid_BxC, axis=-1).astype(jnp.int32) - 1


def group_mean(probs_BxHkvxGxCxN: jax.Array) -> jax.Array:
  """Attention averaged over the query heads of each KV head's group: [B, Hkv, C, N]."""
  return jnp.mean(probs_BxHkvxGxCxN, axis=2)
