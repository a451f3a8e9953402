"""How a layer's slots are shared among its KV heads: uniform, or one pool (AdaKV-style).

Uniform (the default): every KV head of a layer owns S slots, and each keeps its own top S.

Heads: the layer's S x Hkv slots form one pool that its heads share. The buffers keep the
uniform shapes [B, Hkv, S, ...] (so the memory is the uniform cache's by construction), but
slot (h', s) may hold a token of any head: `LayerCache.head` [B, Hkv, S] records whose it is.
At every chunk each head sees its own slots of the pool plus the chunk (`pool_rows`: row h
of the candidates holds the pool slots of head h, the rest masked), attends and is scored by
the policy exactly as in the uniform cache, and then the candidates of all heads compete for
the S x Hkv slots (`keep_best_pooled`): every head first keeps its `floor` best (AdaKV's
safeguard), and the remaining slots go to the best scores of any head. A policy's protected
slots score +inf, so each head keeps them as before.

Scores are compared across heads as they are: attention-based scores are probabilities
(each head's attention sums to one over its slots), keydiff's are cosine similarities in
[-1, 1], knorm's are key norms, learned retention scores are log-retentions; none is
re-normalised. (AdaKV compares raw attention weights the same way.)

Cost: each head's attention and the scoring run over the pool's Hkv x S slots plus the chunk
instead of S plus the chunk (Hkv times the uniform work; the slots of other heads are masked),
and the candidates of a layer are Hkv x (Hkv x S + C) entries while a chunk is inserted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Sequence

import jax
import jax.numpy as jnp

from memjax.cache.kv_cache import EMPTY, LayerCache, ModelCache

if TYPE_CHECKING:
  from memjax.cache.policies import Policy
  from memjax.models.config import LayerSpec

Allocation = Literal["uniform", "heads"]
ALLOCATIONS = ("uniform", "heads")
DEFAULT_HEAD_FLOOR = 0.2


def check_head_floor(fraction: float) -> float:
  """`fraction` if it is a valid head floor (in [0, 1]), else a clear error."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"head_floor must be a fraction in [0, 1] of the per-head budget, got "
                     f"{fraction!r}")
  return fraction


def floor_slots(capacity: int, fraction: float) -> int:
  """Slots every head keeps at least: `fraction` of its uniform share S, rounded down."""
  return math.floor(check_head_floor(fraction) * capacity)


def check_allocation(allocation: str) -> Allocation:
  """`allocation` if known, else a clear error."""
  if allocation not in ALLOCATIONS:
    raise ValueError(f"unknown allocation {allocation!r}; choose one of {list(ALLOCATIONS)} "
                     "(cross-layer pools are not built)")
  return allocation


def arrange(cache: ModelCache, allocation: str, policy: "Policy",
            plan: Sequence["LayerSpec"]) -> ModelCache:
  """`cache` (empty) laid out for `allocation`: as it is for "uniform" or for a policy that
  never evicts; for "heads", every global layer of `plan` (the model's `layer_plan()`) a
  head-shared pool (a sliding-window ring stays per head)."""
  if check_allocation(allocation) == "uniform" or not policy.evicts:
    return cache

  def pool(layer: LayerCache) -> LayerCache:
    b, h, s = layer.pos.shape
    return layer._replace(head=jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[:, None],
                                                (b, h, s)))

  return cache._replace(layers=tuple(layer if spec.window is not None else pool(layer)
                                     for layer, spec in zip(cache.layers, plan)))


def pool_rows(cache: LayerCache) -> LayerCache:
  """The pool as per-head rows [B, Hkv, Hkv x S]: row h holds every pool slot, those of
  other heads marked empty (pos -1, stats 0), so attention and the policy see exactly head
  h's own slots."""
  b, h, s = cache.pos.shape
  flat = lambda a: a.reshape(b, 1, h * s, *a.shape[3:])
  own = flat(cache.head) == jnp.arange(h, dtype=jnp.int32)[None, :, None]
  wide = lambda a: jnp.broadcast_to(flat(a), (b, h, h * s) + a.shape[3:])
  return LayerCache(k=wide(cache.k), v=wide(cache.v), pos=jnp.where(own, flat(cache.pos), EMPTY),
                    stats=jnp.where(own, flat(cache.stats), 0.0))


def keep_best_pooled(cands: LayerCache, scores_BxHkvxN: jax.Array, capacity: int,
                     floor: int) -> LayerCache:
  """Keep the S x Hkv best valid candidates of all heads together (S = `capacity`): each
  head's `floor` best first (all of its valid ones if it has fewer), then the best scores of
  any head. The result is a pool [B, Hkv, S] with `head` set, its slots ordered by (head,
  position), empty ones last."""
  b, h, n = cands.pos.shape
  valid = cands.pos >= 0
  scores = jnp.where(valid, scores_BxHkvxN.astype(jnp.float32), -jnp.inf)
  forced = jnp.zeros_like(valid)
  if floor > 0:
    kth = jax.lax.top_k(scores, min(floor, n))[0][..., -1:]
    forced = valid & (scores >= kth)
  flat = lambda a: a.reshape(b, h * n, *a.shape[3:])
  # lexsort: the last key is the primary one: forced first, then the higher score
  order = jnp.lexsort((-flat(scores), ~flat(forced)), axis=-1)[:, :h * capacity]
  head = order // n
  pos = jnp.take_along_axis(flat(cands.pos), order, axis=-1)
  last = jnp.iinfo(jnp.int32).max
  tidy = jnp.lexsort((jnp.where(pos >= 0, pos, last), jnp.where(pos >= 0, head, last)), axis=-1)
  order = jnp.take_along_axis(order, tidy, axis=-1)
  take = lambda a: jnp.take_along_axis(flat(a), order, axis=-1).reshape(b, h, capacity)
  take_rows = lambda a: jnp.take_along_axis(flat(a), order[..., None], axis=-2).reshape(
      b, h, capacity, a.shape[-1])
  return LayerCache(k=take_rows(cands.k), v=take_rows(cands.v), pos=take(cands.pos),
                    stats=take(cands.stats),
                    head=(order // n).astype(jnp.int32).reshape(b, h, capacity))


def slots_per_head(cache: ModelCache) -> jax.Array:
  """int32 [L, B, Hkv]: valid slots each KV head holds in every layer (for a pool, counted by
  the `head` of each slot; for a uniform layer, its own row)."""
  counts = []
  for layer in cache.layers:
    if layer.head is None:
      counts.append(jnp.sum(layer.pos >= 0, axis=-1))
    else:
      h = layer.pos.shape[1]
      mine = (layer.head[..., None] == jnp.arange(h)) & (layer.pos >= 0)[..., None]
      counts.append(jnp.sum(mine, axis=(1, 2)))
  return jnp.stack(counts).astype(jnp.int32)
