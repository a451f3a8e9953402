"""Attention kernels on a mesh: `shard_map` hands each device its own rows and heads.

Pallas kernels see the arrays of one device: under plain `jit` with sharded inputs XLA
cannot split a custom call, so it would gather the whole batch onto every device. Attention
is independent per (batch row, KV head), so wrapping the kernel in `shard_map` over the
"batch" and "kv_heads" rules runs it on the local block with no communication. Query head
h reads KV head h // G, so splitting both head axes in the same number of contiguous blocks
keeps every group on one device.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from memjax import kernels
from memjax.cache.kv_cache import LayerCache
from memjax.sharding.rules import Rules, mesh_spec


def _row_and_head_axes(mesh: Mesh, rules: Rules, batch: int, n_kv_heads: int):
  """(batch mesh axes, head mesh axes) that divide the batch and the KV heads."""
  spec = mesh_spec(P("batch", "kv_heads"), (batch, n_kv_heads), mesh, rules)
  return spec[0], spec[1]


def flash_attention(q, k, v, log_beta=None, *, mesh: Mesh, rules: Rules, **kwargs):
  """`kernels.flash_attention` per device block; q [B, T, Hq, D], k, v [B, T, Hkv, D],
  log_beta [B, T, Hkv] split over batch rows and heads (sequence kept whole)."""
  b, h = _row_and_head_axes(mesh, rules, q.shape[0], k.shape[2])
  heads = P(b, None, h, None)
  fn = functools.partial(kernels.flash_attention, **kwargs)
  if log_beta is None:
    return jax.shard_map(lambda q, k, v: fn(q, k, v), mesh=mesh, in_specs=(heads,) * 3,
                         out_specs=heads, check_vma=False)(q, k, v)
  return jax.shard_map(fn, mesh=mesh, in_specs=(heads, heads, heads, P(b, None, h)),
                       out_specs=heads, check_vma=False)(q, k, v, log_beta)


def decode_attention(q, cache: LayerCache, positions, *, mesh: Mesh, rules: Rules, **kwargs):
  """`kernels.decode_attention` per device block; q [B, C, Hq, D], the cache's k, v
  [B, Hkv, S, D] and pos [B, Hkv, S], positions [B, C]. Returns (out [B, C, Hq, D],
  slot_mass [B, Hkv, C, S] or None), split the same way."""
  b, h = _row_and_head_axes(mesh, rules, q.shape[0], cache.k.shape[1])
  slots = P(b, h, None)
  cache_specs = LayerCache(k=P(b, h, None, None), v=P(b, h, None, None), pos=slots,
                           stats=slots)
  with_mass = kwargs.get("with_slot_mass", True)
  out_specs = (P(b, None, h, None), P(b, h, None, None) if with_mass else None)
  fn = lambda q, cache, positions: kernels.decode_attention(q, cache, positions=positions,
                                                            **kwargs)
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(b, None, h, None), cache_specs, P(b, None)),
                       out_specs=out_specs, check_vma=False)(q, cache, positions)
