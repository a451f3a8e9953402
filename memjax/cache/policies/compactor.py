"""`compactor`: approximate key leverage blended with non-causal chunk attention, with sinks
and recent tokens protected (Chari & Van Durme 2025, "Compactor: Calibrated Query-Agnostic KV
Cache Compression with Approximate Leverage Scores", https://arxiv.org/abs/2507.08143)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import (Candidates, Chunk, Policy, in_recent_window, is_sink,
                                        protect)
from memjax.cache.policies.leverage import leverage_z
from memjax.cache.policies.non_causal_attn import non_causal_scores, with_chunk_scores


@dataclasses.dataclass(frozen=True)
class Compactor(Policy):
  """Score = w · leverage_z + non_causal_attn; the first `n_sink` and the last `n_recent`
  tokens are kept.

  The non-causal attention score is fixed when a key's chunk is inserted (see
  `non_causal_attn`); the leverage z-score is recomputed at every eviction over the
  unprotected candidates (see `leverage`).

  Attributes:
    n_sink: first tokens of the sequence always kept (kvpress: 8).
    n_recent: most recent tokens always kept (kvpress: 4).
    blending: weight w of the leverage score; None uses the compressed fraction so far,
      1 - S / t (kvpress's default: the compression ratio).
    tile, kernel: of the non-causal attention (256, 3).
    sketch_dim, jitter, seed: of the leverage (48, 1e-2, 0).
  """

  name = "compactor"
  needs_values = True
  needs_queries = True
  needs_pre_rope_keys = True
  observes_chunk = True
  n_sink: int = 8
  n_recent: int = 4
  blending: float | None = None
  tile: int = 256
  kernel: int = 3
  sketch_dim: int = 48
  jitter: float = 1e-2
  seed: int = 0

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink + self.n_recent

  def observe_chunk(self, c: Candidates, chunk: Chunk):
    return with_chunk_scores(c, non_causal_scores(c, chunk, self.tile, self.kernel))

  def score(self, c: Candidates):
    keep = is_sink(c, self.n_sink) | in_recent_window(c, self.n_recent)
    lev = leverage_z(c, (c.pos >= 0) & ~keep, self.seed, self.sketch_dim, self.jitter)
    if self.blending is None:
      seen_B = jnp.maximum(c.t, c.capacity).astype(jnp.float32)
      blend = (1.0 - c.capacity / seen_B)[:, None, None]
    else:
      blend = self.blending
    return protect(blend * lev + c.stats, keep)
