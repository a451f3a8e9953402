"""`non_causal_attn`: attention each key receives from every query of its chunk, in both
directions (the attention half of Compactor, Chari & Van Durme 2025,
https://arxiv.org/abs/2507.08143)."""

from __future__ import annotations

import dataclasses

import einops
import jax
import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Chunk, Policy, z_normalise


def non_causal_scores(c: Candidates, chunk: Chunk, tile: int, kernel: int) -> jax.Array:
  """float32 [B, Hkv, C]: z-normalised non-causal attention mass of the chunk's keys.

  Each query of the chunk attends, without a causal mask, to the keys of the chunk in the
  same tile (positions // tile); logits are q·k with no 1/√Dh, as in Compactor's reference
  code. The mass a key receives, summed over queries and averaged over the GQA group, is
  scaled by ‖v‖, averaged over `kernel` neighbouring tokens and z-normalised over the
  chunk's real tokens per (batch row, KV head).
  """
  n_chunk = chunk.positions.shape[-1]
  k_BxHxCxD = c.k[:, :, -n_chunk:].astype(jnp.float32)
  v_norm_BxHxC = jnp.linalg.norm(c.v[:, :, -n_chunk:].astype(jnp.float32), axis=-1)
  q = einops.rearrange(chunk.q.astype(jnp.float32), "b c (h g) d -> b h g c d",
                       h=k_BxHxCxD.shape[1])
  logits = jnp.einsum("bhgqd,bhkd->bhgqk", q, k_BxHxCxD)
  tile_BxC = chunk.positions // tile
  pair_BxCxC = ((tile_BxC[:, :, None] == tile_BxC[:, None, :])
                & chunk.valid[:, :, None] & chunk.valid[:, None, :])
  logits = jnp.where(pair_BxCxC[:, None, None], logits, -jnp.inf)
  probs = jax.nn.softmax(jnp.where(chunk.valid[:, None, None, :, None], logits, 0.0), axis=-1)
  probs = probs * chunk.valid[:, None, None, :, None]
  mass_BxHxC = jnp.mean(jnp.sum(probs, axis=-2), axis=2) * v_norm_BxHxC
  pad = kernel // 2
  pooled = jax.lax.reduce_window(mass_BxHxC, 0.0, jax.lax.add, (1, 1, kernel), (1, 1, 1),
                                 ((0, 0), (0, 0), (pad, kernel - 1 - pad))) / kernel
  valid_BxHxC = jnp.broadcast_to(chunk.valid[:, None, :], pooled.shape)
  return z_normalise(pooled, valid_BxHxC)


def with_chunk_scores(c: Candidates, chunk_scores_BxHxC: jax.Array) -> jax.Array:
  """float32 [B, Hkv, N]: the candidates' stats with the chunk's (the last C) replaced."""
  n_chunk = chunk_scores_BxHxC.shape[-1]
  return jnp.concatenate([c.stats[..., :-n_chunk], chunk_scores_BxHxC], axis=-1)


@dataclasses.dataclass(frozen=True)
class NonCausalAttn(Policy):
  """Score = the attention mass a key received from all queries of its chunk, bidirectionally.

  The score is computed once, when the key's chunk is inserted, and kept as the slot's
  statistic. kvpress computes it once over the whole prompt in tiles of `tile` tokens; memjax
  computes it per prefill chunk in the same tiles, so the two agree when the prefill chunk is
  a multiple of `tile` (except for the pooling at chunk edges). At decode the chunk is the
  new token alone, which scores 0 (its z-score among one token).

  Attributes:
    tile: queries see the keys of their own tile of `tile` positions (Compactor: 256).
    kernel: width of the moving average over neighbouring tokens (Compactor: 3).
  """

  name = "non_causal_attn"
  needs_values = True
  needs_queries = True
  observes_chunk = True
  tile: int = 256
  kernel: int = 3

  def observe_chunk(self, c: Candidates, chunk: Chunk):
    return with_chunk_scores(c, non_causal_scores(c, chunk, self.tile, self.kernel))

  def score(self, c: Candidates):
    return c.stats
