"""Next-token sampling on the device: greedy, temperature, top-k and top-p (nucleus).

Runs inside the jitted decode loop, so a generated token never visits the host until the
loop ends. With a fixed seed the tokens are reproducible: step i draws from
`jax.random.fold_in(key, i)`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from memjax import checks


class Sampler(NamedTuple):
  """How the next token is chosen.

  temperature: 0 picks the most likely token (greedy); otherwise logits / temperature.
  top_k: keep only the k most likely tokens (0: all).
  top_p: keep the smallest set of most likely tokens whose probability reaches p (1: all).
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def checked(self) -> "Sampler":
    """The sampler with its fields validated (clear errors for bad values)."""
    temperature = checks.non_negative("temperature", self.temperature, "0 for greedy decoding")
    top_k = checks.integer("top_k", self.top_k, 0, "most likely tokens kept, 0 for all")
    top_p = float(self.top_p)
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}; 1 keeps every token")
    return Sampler(temperature, top_k, top_p)

  @property
  def greedy(self) -> bool:
    return self.temperature <= 0


def sample(logits_BxV: jax.Array, key: jax.Array, sampler: Sampler) -> jax.Array:
  """int32 [B]: one token per row from float32 logits [B, V]."""
  if sampler.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  z = logits_BxV.astype(jnp.float32) / sampler.temperature
  if sampler.top_k:
    kth_B1 = jax.lax.top_k(z, min(sampler.top_k, z.shape[-1]))[0][:, -1:]
    z = jnp.where(z < kth_B1, -jnp.inf, z)
  if sampler.top_p < 1.0:
    order = jnp.argsort(-z, axis=-1)
    sorted_z = jnp.take_along_axis(z, order, axis=-1)
    probs = jax.nn.softmax(sorted_z, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    drop_sorted = before >= sampler.top_p
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(z.shape[0])[:, None], order].set(
        drop_sorted)
    z = jnp.where(drop, -jnp.inf, z)
  return jax.random.categorical(key, z, axis=-1).astype(jnp.int32)
