"""How a run's evicting layers share their slots: uniform, per head (AdaKV-style), or across
layers.

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

Layers: the global layers of a group (`Pooling.layer_group` consecutive ones, all of them by
default) share one pool per KV head: the group's buffers, sum of S_l slots per (row, head),
each slot recording in `LayerCache.owner` the layer whose key and value it holds. Eviction is
deferred to the end of the chunk: every layer of the group reads its own slots
(`member_view`, at most `ceilings` of them), attends and is scored as in the uniform cache,
and once all of them have run their candidates compete for the pool (`keep_best_layers`):
every layer first keeps its best floor x S_l, no layer holds more than its ceiling
(`CEILING` x S_l, less the other layers' floors), and the rest goes to the best scores of
any layer. The memory is again the uniform cache's plus one owner id per slot.

Scores are compared across heads and layers as they are: attention-based scores are
probabilities (each head's attention sums to one over its slots), keydiff's are cosine
similarities in [-1, 1], knorm's are key norms, learned retention scores are log-retentions
(TRIM-KV's gates are trained to be comparable in this way); none is re-normalised (AdaKV
compares raw attention weights the same way). Across layers that is a real assumption:
a layer whose attention is spread thin gives every slot a small mass, so h2o-like scores
favour peaked layers; the floor keeps every layer working.

Cost: per head, each head's attention and the scoring run over the pool's Hkv x S slots plus
the chunk instead of S plus the chunk (Hkv times the uniform work; the slots of other heads are
masked). Across layers, each layer attends over up to its ceiling of slots (at most `CEILING`
times the uniform work), and the selection sorts the candidates of the whole group once per
chunk.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from memjax.cache.kv_cache import EMPTY, LayerCache, ModelCache

if TYPE_CHECKING:
  from memjax.cache.policies import Policy
  from memjax.models.config import LayerSpec

Allocation = Literal["uniform", "heads", "layers"]
ALLOCATIONS = ("uniform", "heads", "layers")
DEFAULT_FLOOR = 0.2
# In a cross-layer pool no layer holds more than CEILING times its uniform share: it bounds
# the slots each layer attends over (its view) at CEILING x S_l.
CEILING = 4


def check_floor(fraction: float) -> float:
  """`fraction` if it is a valid floor (in [0, 1]), else a clear error."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"floor must be a fraction in [0, 1] of the uniform share, got "
                     f"{fraction!r}")
  return fraction


def floor_slots(capacity: int, fraction: float) -> int:
  """Slots every member of a pool (a head, a layer) keeps at least: `fraction` of its
  uniform share S, rounded down."""
  return math.floor(check_floor(fraction) * capacity)


def check_allocation(allocation: str) -> Allocation:
  """`allocation` if known, else a clear error."""
  if allocation not in ALLOCATIONS:
    raise ValueError(f"unknown allocation {allocation!r}; choose one of {list(ALLOCATIONS)}")
  return allocation


class Pooling(NamedTuple):
  """How a run's evicting global layers share slots; static (compiled into the step).

  mode: "uniform", "heads" or "layers".
  floor: the fraction of its uniform share that every member of a pool keeps at least.
  layer_group: "layers" only: global layers per pool, in model order (None: one pool for
    all of them; the last group may be smaller).
  """
  mode: Allocation = "uniform"
  floor: float = DEFAULT_FLOOR
  layer_group: int | None = None

  def checked(self) -> "Pooling":
    check_allocation(self.mode)
    check_floor(self.floor)
    if self.layer_group is not None and (not isinstance(self.layer_group, int)
                                         or self.layer_group < 1):
      raise ValueError(f"layer_group must be a positive number of layers (or None: all "
                       f"global layers in one pool), got {self.layer_group!r}")
    return self

  def groups(self, plan: Sequence["LayerSpec"]) -> tuple[tuple[int, ...], ...]:
    """The layer indices of each cross-layer pool of a model with this `plan` (none unless
    mode is "layers"; sliding-window layers keep their rings)."""
    if self.mode != "layers":
      return ()
    global_layers = [i for i, spec in enumerate(plan) if spec.window is None]
    size = self.layer_group or len(global_layers) or 1
    return tuple(tuple(global_layers[i:i + size]) for i in range(0, len(global_layers), size))


