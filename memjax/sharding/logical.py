"""Logical axis names of every parameter, optimiser-state and cache dimension.

Batches are split by rows alone: every batch leaf [B, ...] has the logical spec
`BATCH_AXES`.

A logical spec is a `PartitionSpec` of logical names ("embed", "heads", ...) or None; the
rules of a `MeshConfig` turn it into a spec of mesh axes (`memjax.sharding.rules`).
Memory layers add their parameter paths to `PARAM_AXES` and their names to `LOGICAL_NAMES`.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec as P

from memjax.cache.kv_cache import LayerCache, ModelCache
from memjax.models.families import FAMILIES

LOGICAL_NAMES = ("batch", "layers", "embed", "heads", "kv_heads", "head_dim", "mlp",
                 "vocab", "norm", "slots", "gate_hidden")

def _table_axes() -> dict[str, P]:
  """Parameter path -> logical spec of every row of every family's parameter table (a
  path shared by several families has one spec)."""
  axes = {}
  for family in FAMILIES.values():
    for t in family.tensors:
      spec = P("layers", *t.axes) if t.per_layer else P(*t.axes)
      if axes.setdefault(t.path, spec) != spec:
        raise ValueError(f"families disagree on the axes of {t.path!r}: {axes[t.path]} vs {spec}")
  return axes


# Parameter path ("/" between dict keys) -> logical name of each dimension: the family
# tables' rows, and the retention gates.
PARAM_AXES: dict[str, P] = {
    **_table_axes(),
    "layers/gate/w1": P("layers", "embed", "gate_hidden"),
    "layers/gate/b1": P("layers", "gate_hidden"),
    "layers/gate/w2": P("layers", "gate_hidden", "kv_heads"),
    "layers/gate/bias": P("layers", "kv_heads"),
}

BATCH_AXES = P("batch")
_CACHE_SLOTS = P("batch", "kv_heads", "slots")
CACHE_AXES = LayerCache(k=P(*_CACHE_SLOTS, "head_dim"), v=P(*_CACHE_SLOTS, "head_dim"),
                        pos=_CACHE_SLOTS, stats=_CACHE_SLOTS)


def dict_path(key_path) -> str:
  """The "/"-joined dict keys of a pytree key path (other entries, like attributes, skipped)."""
  return "/".join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def param_axes(tree: Any) -> Any:
  """Logical specs of a tree holding params or parameter-shaped leaves, leaf by leaf.

  A leaf whose dict keys end in a parameter path of PARAM_AXES and has that parameter's
  rank gets its spec: a params dict's `["layers"]["wq"]`, Adam's `mu["layers"]["wq"]`, a
  TrainState's `trainable["embed"]`. Every other leaf (step counters, RNG keys, params
  of a loss memjax does not know) is replicated; add a path to PARAM_AXES to shard it.
  One layer's weights in the inference layout (`llama.per_layer`: `["layers"][i]["wq"]`)
  get the spec without its leading "layers" axis.
  """
  def axes(key_path, leaf):
    spec = PARAM_AXES.get(dict_path(key_path))
    if spec is None:
      return P()
    one_layer = any(isinstance(k, jax.tree_util.DictKey) and k.key == "layers"
                    and isinstance(after, jax.tree_util.SequenceKey)
                    for k, after in zip(key_path, key_path[1:]))
    if one_layer and len(spec) and spec[0] == "layers":
      spec = P(*spec[1:])
    return spec if len(spec) == len(leaf.shape) else P()

  return jax.tree_util.tree_map_with_path(axes, tree)


def cache_axes(cache: ModelCache) -> ModelCache:
  """Logical specs of a budgeted cache: per layer batch, KV heads, slots (and head dim)."""
  return ModelCache(layers=tuple(CACHE_AXES for _ in cache.layers), t=P("batch"))
