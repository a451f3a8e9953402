"""`snapkv`: attention from an observation window of recent queries, pooled (arXiv 2404.14469)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from memjax.cache.policies.base import (Candidates, Policy, group_mean, in_recent_window,
                                        protect)


@dataclasses.dataclass(frozen=True)
class SnapKV(Policy):
  """Scores slots by the attention of the last `window` queries of each chunk, pooled over
  neighbouring slots; the last `window` tokens themselves are kept.

  SnapKV compresses once after prefill; memjax applies the same rule at every chunk of a
  chunked prefill (and at decode, where the observation window is the single new query).

  Attributes:
    window: observation window (queries) and protected recent tokens (paper: 64).
    kernel: pooling width over slots (paper: 5).
    pooling: "max" or "avg".
  """

  name = "snapkv"
  needs_attention = True
  window: int = 64
  kernel: int = 5
  pooling: Literal["max", "avg"] = "max"

  def protected_slots(self, capacity: int) -> int:
    return self.window

  def observe(self, stats, probs, query_valid):
    n_valid_B = jnp.sum(query_valid, axis=-1)
    c_idx = jnp.arange(query_valid.shape[1])
    in_window_BxC = query_valid & (c_idx >= (n_valid_B[:, None] - self.window))
    votes_BxHkvxN = jnp.sum(group_mean(probs) * in_window_BxC[:, None, :, None], axis=2)
    return self._pool(votes_BxHkvxN)

  def _pool(self, x_BxHkvxN):
    pad = self.kernel // 2
    dims, strides = (1, 1, self.kernel), (1, 1, 1)
    padding = ((0, 0), (0, 0), (pad, self.kernel - 1 - pad))
    if self.pooling == "max":
      return jax.lax.reduce_window(x_BxHkvxN, -jnp.inf, jax.lax.max, dims, strides, padding)
    total = jax.lax.reduce_window(x_BxHkvxN, 0.0, jax.lax.add, dims, strides, padding)
    return total / self.kernel

  def score(self, c: Candidates):
    return protect(c.stats, in_recent_window(c, self.window))
