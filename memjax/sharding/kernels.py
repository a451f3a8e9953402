"""Attention kernels on a mesh: `shard_map` hands each device its own rows and heads.

Pallas kernels see the arrays of one device: under plain `jit` with sharded inputs XLA
cannot split a custom call, so it would gather the whole batch onto every device. Attention
is independent per (batch row, KV head), so wrapping the kernel in `shard_map` over the
"batch" and "kv_heads" rules runs it on the local block with no communication. Query head
h reads KV head h // G, so splitting both head axes in the same number of contiguous blocks
keeps every group on one device.

These are the entry points the model calls. They read the mesh and rules of the placement
they are traced under (`memjax.sharding.placement`); without a mesh, or when the backend
resolves to "xla" (plain XLA ops, which GSPMD partitions itself), they are the plain kernels.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from memjax import kernels
from memjax.cache.kv_cache import LayerCache
from memjax.sharding.placement import Placement, current
from memjax.sharding.rules import mesh_spec


def per_device(mesh: Mesh | None, backend: kernels.Backend) -> bool:
  """Whether attention on `mesh` runs per device block: a mesh is given and `backend`
  resolves to a Pallas kernel ("tpu", "gpu", or "auto" on an accelerator)."""
  return mesh is not None and kernels.resolve(backend) != "xla"


def _row_and_head_axes(placement: Placement, batch: int, n_kv_heads: int):
  """(batch mesh axes, head mesh axes) that divide the batch and the KV heads."""
  spec = mesh_spec(P("batch", "kv_heads"), (batch, n_kv_heads), placement.mesh,
                   placement.logical_rules)
  return spec[0], spec[1]


def flash_attention(q, k, v, log_beta=None, *, segment_ids=None,
                    backend: kernels.Backend = "auto", **kwargs):
  """`kernels.flash_attention`, per device block when `per_device(mesh, backend)` for the
  current placement's mesh.

  q [B, T, Hq, D], k, v [B, T, Hkv, D], log_beta [B, T, Hkv] and segment_ids [B, T] are
  split over batch rows and KV heads by the placement's rules, the sequence kept whole;
  other keyword arguments go to the kernel. Returns [B, T, Hq, D].
  """
  fn = lambda q, k, v, log_beta, segment_ids: kernels.flash_attention(
      q, k, v, log_beta, segment_ids=segment_ids, backend=backend, **kwargs)
  placement = current()
  if not per_device(placement.mesh, backend):
    return fn(q, k, v, log_beta, segment_ids)
  b, h = _row_and_head_axes(placement, q.shape[0], k.shape[2])
  heads = P(b, None, h, None)
  return jax.shard_map(fn, mesh=placement.mesh,
                       in_specs=(heads, heads, heads, P(b, None, h), P(b, None)),
                       out_specs=heads, check_vma=False)(q, k, v, log_beta, segment_ids)


def decode_attention(q, cache: LayerCache, positions, *, backend: kernels.Backend = "auto",
                     **kwargs):
  """`kernels.decode_attention`, per device block when `per_device(mesh, backend)` for the
  current placement's mesh.

  q [B, C, Hq, D], the cache's k, v [B, Hkv, S, D] and pos, stats [B, Hkv, S], positions
  [B, C] are split over batch rows and KV heads (slots kept whole). Returns (out
  [B, C, Hq, D], slot_mass [B, Hkv, C, S] or None), split the same way.
  """
  fn = lambda q, cache, positions: kernels.decode_attention(q, cache, positions=positions,
                                                            backend=backend, **kwargs)
  placement = current()
  if not per_device(placement.mesh, backend):
    return fn(q, cache, positions)
  b, h = _row_and_head_axes(placement, q.shape[0], cache.k.shape[1])
  slots = P(b, h, None)
  cache_specs = LayerCache(k=P(b, h, None, None), v=P(b, h, None, None), pos=slots,
                           stats=slots)
  with_mass = kwargs.get("with_slot_mass", True)
  out_specs = (P(b, None, h, None), P(b, h, None, None) if with_mass else None)
  return jax.shard_map(fn, mesh=placement.mesh,
                       in_specs=(P(b, None, h, None), cache_specs, P(b, None)),
                       out_specs=out_specs, check_vma=False)(q, cache, positions)
