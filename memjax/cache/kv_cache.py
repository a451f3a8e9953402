"""The budgeted KV cache: fixed-capacity per-layer buffers and policy-driven eviction.

A layer with budget S owns real arrays of S slots per (batch row, KV head). Inserting a
chunk of C tokens forms S + C candidates (the cached slots plus the chunk), and after the
chunk has attended over them the layer keeps the S best by policy score. Peak memory per
layer is therefore S + C slots, whatever the context length. Kept slots are stored in
position order with empty slots (pos = -1) last.

Every layer has a `LayerCache` of its own (`ModelCache.layers`), so layers may hold
different budgets in one compiled step.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy

EMPTY = -1


class LayerCache(NamedTuple):
  """Slots of one layer (`ModelCache.stacked` gives several with a leading axis L).

  k, v: [(L,) B, Hkv, S, Dh] rotated keys and values.
  pos: int32 [(L,) B, Hkv, S] original token position of each slot, -1 when empty.
  stats: float32 [(L,) B, Hkv, S] what the policy accumulates (attention mass, ...).
  head: int32 [(L,) B, Hkv, S], the KV head whose token each slot holds, in a layer whose
    heads share one pool of slots (`memjax.cache.allocation`); None when every head owns
    its row of S slots.
  owner: int32 [(L,) B, Hkv, S], the layer whose token each slot holds, in a group of layers
    that share one pool (`memjax.cache.allocation`); None otherwise.
  """
  k: jax.Array
  v: jax.Array
  pos: jax.Array
  stats: jax.Array
  head: jax.Array | None = None
  owner: jax.Array | None = None

  @property
  def capacity(self) -> int:
    return self.pos.shape[-1]


class ModelCache(NamedTuple):
  """All layers' caches and the clock.

  layers: one `LayerCache` per layer, [B, Hkv, S_l, (Dh)], each with its own budget S_l.
  t: int32 [B] tokens seen so far by each batch row (the next token's position).
  tail: for a cache that only appends (the `full` policy, a prompt compressed once), the
    latest tokens not yet written into `layers`: per layer a small `LayerCache` filled in
    order (None for a ring layer, which writes its ring directly), or None when nothing
    is pending. Attention reads `layers` in place and the tail beside it; `commit` writes
    the tail in a program of its own. (XLA:CPU copies a buffer that one program both
    reads and updates in place: 100 ms a token at 4k context for SmolLM2.) `t` counts
    the tail's tokens.
  """
  layers: tuple[LayerCache, ...]
  t: jax.Array
  tail: tuple[LayerCache | None, ...] | None = None

  @property
  def budgets(self) -> list[int]:
    """Per-layer budget S, layer by layer."""
    return [layer.capacity for layer in self.layers]

  def valid_counts(self) -> jax.Array:
    """int32 [L, B, Hkv]: occupied slots of every layer, batch row and KV head."""
    return jnp.stack([jnp.sum(layer.pos >= 0, axis=-1) for layer in self.layers])

  def stacked(self, start: int = 0, stop: int | None = None) -> LayerCache:
    """Layers [start, stop) (default all) stacked on a leading axis L, for inspection;
    they must share one budget."""
    layers = self.layers[start:stop]
    if len({layer.capacity for layer in layers}) > 1:
      raise ValueError(f"layers {start}..{stop} have different budgets "
                       f"{[layer.capacity for layer in layers]}; stack a range that shares one")
    return jax.tree.map(lambda *a: jnp.stack(a), *layers)


def cache_bytes(cache: ModelCache) -> int:
  """Bytes of every layer's buffers (keys, values, positions, statistics, head or owner
  ids), also
  of a cache given by `jax.eval_shape`; a pending tail is not counted."""
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(cache.layers))


def empty_layer(budget: int, batch: int, n_kv_heads: int, head_dim: int,
                dtype=jnp.float32) -> LayerCache:
  """One layer's empty slots: [B, Hkv, S, (Dh)]."""
  shape = (batch, n_kv_heads, budget)
  return LayerCache(k=jnp.zeros(shape + (head_dim,), dtype),
                    v=jnp.zeros(shape + (head_dim,), dtype),
                    pos=jnp.full(shape, EMPTY, jnp.int32), stats=jnp.zeros(shape, jnp.float32))


