"""Split-K decode attention kernel: a few query rows against one block of cache slots.

One program per (batch row, KV head, slot block), every grid axis parallel, so even a
batch of one fills the machine. A program sees the G·C query rows of its KV head (the
group's heads times the chunk's queries) and block_s slots, and writes partial results
that `decode.combine` merges: the block's row max, row sum of exp(s − max), unnormalised
output Σ exp(s − max) v, and (when asked) the per-slot numerators exp(s − max) themselves,
from which the per-slot attention mass follows without a second pass over K.

The same kernel body serves TPU (Mosaic BlockSpecs, parallel dimension semantics) and GPU
(Triton). Status: verified only in interpret mode on CPU (the TPU interpreter and the HLO
interpreter); never run on a TPU or GPU.

Layouts: q [B, Hkv, R, D]; query positions [B, R, 1] int32; k, v [B, Hkv, S, D]; slot
positions [B, Hkv, 1, S] int32 (-1 = empty). S need not be a multiple of block_s: the last
block is a partial edge block (Pallas pads its reads), masked in the kernel, so the cache
is never copied to a padded buffer. Partial edge blocks work in both interpreters; their
lowering on real hardware is unverified.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from memjax.kernels import tiles
from memjax.kernels.backend import interpret_params

_SQ = pl.squeezed


def _kernel(q_ref, q_pos_ref, k_ref, v_ref, pos_ref, acc_ref, max_ref, sum_ref, *p_ref, scale,
            n_slots):
  # The last block may run past the cache: those slots hold garbage and are masked, and
  # their values zeroed so that 0 · garbage cannot reach the output.
  block_s = k_ref.shape[0]
  start = pl.program_id(2) * block_s
  in_cache_1xS = start + jax.lax.broadcasted_iota(jnp.int32, (1, block_s), 1) < n_slots
  in_cache_Sx1 = start + jax.lax.broadcasted_iota(jnp.int32, (block_s, 1), 0) < n_slots
  slot_pos_1xS = pos_ref[...]
  visible_RxS = in_cache_1xS & (slot_pos_1xS >= 0) & (slot_pos_1xS <= q_pos_ref[...])
  s_RxS = jnp.where(visible_RxS, tiles.matmul_nt(q_ref[...], k_ref[...]) * scale, -jnp.inf)
  max_Rx1, p_RxS, _ = tiles.exp_shifted(s_RxS, jnp.full(max_ref.shape, -jnp.inf, jnp.float32))
  max_ref[...] = max_Rx1
  sum_ref[...] = jnp.sum(p_RxS, axis=1, keepdims=True)
  v_SxD = jnp.where(in_cache_Sx1, v_ref[...], 0).astype(v_ref.dtype)
  acc_ref[...] = tiles.matmul(p_RxS.astype(v_SxD.dtype), v_SxD)
  if p_ref:
    p_ref[0][...] = p_RxS


def split_k(backend: str, q, q_pos, k, v, slot_pos, *, block_s: int, numerators: bool,
            interpret: bool):
  """Partial results per slot block: acc [B, Hkv, n, R, D], max and sum [B, Hkv, n, R, 1]
  and, if `numerators`, the per-slot numerators [B, Hkv, R, S]; all float32, n = ⌈S / block_s⌉.
  """
  b, n_kv, rows, d = q.shape
  n_slots = k.shape[2]
  n_blocks = -(-n_slots // block_s)
  partial = lambda width: pl.BlockSpec((_SQ, _SQ, _SQ, rows, width),
                                       lambda b, h, s: (b, h, s, 0, 0))
  kv_spec = pl.BlockSpec((_SQ, _SQ, block_s, d), lambda b, h, s: (b, h, s, 0))
  if backend == "tpu":
    compiler_params = pltpu.CompilerParams(dimension_semantics=("parallel",) * 3)
  else:
    compiler_params = pltriton.CompilerParams(num_warps=4, num_stages=2)
  stats_shape = jax.ShapeDtypeStruct((b, n_kv, n_blocks, rows, 1), jnp.float32)
  numerator_spec, numerator_shape = [], []
  if numerators:
    numerator_spec = [pl.BlockSpec((_SQ, _SQ, rows, block_s), lambda b, h, s: (b, h, 0, s))]
    numerator_shape = [jax.ShapeDtypeStruct((b, n_kv, rows, n_slots), jnp.float32)]
  return pl.pallas_call(
      functools.partial(_kernel, scale=d ** -0.5, n_slots=n_slots),
      grid=(b, n_kv, n_blocks),
      in_specs=[pl.BlockSpec((_SQ, _SQ, rows, d), lambda b, h, s: (b, h, 0, 0)),
                pl.BlockSpec((_SQ, rows, 1), lambda b, h, s: (b, 0, 0)),
                kv_spec, kv_spec,
                pl.BlockSpec((_SQ, _SQ, 1, block_s), lambda b, h, s: (b, h, 0, s))],
      out_specs=[partial(d), partial(1), partial(1)] + numerator_spec,
      out_shape=[jax.ShapeDtypeStruct((b, n_kv, n_blocks, rows, d), jnp.float32),
                 stats_shape, stats_shape] + numerator_shape,
      compiler_params=compiler_params,
      interpret=interpret_params(backend, interpret))(q, q_pos, k, v, slot_pos)
