"""A value table sharded by columns over a `mem` mesh axis, read with shard_map.

With m devices on the axis, device d holds values[:, d·V/m:(d+1)·V/m] and the lookups of
rows d·M/m:(d+1)·M/m. Each device all-gathers every row's slots and weights, gather-sums
its own column slice for all rows ([M, V/m]), and an all-to-all sends each row block back
to its owner, which ends with full-width rows ([M/m, V]). No device ever holds the whole
table, and the traffic is the lookups plus M·V outputs, not the table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from memjax.memory import product_keys
from memjax.memory.pkm_layer import Bag


def sharded_bag(mesh: Mesh, max_elems: int, axis: str = "mem") -> Bag:
  """A `Bag` (values [N, V], slots [M, K], weights [M, K]) -> [M, V] running on `mesh`.

  V must be a multiple of the axis size; M is padded to one. The table should already be
  sharded as P(None, axis) (otherwise XLA reshards it on every call).

  Raises:
    ValueError: `axis` is not a mesh axis.
  """
  if axis not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {axis!r} axis for the value table")
  m = mesh.shape[axis]

  def local(values_NxVl, idx_MlxK, w_MlxK):
    idx_MxK = jax.lax.all_gather(idx_MlxK, axis, tiled=True)
    w_MxK = jax.lax.all_gather(w_MlxK, axis, tiled=True)
    part_MxVl = product_keys.weighted_bag(values_NxVl, idx_MxK, w_MxK, max_elems)
    return jax.lax.all_to_all(part_MxVl, axis, split_axis=0, concat_axis=1, tiled=True)

  run = jax.shard_map(local, mesh=mesh, in_specs=(P(None, axis), P(axis, None), P(axis, None)),
                      out_specs=P(axis, None))

  def bag(values_NxV: jax.Array, idx_MxK: jax.Array, w_MxK: jax.Array) -> jax.Array:
    if values_NxV.shape[1] % m:
      raise ValueError(f"value width {values_NxV.shape[1]} is not a multiple of the {m} "
                       f"devices on mesh axis {axis!r}")
    rows = idx_MxK.shape[0]
    pad = -rows % m
    pad_rows = lambda x: jnp.pad(x, ((0, pad), (0, 0)))
    return run(values_NxV, pad_rows(idx_MxK), pad_rows(w_MxK))[:rows]

  return bag
