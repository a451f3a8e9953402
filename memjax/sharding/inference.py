"""Budgeted prefill and decode compiled for a mesh: params, cache and chunk rows sharded.

The cache is split over batch rows and KV heads (its slots stay whole, so eviction, which
ranks the slots of one (row, KV head), needs no communication); parameters follow their
logical axes. Each chunk's logits come back replicated, ready for sampling on the host.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax

from memjax.cache import allocation
from memjax.cache.kv_cache import ModelCache
from memjax.cache.policies import Policy
from memjax.generation import step
from memjax.models import llama
from memjax.models.config import ModelConfig
from memjax.sharding.layout import batch_sharding, cache_shardings, param_shardings
from memjax.sharding.placement import Placement, traced_under
from memjax.sharding.rules import put, replicated


class ShardedChunkStep(NamedTuple):
  """A jitted `chunk_step(params, cache, tokens_BxC, valid_BxC[, targets_BxC]) -> (out,
  cache)` (the cache donated) and the shardings its params and cache must have (see `put`)."""
  fn: Any
  params: Any
  cache: ModelCache


def sharded_chunk_step(cfg: ModelConfig, policy: Policy, params: Any, cache: ModelCache,
                       placement: Placement,
                       output: step.Output = "last_logits") -> ShardedChunkStep:
  """`step.chunk_step` with `output` ("last_logits", or "target_logprobs", which takes the
  targets [B, C] as a fifth argument), compiled with in/out shardings on the placement's
  mesh and traced under it (Pallas attention kernels wrapped in `shard_map`, per device
  block of rows and KV heads).

  Compiled programs are shared between calls with the same model, policy, mesh, rules and
  array shapes.
  """
  return _compiled(cfg, policy, placement, _abstract(params), _abstract(cache), output)


def placed_chunk_step(cfg: ModelConfig, policy: Policy, params: Any, cache: ModelCache,
                      output: step.Output, placement: Placement = Placement(),
                      pooling: allocation.Pooling | None = None
                      ) -> tuple[Any, Any, ModelCache]:
  """(chunk step, params, cache) ready to run: one device's `step.jitted_chunk_step`
  without a mesh; on the placement's mesh `sharded_chunk_step`, with params and cache put
  on their shardings. The params come back in the `llama.per_layer`
  inference layout. A cache with shared pools (`memjax.cache.allocation`) runs on one
  device, with `pooling` (how `allocation.arrange` laid it out) compiled into its step."""
  params = llama.per_layer(params)
  if any(layer.head is not None or layer.owner is not None for layer in cache.layers):
    if placement.mesh is not None:
      raise ValueError("a cache with shared pools (allocation='heads' or 'layers') runs on "
                       "one device: leave mesh unset")
    if pooling is None:
      raise ValueError("a cache with shared pools needs the pooling it was arranged with")
    return step.jitted_chunk_step(cfg, policy, output, pooling), params, cache
  if placement.mesh is None:
    return step.jitted_chunk_step(cfg, policy, output), params, cache
  sharded = sharded_chunk_step(cfg, policy, params, cache, placement, output)
  return sharded.fn, put(params, sharded.params), put(cache, sharded.cache)


def _abstract(tree: Any) -> tuple:
  """A hashable (structure, shapes and dtypes) key of a pytree."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)


@functools.lru_cache(maxsize=32)
def _compiled(cfg: ModelConfig, policy: Policy, placement: Placement, params_key: tuple,
              cache_key: tuple, output: step.Output) -> ShardedChunkStep:
  mesh, rules = placement.mesh, placement.logical_rules
  params = jax.tree.unflatten(*params_key)
  cache = jax.tree.unflatten(*cache_key)
  params_sh = param_shardings(params, mesh, rules)
  cache_sh = cache_shardings(cache, mesh, rules)
  rows = batch_sharding(cache.t.shape[0], mesh, rules)
  fn = jax.jit(traced_under(placement, functools.partial(step.chunk_step, cfg=cfg,
                                                         policy=policy, output=output)),
               in_shardings=(params_sh, cache_sh, rows, rows) + (
                   (rows,) if output == "target_logprobs" else ()),
               out_shardings=(replicated(mesh), cache_sh), donate_argnums=(1,))
  return ShardedChunkStep(fn, params_sh, cache_sh)
