"""Key usage of a product-key memory: how evenly lookups spread over the n_keys² slots."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def slot_mass(slots: jax.Array, weights: jax.Array, n_slots: int) -> jax.Array:
  """Summed softmax weight each slot received: [n_slots] (slots, weights: any equal shape)."""
  return jnp.zeros((n_slots,), jnp.float32).at[slots.reshape(-1)].add(
      weights.reshape(-1).astype(jnp.float32))


def usage_metrics(mass_N: jax.Array) -> dict[str, jax.Array]:
  """From per-slot mass [N] (e.g. `slot_mass` summed over batches):

    used:   fraction of slots with non-zero mass
    kl:     KL(p || uniform) = log N − H(p) of the normalised mass p, in nats (0 = uniform)
    gini:   Gini coefficient of the mass (0 = uniform, → 1 = one slot takes everything)
  """
  n = mass_N.shape[0]
  p = mass_N / jnp.maximum(jnp.sum(mass_N), 1e-30)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  sorted_p = jnp.sort(p)
  ranks = jnp.arange(1, n + 1, dtype=jnp.float32)
  gini = jnp.sum((2 * ranks - n - 1) * sorted_p) / n
  return {"used": jnp.mean(mass_N > 0), "kl": jnp.log(n) - entropy, "gini": gini}
