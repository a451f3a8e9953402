"""`decode_attention`: a few queries over a budgeted cache, with the per-slot attention mass.

The "xla" backend is `memjax.attention.reference.attend` (the oracle); "tpu" and "gpu" run
the split-K kernel of `decode_kernel` and merge its per-block partials here (`combine`).
The per-slot mass is what attention-based eviction policies accumulate (`h2o` sums it over
the chunk's queries, `tova` takes the last query's), so they need no second pass.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

from memjax.attention import blockwise, reference
from memjax.kernels import decode_kernel
from memjax.kernels.backend import Backend, resolve

# Slots per kernel program. See experiments/results/kernels.md.
DEFAULT_BLOCK_S = {"tpu": 2048, "gpu": 256}


def decode_attention(q: jax.Array, cache, *, positions: jax.Array | None = None,
                     backend: Backend = "auto", interpret: bool = False,
                     block_s: int | None = None, with_slot_mass: bool = True,
                     soft_cap: float | None = None,
                     first_filled: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array | None]:
  """Grouped-query attention of C queries over the S slots of one layer's cache.

  Args:
    q: [B, C, Hq, D] queries, already rotated; query head h reads KV head h // G.
    cache: a `memjax.cache.kv_cache.LayerCache` (or anything with k, v [B, Hkv, S, D] and
      pos int32 [B, Hkv, S], -1 = empty slot), or a sequence of them attended as one
      cache of their slots in order (a cache read in place and fresh slots beside it: the
      XLA path never concatenates their keys, the Pallas kernels do).
    positions: optional int32 [B, C] query positions; slot j is visible to query c when
      pos_j >= 0 and, if positions are given, pos_j <= positions[c].
    backend: "auto" (Pallas on TPU/GPU, XLA on CPU), "xla", "tpu" or "gpu".
    interpret: run the Pallas kernel in interpret mode (CPU testing).
    block_s: slots per kernel program (default per backend, shrunk for small caches).
    with_slot_mass: False skips the per-slot mass (the kernel then neither writes nor
      combines per-slot numerators: a policy that does not read attention saves that traffic).
    soft_cap: optional logit cap c · tanh(s / c) (Gemma 2); the XLA path only.
    first_filled: int32 [B], when the first block is an in-order cache (each row's tokens in
      its first `first_filled[b]` slots): for a chunk of queries (C > 1, prefill) the XLA path then reads only its
      occupied slots, block by block (`attention.blockwise.attend_filled`: 2.9x faster for
      a 512-token chunk over 1k cached tokens in a 4k buffer, SmolLM2-135M on 2 CPU cores).
      One query (decode) keeps the single softmax over the whole buffer: the loop made a
      decode step 1.8x slower there, and a decode buffer is sized to what it will hold.
      Needs `with_slot_mass` False.

  Returns:
    out: [B, C, Hq, D] in the dtype of q (zero for a query that sees no slot).
    slot_mass: float32 [B, Hkv, C, S], the attention probability of each slot for each
      query, averaged over the G query heads of the slot's KV head (None without
      `with_slot_mass`).
  """
  impl = resolve(backend)
  blocks = [cache] if hasattr(cache, "pos") else list(cache)
  query_pos_BxC = (jnp.full(q.shape[:2], jnp.iinfo(jnp.int32).max, jnp.int32)
                   if positions is None else positions.astype(jnp.int32))
  if impl == "xla" and first_filled is not None and not with_slot_mass and q.shape[1] > 1:
    first, rest = blocks[0], blocks[1:]
    return blockwise.attend_filled(q, first.k, first.v, first.pos, first_filled,
                                   [(b.k, b.v, b.pos) for b in rest], query_pos_BxC,
                                   soft_cap=soft_cap), None
  if impl == "xla":
    visible = lambda pos: (pos[:, :, None, :] >= 0) & (pos[:, :, None, :]
                                                        <= query_pos_BxC[:, None, :, None])
    out, probs = reference.attend_blocks(q, [(b.k, b.v, visible(b.pos)) for b in blocks],
                                         soft_cap)
    if not with_slot_mass:
      return out, None
    return out, jnp.concatenate([jnp.mean(p, axis=2) for p in probs], axis=-1)
  join = lambda name: jnp.concatenate([getattr(b, name) for b in blocks], axis=2)
  k, v, slot_pos_BxHkvxS = join("k"), join("v"), join("pos")
  if soft_cap is not None:
    raise ValueError(f"the {impl} decode kernel has no logit soft-cap; use "
                     "attention_impl='xla' for a model with attention soft-capping")
  return _pallas(impl, q, k, v, slot_pos_BxHkvxS, query_pos_BxC,
                 block_s=block_s or DEFAULT_BLOCK_S[impl], with_slot_mass=with_slot_mass,
                 interpret=interpret)


def _pallas(impl, q_BxCxHqxD, k_BxHkvxSxD, v_BxHkvxSxD, slot_pos_BxHkvxS, query_pos_BxC, *,
            block_s, with_slot_mass, interpret):
  b, c, _, d = q_BxCxHqxD.shape
  n_kv, s = k_BxHkvxSxD.shape[1], k_BxHkvxSxD.shape[2]
  group = q_BxCxHqxD.shape[2] // n_kv
  rows = round_rows(group * c, impl)
  pad_rows = lambda x, fill=0: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, rows - group * c),
                                                                    (0, 0)], constant_values=fill)
  q = pad_rows(einops.rearrange(q_BxCxHqxD, "b c (h g) d -> b h (g c) d", h=n_kv))
  q_pos = pad_rows(einops.repeat(query_pos_BxC, "b c -> b (g c) 1", g=group), fill=-1)
  block_s = min(block_s, round_slots(s, impl))
  partials = decode_kernel.split_k(impl, q, q_pos, k_BxHkvxSxD, v_BxHkvxSxD,
                                   slot_pos_BxHkvxS[:, :, None, :], block_s=block_s,
                                   numerators=with_slot_mass, interpret=interpret)
  out_BxHkvxRxD, probs_BxHkvxRxS = combine(*partials, block_s=block_s)
  out = einops.rearrange(out_BxHkvxRxD[:, :, :group * c], "b h (g c) d -> b c (h g) d", g=group)
  if not with_slot_mass:
    return out.astype(q_BxCxHqxD.dtype), None
  probs = einops.rearrange(probs_BxHkvxRxS[:, :, :group * c], "b h (g c) s -> b h g c s",
                           g=group)
  return out.astype(q_BxCxHqxD.dtype), jnp.mean(probs, axis=2)


def combine(acc_BxHkvxNxRxD, max_BxHkvxNxRx1, sum_BxHkvxNxRx1, numerators_BxHkvxRxS=None, *,
            block_s: int):
  """Merge split-K partials over the N slot blocks of `block_s` slots.

  Returns:
    out [B, Hkv, R, D] float32, normalised (zero for rows that saw no slot);
    probs [B, Hkv, R, S] float32 attention probabilities of every slot, or None without
      numerators.
  """
  max_BxHkvx1xRx1 = jnp.max(max_BxHkvxNxRx1, axis=2, keepdims=True)
  shift = jnp.where(max_BxHkvx1xRx1 == -jnp.inf, 0.0, max_BxHkvx1xRx1)
  weight_BxHkvxNxRx1 = jnp.exp(max_BxHkvxNxRx1 - shift)
  total_BxHkvxRx1 = jnp.sum(weight_BxHkvxNxRx1 * sum_BxHkvxNxRx1, axis=2)
  inv_total = jnp.where(total_BxHkvxRx1 > 0, 1.0 / jnp.where(total_BxHkvxRx1 > 0,
                                                           total_BxHkvxRx1, 1.0), 0.0)
  out = jnp.sum(weight_BxHkvxNxRx1 * acc_BxHkvxNxRxD, axis=2) * inv_total
  if numerators_BxHkvxRxS is None:
    return out, None
  scale_BxHkvxRxN = einops.rearrange(weight_BxHkvxNxRx1, "b h n r 1 -> b h r n") * inv_total
  n_slots = numerators_BxHkvxRxS.shape[-1]
  scale_BxHkvxRxS = jnp.repeat(scale_BxHkvxRxN, block_s, axis=-1)[..., :n_slots]
  return out, numerators_BxHkvxRxS * scale_BxHkvxRxS


def round_slots(s: int, impl: str) -> int:
  """Smallest block covering a small cache: lane multiple (TPU) or power of two (GPU)."""
  return max(16, 1 << (s - 1).bit_length()) if impl == "gpu" else -(-s // 128) * 128


def round_rows(rows: int, impl: str) -> int:
  """Query rows padded to a sublane multiple (TPU) or a power of two >= 16 (Triton dots)."""
  return max(16, 1 << (rows - 1).bit_length()) if impl == "gpu" else -(-rows // 8) * 8