def arrange(cache: ModelCache, pooling: Pooling, policy: "Policy",
            plan: Sequence["LayerSpec"]) -> ModelCache:
  """`cache` (empty) laid out for `pooling`: as it is for "uniform" or for a policy that
  never evicts; for "heads", every global layer of `plan` (the model's `layer_plan()`) a
  head-shared pool; for "layers", the global layers' slots owned by their own layer to
  start with (a sliding-window ring stays as it is)."""
  if pooling.checked().mode == "uniform" or not policy.evicts:
    return cache
  layers = list(cache.layers)
  for i, (layer, spec) in enumerate(zip(layers, plan)):
    if spec.window is not None:
      continue
    b, h, s = layer.pos.shape
    if pooling.mode == "heads":
      layers[i] = layer._replace(head=jnp.broadcast_to(
          jnp.arange(h, dtype=jnp.int32)[:, None], (b, h, s)))
    else:
      layers[i] = layer._replace(owner=jnp.full((b, h, s), i, jnp.int32))
  return cache._replace(layers=tuple(layers))


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


def _ranks(scores_XxN: jax.Array) -> jax.Array:
  """Each entry's place in its row sorted by descending score (ties in index order)."""
  order = jnp.argsort(-scores_XxN, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1)


def _choose(scores: jax.Array, valid: jax.Array, ranks: jax.Array, floors: jax.Array,
            ceilings: jax.Array, total: int) -> tuple[jax.Array, jax.Array]:
  """The `total` entries of each row (last axis) that a pool keeps, and whether each is
  really kept: an entry is eligible if it is valid and within its member's `ceilings`
  best (`ranks`: its place among its member's entries); every eligible entry within its
  member's `floors` best comes first, then the best scores of any member. Returns (indices
  [..., total], kept [..., total]); an index that is not kept marks an empty slot."""
  eligible = valid & (ranks < ceilings)
  forced = eligible & (ranks < floors)
  # lexsort: the last key is the primary one: eligible first, then forced, then the score
  order = jnp.lexsort((-scores, ~forced, ~eligible), axis=-1)[..., :total]
  return order, jnp.take_along_axis(eligible, order, axis=-1)


def _gather_pool(flat: LayerCache, member_XxN: jax.Array, order: jax.Array, kept: jax.Array
                 ) -> tuple[LayerCache, jax.Array]:
  """The kept candidates of `flat` (candidates [..., N] of every member side by side), in
  (member, position) order with empty slots last, and the member of each slot."""
  pos = jnp.where(kept, jnp.take_along_axis(flat.pos, order, axis=-1), EMPTY)
  member = jnp.take_along_axis(member_XxN, order, axis=-1)
  last = jnp.iinfo(jnp.int32).max
  tidy = jnp.lexsort((jnp.where(pos >= 0, pos, last), jnp.where(pos >= 0, member, last)),
                     axis=-1)
  order, pos, member, kept = (jnp.take_along_axis(a, tidy, axis=-1)
                              for a in (order, pos, member, kept))
  take_rows = lambda a: jnp.take_along_axis(a, order[..., None], axis=-2)
  stats = jnp.where(kept, jnp.take_along_axis(flat.stats, order, axis=-1), 0.0)
  return LayerCache(k=take_rows(flat.k), v=take_rows(flat.v), pos=pos, stats=stats), member


def keep_best_pooled(cands: LayerCache, scores_BxHkvxN: jax.Array, capacity: int,
                     floor: int) -> LayerCache:
  """Keep the S x Hkv best valid candidates of all heads together (S = `capacity`): each
  head's `floor` best first (all of its valid ones if it has fewer), then the best scores of
  any head. The result is a pool [B, Hkv, S] with `head` set, its slots ordered by (head,
  position), empty ones last."""
  b, h, n = cands.pos.shape
  valid = cands.pos >= 0
  scores = jnp.where(valid, scores_BxHkvxN.astype(jnp.float32), -jnp.inf)
  flat = lambda a: a.reshape(b, h * n, *a.shape[3:])
  order, kept = _choose(flat(scores), flat(valid), flat(_ranks(scores)), jnp.int32(floor),
                        jnp.int32(n), h * capacity)
  heads = jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[:, None], (h, n)).reshape(h * n)
  pool, head = _gather_pool(jax.tree.map(flat, cands), jnp.broadcast_to(heads, (b, h * n)),
                            order, kept)
  shaped = lambda a: a.reshape(b, h, capacity, *a.shape[2:])
  return LayerCache(*(shaped(a) for a in pool[:4]), head=shaped(head))