def init_cache(budgets: Sequence[int], batch: int, n_kv_heads: int, head_dim: int,
               dtype=jnp.float32) -> ModelCache:
  """An empty cache with `budgets[l]` slots in layer l (a smaller budget allocates less)."""
  return ModelCache(tuple(empty_layer(s, batch, n_kv_heads, head_dim, dtype) for s in budgets),
                    jnp.zeros((batch,), jnp.int32))


def filled(cache: LayerCache) -> jax.Array:
  """int32 [B]: occupied slots of each row (in its first KV head) of an in-order cache."""
  return jnp.sum(cache.pos[:, 0] >= 0, axis=-1, dtype=jnp.int32)


def with_tail(cache: ModelCache, slots: int, appends: Sequence[bool]) -> ModelCache:
  """`cache` with an empty tail of `slots` slots in every layer where `appends[l]`."""
  b, h = cache.t.shape[0], cache.layers[0].pos.shape[1]
  tail = tuple(empty_layer(slots, b, h, layer.k.shape[-1], layer.k.dtype) if a else None
               for layer, a in zip(cache.layers, appends))
  return cache._replace(tail=tail)


def commit(cache: ModelCache) -> ModelCache:
  """Write every layer's tail after its occupied slots (`append_in_order`); no tail left."""
  if cache.tail is None:
    return cache
  layers = tuple(layer if tail is None else
                 append_in_order(layer, tail.k, tail.v, tail.pos, filled(layer))
                 for layer, tail in zip(cache.layers, cache.tail))
  return ModelCache(layers, cache.t)


def candidates_of(cache: LayerCache, k_BxHkvxCxDh: jax.Array, v_BxHkvxCxDh: jax.Array,
                  pos_BxHkvxC: jax.Array, stats_BxHkvxC: jax.Array | None = None) -> LayerCache:
  """The S + C candidates: cached slots followed by the chunk (fresh stats zero unless given)."""
  if stats_BxHkvxC is None:
    stats_BxHkvxC = jnp.zeros(pos_BxHkvxC.shape, jnp.float32)
  return LayerCache(
      k=jnp.concatenate([cache.k, k_BxHkvxCxDh.astype(cache.k.dtype)], axis=2),
      v=jnp.concatenate([cache.v, v_BxHkvxCxDh.astype(cache.v.dtype)], axis=2),
      pos=jnp.concatenate([cache.pos, pos_BxHkvxC], axis=2),
      stats=jnp.concatenate([cache.stats, stats_BxHkvxC.astype(jnp.float32)], axis=2))


def append_in_order(cache: LayerCache, k_BxHkvxCxDh: jax.Array, v_BxHkvxCxDh: jax.Array,
                    pos_BxHkvxC: jax.Array, filled_B: jax.Array) -> LayerCache:
  """Write a chunk into slots [n, n + C) after the n = `filled_B` occupied slots of each row
  (the same in every KV head), for a cache that evicts nothing more: the `full` policy's,
  where slot i holds position i and n = t, or a prompt compressed once, whose kept slots come
  first. Inserting needs no scoring, sort or gather. The capacity must cover every real
  token; chunk padding that falls past the end is dropped.
  """
  slots_BxC = filled_B[:, None] + jnp.arange(pos_BxHkvxC.shape[-1], dtype=jnp.int32)

  def put(buf, new):
    return jax.vmap(lambda b, n, s: b.at[:, s].set(n.astype(b.dtype), mode="drop"))(
        buf, new, slots_BxC)

  return LayerCache(k=put(cache.k, k_BxHkvxCxDh), v=put(cache.v, v_BxHkvxCxDh),
                    pos=put(cache.pos, pos_BxHkvxC),
                    stats=put(cache.stats, jnp.zeros(pos_BxHkvxC.shape, jnp.float32)))


def ring_insert(cache: LayerCache, k_BxHkvxCxDh: jax.Array, v_BxHkvxCxDh: jax.Array,
                pos_BxHkvxC: jax.Array, t_end_B: jax.Array) -> LayerCache:
  """Write a chunk into a ring of S slots that keeps the latest S tokens (sliding-window
  layers): position p goes to slot p mod S. Chunk tokens older than t_end - S, and
  padding (pos = -1), are not written, so no slot is written twice."""
  capacity = cache.capacity
  keep = (pos_BxHkvxC >= 0) & (pos_BxHkvxC >= t_end_B[:, None, None] - capacity)
  slots_BxHkvxC = jnp.where(keep, pos_BxHkvxC % capacity, capacity)

  def put(buf, new):
    put_row = lambda b, n, s: b.at[s].set(n.astype(b.dtype), mode="drop")
    return jax.vmap(jax.vmap(put_row))(buf, new, slots_BxHkvxC)

  return LayerCache(k=put(cache.k, k_BxHkvxCxDh), v=put(cache.v, v_BxHkvxCxDh),
                    pos=put(cache.pos, pos_BxHkvxC),
                    stats=put(cache.stats, jnp.zeros(pos_BxHkvxC.shape, jnp.float32)))


