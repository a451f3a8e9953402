"""`expected_attention`: the attention future queries are expected to pay each key, from the
statistics of recent queries (Devoto et al. 2025, "Expected Attention: KV Cache Compression by
Estimating Attention from Future Queries Distribution", https://arxiv.org/abs/2510.00636)."""

from __future__ import annotations

import dataclasses
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np

from memjax.cache.policies.base import Candidates, Chunk, Policy, is_sink, protect


def mean_rotation(t_B: jax.Array, n_future: int, head_dim: int, theta: float):
  """(cos, sin) float32 [B, Dh/2]: RoPE's rotation averaged over positions t .. t + n_future - 1.

  The averaged rotation R̄ acts on a vector x = [x1, x2] (rotate-half layout) as
  [cos·x1 - sin·x2, sin·x1 + cos·x2].
  """
  half = head_dim // 2
  inv_freq = theta ** (-np.arange(half, dtype=np.float32) / half)
  pos_BxF = t_B[:, None].astype(jnp.float32) + jnp.arange(n_future, dtype=jnp.float32)
  angle_BxFxHalf = pos_BxF[..., None] * inv_freq
  return jnp.mean(jnp.cos(angle_BxFxHalf), axis=1), jnp.mean(jnp.sin(angle_BxFxHalf), axis=1)


def rotate(x_BxHxDxM: jax.Array, cos_BxHalf: jax.Array, sin_BxHalf: jax.Array) -> jax.Array:
  """R̄ x along axis 2 of [B, H, Dh, M] (M columns rotated alike)."""
  half = x_BxHxDxM.shape[2] // 2
  c, s = cos_BxHalf[:, None, :, None], sin_BxHalf[:, None, :, None]
  x1, x2 = x_BxHxDxM[:, :, :half], x_BxHxDxM[:, :, half:]
  return jnp.concatenate([c * x1 - s * x2, s * x1 + c * x2], axis=2)


def query_statistics(chunk: Chunk, n_sink: int):
  """Mean [B, Hq, Dh] and covariance [B, Hq, Dh, Dh] of the chunk's real pre-RoPE queries
  at positions >= n_sink (a row with none has mean and covariance 0)."""
  q = chunk.q_pre.astype(jnp.float32)
  w_BxC = (chunk.valid & (chunk.positions >= n_sink)).astype(jnp.float32)
  n_B = jnp.maximum(jnp.sum(w_BxC, axis=1), 1.0)
  mean = jnp.einsum("bchd,bc->bhd", q, w_BxC) / n_B[:, None, None]
  centred = (q - mean[:, None]) * w_BxC[:, :, None, None]
  cov = jnp.einsum("bchd,bche->bhde", centred, centred) / n_B[:, None, None, None]
  return mean, cov


@dataclasses.dataclass(frozen=True)
class ExpectedAttention(Policy):
  """Score = E[softmax(q·k/√Dh)] over future queries q, times ‖v‖; the first `n_sink` kept.

  Future queries are modelled as Gaussian with the mean μ and covariance Σ of the chunk's
  pre-RoPE queries, rotated by RoPE averaged over the next `n_future` positions (R̄). Then
  E[exp(q·k/√d)] = exp(k·R̄μ/√d + kᵀR̄ΣR̄ᵀk/(2d)); the exponent is softmaxed over the
  unprotected candidates per query head, averaged over the GQA group, and rescaled as
  (score + epsilon)·‖v‖. Every chunk rescores all candidates with its own queries; kvpress
  uses every prompt query once after prefill. At decode the statistics are those of the one
  new query (covariance 0).

  Attributes:
    n_future: future positions the rotation is averaged over (paper: 512).
    n_sink: first tokens kept and left out of the query statistics (paper: 4).
    use_covariance: include the kᵀΣk/(2d) term (else the mean query only).
    use_vnorm: rescale by the value norm.
    epsilon: added to the score before the value-norm rescaling.
  """

  name = "expected_attention"
  needs_values = True
  needs_queries = True
  observes_chunk = True
  n_future: int = 512
  n_sink: int = 4
  use_covariance: bool = True
  use_vnorm: bool = True
  epsilon: float = 0.0

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink

  def observe_chunk(self, c: Candidates, chunk: Chunk):
    head_dim = c.k.shape[-1]
    mean, cov = query_statistics(chunk, self.n_sink)
    cos, sin = mean_rotation(c.t, self.n_future, head_dim, chunk.rope_theta)
    mean = rotate(mean[..., None], cos, sin)[..., 0]
    k = c.k.astype(jnp.float32)
    k = einops.repeat(k, "b h n d -> b (h g) n d", g=mean.shape[1] // k.shape[1])
    logits = jnp.einsum("bhnd,bhd->bhn", k, mean) / math.sqrt(head_dim)
    if self.use_covariance:
      cov = jnp.swapaxes(rotate(jnp.swapaxes(rotate(cov, cos, sin), 2, 3), cos, sin), 2, 3)
      logits += jnp.einsum("bhnd,bhde,bhne->bhn", k, cov, k) / (2 * head_dim)
    scored = (c.pos >= 0) & ~is_sink(c, self.n_sink)
    scored_BxHqxN = einops.repeat(scored, "b h n -> b (h g) n", g=mean.shape[1] // c.k.shape[1])
    probs = jax.nn.softmax(jnp.where(scored_BxHqxN, logits, -jnp.inf), axis=-1)
    probs = jnp.where(scored_BxHqxN, probs, 0.0)
    scores = jnp.mean(einops.rearrange(probs, "b (h g) n -> b h g n", h=c.k.shape[1]), axis=2)
    if self.use_vnorm:
      scores = (scores + self.epsilon) * jnp.linalg.norm(c.v.astype(jnp.float32), axis=-1)
    return scores

  def score(self, c: Candidates):
    return protect(c.stats, is_sink(c, self.n_sink))
