"""Logical specs -> mesh specs -> NamedShardings, and placing host arrays on a mesh."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Mapping[str, Sequence[str]]


def mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
  """The mesh-axis spec of an array of `shape` whose dims carry the names in `logical`
  (trailing dims it does not name are unnamed).

  Each dimension is split over the mesh axes its name maps to, in rule order, taking an
  axis only if the product of the axes taken so far still divides the dimension and no
  earlier dimension took it; the axes that do not fit are dropped, so the dimension is
  replicated over them (a 2-KV-head cache on a tensor axis of 4 is replicated there).
  """
  taken: set[str] = set()
  out = []
  if len(logical) > len(shape):
    raise ValueError(f"logical spec {logical} names more dimensions than shape {list(shape)}")
  for name, size in zip((*logical, *[None] * (len(shape) - len(logical))), shape):
    axes = []
    for axis in rules.get(name, ()) if name is not None else ():
      split = math.prod(mesh.shape[a] for a in axes) * mesh.shape[axis]
      if axis not in taken and size % split == 0:
        axes.append(axis)
        taken.add(axis)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*out)


def shardings(logical_tree: Any, abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for `abstract_tree` (arrays or ShapeDtypeStructs) from its logical specs."""
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, mesh_spec(spec, x.shape, mesh, rules)),
      logical_tree, abstract_tree, is_leaf=lambda x: isinstance(x, P))


def put(tree: Any, tree_shardings: Any) -> Any:
  """`tree`'s arrays laid out as `tree_shardings` say, on a mesh that may span processes.

  Every process passes the same full (global) values; each keeps only its own shards.
  """
  def place(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if isinstance(x, jax.Array) and x.is_fully_addressable and sharding.is_fully_addressable:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree, tree_shardings)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array every device holds whole (scalars, metrics)."""
  return NamedSharding(mesh, P())