def keep_best(cands: LayerCache, scores_BxHkvxN: jax.Array, capacity: int) -> LayerCache:
  """Keep the `capacity` highest-scoring valid candidates per (batch row, KV head).

  Empty candidates (pos = -1) never win over valid ones. The kept slots are re-ordered by
  position, empty ones last.
  """
  scores = jnp.where(cands.pos >= 0, scores_BxHkvxN.astype(jnp.float32), -jnp.inf)
  _, idx_BxHkvxS = jax.lax.top_k(scores, capacity)
  pos_kept = jnp.take_along_axis(cands.pos, idx_BxHkvxS, axis=-1)
  order = jnp.argsort(jnp.where(pos_kept >= 0, pos_kept, jnp.iinfo(jnp.int32).max), axis=-1)
  idx_BxHkvxS = jnp.take_along_axis(idx_BxHkvxS, order, axis=-1)
  take = lambda a: jnp.take_along_axis(a, idx_BxHkvxS, axis=-1)
  take_rows = lambda a: jnp.take_along_axis(a, idx_BxHkvxS[..., None], axis=-2)
  return LayerCache(k=take_rows(cands.k), v=take_rows(cands.v), pos=take(cands.pos),
                    stats=take(cands.stats))


def candidates_view(cands: LayerCache, policy: Policy, t_end_B: jax.Array, layer: jax.Array,
                    capacity: int, k_pre: jax.Array | None = None) -> Candidates:
  """What `policy` sees of the candidates: values and pre-RoPE keys only if it reads them.

  k_pre: [B, Hkv, N, Dh] keys before RoPE, required by a policy with `needs_pre_rope_keys`.
  """
  if policy.needs_pre_rope_keys and k_pre is None:
    raise ValueError(f"policy {policy.name!r} reads pre-RoPE keys; pass k_pre to evict")
  return Candidates(k=cands.k, pos=cands.pos, stats=cands.stats, t=t_end_B, layer=layer,
                    capacity=capacity, v=cands.v if policy.needs_values else None,
                    k_pre=k_pre if policy.needs_pre_rope_keys else None)


def replace_worst(cands: LayerCache, scores_BxHkvxN: jax.Array, capacity: int) -> LayerCache:
  """`keep_best` of S + 1 candidates (the cache and one new token): the same kept set, but
  the new token is written into the slot of the candidate that loses (nothing changes when
  the new token itself loses) instead of gathering and re-sorting every slot. The loser is
  the one `keep_best` drops: the lowest score, the last such candidate on ties (top-k keeps
  equal scores in index order)."""
  n = cands.pos.shape[-1]
  scores = jnp.where(cands.pos >= 0, scores_BxHkvxN.astype(jnp.float32), -jnp.inf)
  drop_BxHkv = (n - 1) - jnp.argmin(scores[..., ::-1], axis=-1)
  into_BxHkvxS = jnp.arange(capacity) == drop_BxHkv[..., None]

  def keep(a):
    into = into_BxHkvxS.reshape(into_BxHkvxS.shape + (1,) * (a.ndim - 3))
    return jnp.where(into, a[:, :, capacity:capacity + 1], a[:, :, :capacity])

  return LayerCache(k=keep(cands.k), v=keep(cands.v), pos=keep(cands.pos),
                    stats=keep(cands.stats))


def evict(cands: LayerCache, policy: Policy, t_end_B: jax.Array, layer: jax.Array,
          capacity: int, k_pre: jax.Array | None = None) -> LayerCache:
  """Score the candidates with `policy` and keep the best `capacity` of them
  (`k_pre` as in `candidates_view`); one new token replaces the slot it evicts."""
  view = candidates_view(cands, policy, t_end_B, layer, capacity, k_pre)
  if cands.pos.shape[-1] == capacity + 1:
    return replace_worst(cands, policy.score(view), capacity)
  return keep_best(cands, policy.score(view), capacity)
