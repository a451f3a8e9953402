"""`cur`: approximate leverage of keys and of values, combined (CurDKV, Sengupta et al. 2025,
"Value-Guided KV Compression for LLMs via Approximated CUR Decomposition",
https://arxiv.org/abs/2509.15038)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Chunk, Policy, is_sink, protect
from memjax.cache.policies.non_causal_attn import with_chunk_scores


def local_leverage(x_BxHxCxD: jax.Array, window_BxC: jax.Array,
                   valid_BxC: jax.Array) -> jax.Array:
  """float32 [B, H, C]: ‖x‖² normalised by its sum over the real tokens of the same window.

  This is CurDKV's local approximation of leverage: within a window of neighbouring tokens,
  each row's share of the squared Frobenius norm.
  """
  sq = jnp.sum(x_BxHxCxD.astype(jnp.float32) ** 2, axis=-1) * valid_BxC[:, None, :]
  same_BxCxC = (window_BxC[:, :, None] == window_BxC[:, None, :]) & valid_BxC[:, None, :]
  total = jnp.einsum("bhm,bcm->bhc", sq, same_BxCxC.astype(jnp.float32))
  return sq / jnp.maximum(total, 1e-30)


@dataclasses.dataclass(frozen=True)
class CUR(Policy):
  """Score = key leverage × value leverage (by default), each within a local window of
  `window` positions; the first `n_sink` tokens kept.

  A key's norm is unchanged by RoPE, so rotated keys serve. Scores are computed when a chunk
  is inserted, over windows of absolute positions (position // window) within the chunk: they
  equal kvpress's when the prefill chunk is a multiple of `window`. At decode the new token's
  window holds it alone, so it scores 1 (the most a token can score) and is kept while young.

  Attributes:
    n_sink: first tokens always kept (kvpress: 4).
    window: tokens per local window (kvpress: 16).
    combine: "kv_product" (k · v leverage, kvpress's default), "kv_avg", "key" or "value".
  """

  name = "cur"
  needs_values = True
  observes_chunk = True
  n_sink: int = 4
  window: int = 16
  combine: Literal["kv_product", "kv_avg", "key", "value"] = "kv_product"

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink

  def observe_chunk(self, c: Candidates, chunk: Chunk):
    n_chunk = chunk.positions.shape[-1]
    window_BxC = chunk.positions // self.window
    lev_k = local_leverage(c.k[:, :, -n_chunk:], window_BxC, chunk.valid)
    lev_v = local_leverage(c.v[:, :, -n_chunk:], window_BxC, chunk.valid)
    combined = {"kv_product": lambda: lev_k * lev_v, "kv_avg": lambda: (lev_k + lev_v) / 2,
                "key": lambda: lev_k, "value": lambda: lev_v}
    if self.combine not in combined:
      raise ValueError(f"cur: combine must be one of {sorted(combined)}, got {self.combine!r}")
    return with_chunk_scores(c, combined[self.combine]())

  def score(self, c: Candidates):
    return protect(c.stats, is_sink(c, self.n_sink))