def ceilings(shares: Sequence[int], floor: float) -> list[int]:
  """Most slots each layer of a cross-layer pool may hold: `CEILING` x its share S_l, and
  no more than the pool less the other layers' floors."""
  floors = [floor_slots(s, floor) for s in shares]
  total = sum(shares)
  return [min(CEILING * s, total - (sum(floors) - f)) for s, f in zip(shares, floors)]


def member_view(pool: LayerCache, layer: int, slots: int) -> LayerCache:
  """Layer `layer`'s own slots of a cross-layer `pool` (the group's buffers side by side,
  [B, Hkv, P]) as an ordinary layer cache of `slots` slots per (row, head): its slots in
  pool order, then empty ones."""
  mine = (pool.owner == layer) & (pool.pos >= 0)
  order = jnp.argsort(~mine, axis=-1, stable=True)[..., :slots]
  take = lambda a: jnp.take_along_axis(a, order, axis=-1)
  seen = take(mine)
  return LayerCache(k=jnp.take_along_axis(pool.k, order[..., None], axis=-2),
                    v=jnp.take_along_axis(pool.v, order[..., None], axis=-2),
                    pos=jnp.where(seen, take(pool.pos), EMPTY),
                    stats=jnp.where(seen, take(pool.stats), 0.0))


def joined(layers: Sequence[LayerCache]) -> LayerCache:
  """The buffers of a group of layers side by side on the slot axis (their pool)."""
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=2), *layers)


def keep_best_layers(cands: Sequence[LayerCache], scores: Sequence[jax.Array],
                     members: Sequence[int], shares: Sequence[int], floor: float
                     ) -> tuple[LayerCache, ...]:
  """The new buffers of a cross-layer pool after a chunk: `cands[i]` [B, Hkv, N_i] and
  `scores[i]` are layer `members[i]`'s candidates (its own slots and the chunk) scored by
  the policy, `shares[i]` its buffer's slots S_i. Per (row, KV head) the pool keeps
  sum(S_i) candidates: each layer's best floor x S_i first, no layer more than its
  `ceilings`, the rest by score. Buffer i gets the next S_i kept slots (of any layer: its
  `owner` says whose)."""
  floors = [floor_slots(s, floor) for s in shares]
  most = ceilings(shares, floor)
  valid = [c.pos >= 0 for c in cands]
  scores = [jnp.where(ok, s.astype(jnp.float32), -jnp.inf) for ok, s in zip(valid, scores)]
  per_entry = lambda values: jnp.concatenate(
      [jnp.full(c.pos.shape, v, jnp.int32) for c, v in zip(cands, values)], axis=-1)
  order, kept = _choose(jnp.concatenate(scores, -1), jnp.concatenate(valid, -1),
                        jnp.concatenate([_ranks(s) for s in scores], -1), per_entry(floors),
                        per_entry(most), sum(shares))
  pool, owner = _gather_pool(joined(cands), per_entry(members), order, kept)
  starts = [sum(shares[:i]) for i in range(len(shares) + 1)]
  part = lambda a, i: a[:, :, starts[i]:starts[i + 1]]
  return tuple(LayerCache(*(part(a, i) for a in pool[:4]), owner=part(owner, i))
               for i in range(len(shares)))


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


def slots_per_layer(cache: ModelCache) -> jax.Array:
  """int32 [L, B, Hkv]: valid slots holding each layer's tokens, wherever they are stored
  (in a cross-layer pool, counted by each slot's `owner`)."""
  counts = []
  for i, layer in enumerate(cache.layers):
    if layer.owner is None:
      counts.append(jnp.sum(layer.pos >= 0, axis=-1))
    else:
      counts.append(sum(jnp.sum((other.pos >= 0) & (other.owner == i), axis=-1)
                        for other in cache.layers if other.owner is not None))
  return jnp.stack(counts).astype(jnp.int32)
