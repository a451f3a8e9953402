"""`leverage`: keep the keys that are statistical outliers among the cached keys, by their
approximate leverage (Chari & Van Durme 2025, "Compactor", https://arxiv.org/abs/2507.08143)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy, z_normalise


def gaussian_sketch(seed: int, layer: jax.Array, n_heads: int, head_dim: int,
                    sketch_dim: int) -> jax.Array:
  """float32 [H, Dh, k]: a fixed Gaussian sketch per (seed, layer, KV head), entries N(0, 1/k)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), layer)
  return jax.random.normal(key, (n_heads, head_dim, sketch_dim)) / math.sqrt(sketch_dim)


def approximate_leverage(k_pre_BxHxNxDh: jax.Array, in_set_BxHxN: jax.Array,
                         sketch_HxDxK: jax.Array, jitter: float) -> jax.Array:
  """float32 [B, H, N]: leverage of each key in the set, 0 outside it.

  The keys of the set are centred (mean over the set) and sketched, X = (K - mean) Φ [n, k];
  the leverage of key i is x_iᵀ (XᵀX + jitter·I)⁻¹ x_i = ‖L⁻¹ x_i‖² with L the Cholesky factor
  of XᵀX + jitter·I (the jitter keeps the factorisation defined when XᵀX is singular).
  """
  k = k_pre_BxHxNxDh.astype(jnp.float32)
  w = in_set_BxHxN[..., None].astype(jnp.float32)
  mean = jnp.sum(k * w, axis=2, keepdims=True) / jnp.maximum(jnp.sum(w, axis=2, keepdims=True), 1)
  x_BxHxNxK = jnp.einsum("bhnd,hdk->bhnk", (k - mean) * w, sketch_HxDxK)
  sketch_dim = sketch_HxDxK.shape[-1]
  gram_BxHxKxK = (jnp.einsum("bhnk,bhnl->bhkl", x_BxHxNxK, x_BxHxNxK)
                  + jitter * jnp.eye(sketch_dim, dtype=jnp.float32))
  chol = jnp.linalg.cholesky(gram_BxHxKxK)
  z_BxHxKxN = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(x_BxHxNxK, -1, -2),
                                                lower=True)
  return jnp.sum(z_BxHxKxN ** 2, axis=-2) * w[..., 0]


def leverage_z(c: Candidates, in_set_BxHxN: jax.Array, seed: int, sketch_dim: int,
               jitter: float) -> jax.Array:
  """float32 [B, Hkv, N]: approximate leverage of the candidates' pre-RoPE keys within the
  set, z-normalised per (batch row, KV head) over the set; 0 outside it."""
  _, n_heads, _, head_dim = c.k_pre.shape
  sketch = gaussian_sketch(seed, c.layer, n_heads, head_dim, sketch_dim)
  return z_normalise(approximate_leverage(c.k_pre, in_set_BxHxN, sketch, jitter), in_set_BxHxN)


@dataclasses.dataclass(frozen=True)
class Leverage(Policy):
  """Score = approximate leverage of each key among the S + C candidates, z-normalised per head.

  Leverage measures how far a key lies outside the span that the other keys fill: a key the
  others cannot explain is one a future query may single out. It is computed on keys before
  RoPE (RoPE would make a key's geometry depend on its position), rescored at every eviction
  over the current candidates, query-agnostic and without attention.

  Attributes:
    sketch_dim: columns k of the Gaussian sketch Φ [Dh, k] (Compactor: 48).
    jitter: added to the diagonal of XᵀX before the Cholesky factorisation.
    seed: picks the sketch (fixed per layer and KV head, so scores are deterministic).
  """

  name = "leverage"
  needs_pre_rope_keys = True
  sketch_dim: int = 48
  jitter: float = 1e-2
  seed: int = 0

  def score(self, c: Candidates):
    return leverage_z(c, c.pos >= 0, self.seed, self.sketch_dim, self.jitter)
