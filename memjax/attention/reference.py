"""Reference (oracle) attention in plain XLA: explicit logits, mask and softmax.

Every other attention path in memjax (chunked cache attention, Pallas kernels) is checked
against this one.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

_MASKED = -1e30


def attend(q_BxCxHqxDh: jax.Array, k_BxHkvxNxDh: jax.Array, v_BxHkvxNxDh: jax.Array,
           mask_BxHkvxCxN: jax.Array,
           soft_cap: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Grouped-query softmax attention of C queries over N keys.

  Query head h reads KV head h // G, where G = Hq // Hkv. Masked keys get zero probability;
  a query whose keys are all masked gets a zero output (no NaN).

  Args:
    q_BxCxHqxDh: queries, already rotated.
    k_BxHkvxNxDh: keys, already rotated.
    v_BxHkvxNxDh: values.
    mask_BxHkvxCxN: True where query c may attend key n (may broadcast over B or Hkv).
    soft_cap: optional cap c of the scaled logits, c · tanh(s / c) (Gemma 2).

  Returns:
    out_BxCxHqxDh: attention output in the dtype of q.
    probs_BxHkvxGxCxN: float32 attention probabilities.
  """
  n_kv = k_BxHkvxNxDh.shape[1]
  q_BxHkvxGxCxDh = einops.rearrange(q_BxCxHqxDh, "b c (h g) d -> b h g c d", h=n_kv)
  scale = q_BxCxHqxDh.shape[-1] ** -0.5
  logits = jnp.einsum("bhgcd,bhnd->bhgcn", q_BxHkvxGxCxDh, k_BxHkvxNxDh,
                      preferred_element_type=jnp.float32) * scale
  if soft_cap is not None:
    logits = soft_cap * jnp.tanh(logits / soft_cap)
  mask_BxHkvx1xCxN = mask_BxHkvxCxN[:, :, None]
  logits = jnp.where(mask_BxHkvx1xCxN, logits, _MASKED)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(mask_BxHkvx1xCxN, probs, 0.0)
  out = jnp.einsum("bhgcn,bhnd->bhgcd", probs.astype(v_BxHkvxNxDh.dtype), v_BxHkvxNxDh)
  out_BxCxHqxDh = einops.rearrange(out, "b h g c d -> b c (h g) d")
  return out_BxCxHqxDh.astype(q_BxCxHqxDh.dtype), probs


def causal_mask(positions_BxT: jax.Array) -> jax.Array:
  """Causal mask [B, 1, T, T] from token positions: key j is visible to query i iff pos_j <= pos_i."""
  return (positions_BxT[:, None, :] <= positions_BxT[:, :, None])[:, None]
