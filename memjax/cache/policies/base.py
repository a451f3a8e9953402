"""The shared signature of eviction policies.

A policy is a frozen dataclass holding its hyper-parameters. `score` ranks the S + C
candidate slots of one layer (higher = keep); protected slots score +inf. `observe`
folds the chunk's attention probabilities into the per-slot statistics before scoring;
policies that need no attention leave the statistics alone. Fresh tokens start with zero
statistics, or, for a policy with `uses_retention_gate`, with the log β of the layer's
retention gate (the params must then carry gates), or, for a policy with `uses_marks`, with
per-token flags given to generation (an oracle that knows which tokens matter).

Policies declare what they read with class flags, so that the cache mixer computes only that:
`needs_attention` (the chunk's attention probabilities, for `observe`), `needs_values` and
`needs_pre_rope_keys` (extra fields of `Candidates`), and `observes_chunk` (a second hook,
`observe_chunk`, that sees the whole chunk at once: its queries if `needs_queries`, its
normed hidden states if `needs_hidden`). A policy with `compresses_once` is applied once,
after the whole prompt has been prefilled (see `memjax.generation.reconstruction`). Pre-RoPE keys and queries are not stored: RoPE is a
rotation by position, so they are recovered exactly by rotating back by -position.
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
  v: [B, Hkv, N, Dh] values, for a policy with `needs_values` (else None).
  k_pre: [B, Hkv, N, Dh] keys before RoPE, for a policy with `needs_pre_rope_keys` (else None).
  """
  k: jax.Array
  pos: jax.Array
  stats: jax.Array
  t: jax.Array
  layer: jax.Array
  capacity: int
  v: jax.Array | None = None
  k_pre: jax.Array | None = None


class Chunk(NamedTuple):
  """What `observe_chunk` sees of the chunk being inserted: it holds the last C candidates.

  positions: int32 [B, C] token positions (padding included).
  valid: bool [B, C] real tokens (first in each row).
  rope_theta: the model's RoPE base (for a policy that rotates queries to future positions).
  q: [B, C, Hq, Dh] rotated queries, for a policy with `needs_queries` (else None).
  q_pre: [B, C, Hq, Dh] queries before RoPE, with `needs_queries` (else None).
  h: [B, C, D] normed hidden states entering attention, with `needs_hidden` (else None).
  """
  positions: jax.Array
  valid: jax.Array
  rope_theta: float
  q: jax.Array | None = None
  q_pre: jax.Array | None = None
  h: jax.Array | None = None


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
  # What `Candidates` and `Chunk` carry beyond the defaults (None otherwise).
  needs_values: ClassVar[bool] = False
  needs_pre_rope_keys: ClassVar[bool] = False
  needs_queries: ClassVar[bool] = False
  needs_hidden: ClassVar[bool] = False
  # True for a policy that overrides `observe_chunk` (scores computed over the whole chunk).
  observes_chunk: ClassVar[bool] = False
  # True for a prefill-then-compress method (`kvzip`): `generate` prefills the whole prompt,
  # scores it with the policy's own passes, keeps the top S once, and evicts nothing after.
  compresses_once: ClassVar[bool] = False

  def protected_slots(self, capacity: int) -> int:
    """Slots this policy always keeps (sinks, recent window); must be < capacity."""
    del capacity
    return 0

  def observe(self, stats_BxHkvxN: jax.Array, probs_BxHkvxGxCxN: jax.Array,
              query_valid_BxC: jax.Array) -> jax.Array:
    """Fold the chunk's attention (float32 probabilities, zero where masked) into stats."""
    del probs_BxHkvxGxCxN, query_valid_BxC
    return stats_BxHkvxN

  def observe_chunk(self, c: Candidates, chunk: Chunk) -> jax.Array:
    """New stats float32 [B, Hkv, N] from the candidates (stats after `observe`; the chunk is
    candidates [N - C:]) and the chunk's queries or hidden states; called only for a policy
    with `observes_chunk`, after the chunk has attended."""
    del chunk
    return c.stats

  def score(self, c: Candidates) -> jax.Array:
    """float32 [B, Hkv, N]: higher keeps; +inf for protected slots."""
    raise NotImplementedError


def recency(c: Candidates) -> jax.Array:
  """Position as a float score: the most recent token scores highest."""
  return c.pos.astype(jnp.float32)


def in_recent_window(c: Candidates, window: int) -> jax.Array:
  """bool [B, Hkv, N]: the slot holds one of the last `window` tokens seen."""
  return c.pos >= (c.t[:, None, None] - window)


def is_sink(c: Candidates, n_sink: int) -> jax.Array:
  """bool [B, Hkv, N]: the slot holds one of the first `n_sink` tokens of the sequence."""
  return (c.pos >= 0) & (c.pos < n_sink)


def protect(scores: jax.Array, keep: jax.Array) -> jax.Array:
  """Scores with +inf where `keep` is set."""
  return jnp.where(keep, jnp.inf, scores)


def last_valid_index(query_valid_BxC: jax.Array) -> jax.Array:
  """int32 [B]: index of the last valid query of each row (chunks are padded at the end)."""
  return jnp.sum(query_valid_BxC, axis=-1).astype(jnp.int32) - 1


def group_mean(probs_BxHkvxGxCxN: jax.Array) -> jax.Array:
  """Attention averaged over the query heads of each KV head's group: [B, Hkv, C, N]."""
  return jnp.mean(probs_BxHkvxGxCxN, axis=2)


def z_normalise(x_BxHxN: jax.Array, valid_BxHxN: jax.Array) -> jax.Array:
  """(x - mean) / std over the valid entries of each (batch row, head); 0 where invalid."""
  n = jnp.maximum(jnp.sum(valid_BxHxN, axis=-1, keepdims=True), 1)
  mean = jnp.sum(jnp.where(valid_BxHxN, x_BxHxN, 0.0), axis=-1, keepdims=True) / n
  var = jnp.sum(jnp.where(valid_BxHxN, (x_BxHxN - mean) ** 2, 0.0), axis=-1, keepdims=True) / n
  return jnp.where(valid_BxHxN, (x_BxHxN - mean) / jnp.maximum(jnp.sqrt(var), 1e-6), 0.0)


def in_chunk(c: Candidates, chunk: Chunk) -> jax.Array:
  """bool [N]: the candidate belongs to the chunk being inserted (the last C)."""
  n, n_chunk = c.pos.shape[-1], chunk.positions.shape[-1]
  return jnp.arange(n) >= n - n_chunk
