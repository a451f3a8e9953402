"""NamedShardings of the trees memjax passes to jitted functions: params, train state,
batches and budgeted caches, each from its logical names and the mesh rules."""

from __future__ import annotations

from typing import Any

from jax.sharding import Mesh, NamedSharding

from memjax.cache.kv_cache import ModelCache
from memjax.sharding import logical
from memjax.sharding.rules import Rules, mesh_spec, shardings


def param_shardings(params: Any, mesh: Mesh, rules: Rules) -> Any:
  """Shardings of a params dict (or part of one), by `logical.param_axes`."""
  return shardings(logical.param_axes(params), params, mesh, rules)


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
  """Shardings of a tree holding params and optimiser state (a TrainState, abstract or not):
  parameter-shaped leaves like their parameter (so FSDP shards Adam's moments too), the
  rest replicated."""
  return shardings(logical.param_axes(state), state, mesh, rules)


def batch_sharding(batch_size: int, mesh: Mesh, rules: Rules) -> NamedSharding:
  """The sharding of every leaf [batch_size, ...] of a batch: rows split over the "batch"
  rule's axes (those that divide batch_size), other dims whole."""
  return NamedSharding(mesh, mesh_spec(logical.BATCH_AXES, (batch_size,), mesh, rules))


def cache_shardings(cache: ModelCache, mesh: Mesh, rules: Rules) -> ModelCache:
  """Shardings of a budgeted cache: batch rows and KV heads split, slots kept whole."""
  return shardings(logical.cache_axes(cache), cache, mesh, rules)
