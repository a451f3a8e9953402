"""One chunk through the model with a budgeted cache: the jitted unit of prefill and decode.

A chunk of C tokens (C = 1 at decode) attends over each layer's S cached slots plus
itself; then every layer keeps its best S candidates by policy score. Rows of a batch
may hold different numbers of real tokens: padding sits at the end of a chunk
(`valid` False) and is never inserted.

A sliding-window layer (`LayerSpec.window`) is never scored: its cache is a ring of
min(window, budget) slots holding the latest tokens (`kv_cache.ring_insert`), attended
under the window mask on the XLA path. The policy and its budget apply to global layers.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, NamedTuple, Sequence

import einops
import jax
import jax.numpy as jnp

from memjax.cache import allocation, kv_cache
from memjax.cache.kv_cache import LayerCache, ModelCache
from memjax.cache.policies import Policy
from memjax.cache.policies.base import Chunk
from memjax.attention import reference
from memjax.models import llama
from memjax.models.config import LayerSpec, ModelConfig
from memjax.retention import gate
from memjax.sharding import kernels as mesh_kernels
from memjax.sharding.placement import Placement, traced_under

Output = Literal["last_logits", "target_logprobs"]
# `memjax.sharding.kernels.decode_attention` with the backend bound.
Attend = Callable[..., tuple[jax.Array, jax.Array | None]]


def _attend_slots(q, cache: LayerCache, positions_BxC, attend: Attend, with_probs: bool,
                  spec: LayerSpec):
  """Attention of the chunk's queries over slots (causal by position, empty slots masked).

  Returns the output and, if asked, the probabilities as policies read them,
  [B, Hkv, 1, C, N]: already averaged over each KV head's group of query heads.
  """
  out, slot_mass_BxHkvxCxN = attend(q, cache, positions_BxC, with_slot_mass=with_probs,
                                    soft_cap=spec.attn_soft_cap)
  return out, (slot_mass_BxHkvxCxN[:, :, None] if with_probs else None)


def _unrotate(x_BxHxNxDh: jax.Array, pos_BxHxN: jax.Array, spec: LayerSpec) -> jax.Array:
  """Keys (or queries) before the block's RoPE: rotated back by -position (RoPE is a
  rotation)."""
  b, h, n, d = x_BxHxNxDh.shape
  flat = llama.rope(x_BxHxNxDh.reshape(b * h, n, 1, d), -pos_BxHxN.reshape(b * h, n),
                    spec.rope_theta, spec.rope_scaling)
  return flat.reshape(b, h, n, d)


def _chunk_view(policy: Policy, q, h, positions_BxC, valid_BxC, spec: LayerSpec) -> Chunk:
  """The chunk as `policy.observe_chunk` reads it (queries and hidden states only if asked)."""
  q_pre = None
  if policy.needs_queries:
    q_bhcd = einops.rearrange(q, "b c h d -> b h c d")
    pos_BxHqxC = jnp.broadcast_to(positions_BxC[:, None, :], q_bhcd.shape[:3])
    q_pre = einops.rearrange(_unrotate(q_bhcd, pos_BxHqxC, spec), "b h c d -> b c h d")
  return Chunk(positions=positions_BxC, valid=valid_BxC, rope_theta=spec.rope_theta,
               q=q if policy.needs_queries else None, q_pre=q_pre,
               h=h if policy.needs_hidden else None)


def _window_attend(q, cands: LayerCache, positions_BxC, spec: LayerSpec):
  """The chunk's queries over ring ∪ chunk: causal, within the window, empty slots masked."""
  gap_BxHkvxCxN = positions_BxC[:, None, :, None] - cands.pos[:, :, None, :]
  mask = (cands.pos[:, :, None, :] >= 0) & (gap_BxHkvxCxN >= 0) & (gap_BxHkvxCxN < spec.window)
  return reference.attend(q, cands.k, cands.v, mask, spec.attn_soft_cap)[0]


def _cache_mixer(policy: Policy, valid_BxC: jax.Array, t_end_B: jax.Array,
                 attend: Attend, marks_BxC: jax.Array | None = None, *, insert: bool = True,
                 floor: float = allocation.DEFAULT_FLOOR):
  """A `llama.Mixer` that attends over cache ∪ chunk and then evicts down to the budget
  (or, for a policy that never evicts, appends the chunk in place and attends over that);
  a sliding-window block keeps a ring of its latest tokens instead. The block's RoPE
  recovers pre-RoPE keys and queries for the policies that read them. With `insert` False
  the chunk only attends and the policy observes: the cached slots stay, with their new
  statistics, and the chunk is dropped (a `compresses_once` scoring pass; a ring stays
  as it is).

  A layer of a cross-layer pool comes as (its view, layer, `Share`): it evicts nothing and
  returns (its scored candidates, layer, their scores) for `allocation.keep_best_layers`."""

  def mix(spec, p, h, q, k, v, positions_BxC, state):
    cache, layer, tail = state
    n_kv = k.shape[2]
    pos_BxHkvxC = jnp.broadcast_to(
        jnp.where(valid_BxC, positions_BxC, kv_cache.EMPTY)[:, None, :],
        (k.shape[0], n_kv, k.shape[1]))
    if spec.window is not None:
      k_bhcd = einops.rearrange(k, "b c h d -> b h c d")
      v_bhcd = einops.rearrange(v, "b c h d -> b h c d")
      cands = kv_cache.candidates_of(cache, k_bhcd, v_bhcd, pos_BxHkvxC)
      out = _window_attend(q, cands, positions_BxC, spec)
      if not insert:
        return out, (cache, layer, tail)
      return out, (kv_cache.ring_insert(cache, k_bhcd, v_bhcd, pos_BxHkvxC, t_end_B), layer,
                   tail)
    if not policy.evicts:
      fresh = (einops.rearrange(k, "b c h d -> b h c d"),
               einops.rearrange(v, "b c h d -> b h c d"), pos_BxHkvxC)
      if tail is None:  # written in place here (see ModelCache.tail for the cost)
        cache = kv_cache.append_in_order(cache, *fresh, kv_cache.filled(cache))
        return _attend_slots(q, cache, positions_BxC, attend, False, spec)[0], (cache, layer,
                                                                               tail)
      tail = kv_cache.append_in_order(tail, *fresh, kv_cache.filled(tail))
      out = attend(q, (cache, tail), positions_BxC, with_slot_mass=False,
                   soft_cap=spec.attn_soft_cap, first_filled=kv_cache.filled(cache))[0]
      return out, (cache, layer, tail)
    fresh_stats_BxHkvxC = None
    if policy.uses_retention_gate:
      log_beta_BxCxHkv = gate.log_beta(gate.layer_gate(p, f"policy {policy.name!r}"), h)
      fresh_stats_BxHkvxC = einops.rearrange(log_beta_BxCxHkv, "b c h -> b h c")
    if policy.uses_marks:
      if marks_BxC is None:
        raise ValueError(f"policy {policy.name!r} reads per-token marks; pass marks= to "
                         "generate_ids (one row of 0/1 flags per prompt token)")
      fresh_stats_BxHkvxC = jnp.broadcast_to(marks_BxC.astype(jnp.float32)[:, None, :],
                                             (k.shape[0], n_kv, k.shape[1]))
    heads_pool, layer_pool = cache.head is not None, isinstance(tail, Share)
    share = tail.slots if layer_pool else cache.capacity
    if (heads_pool or layer_pool) and not insert:
      raise ValueError("a shared pool is not scored once after prefill: use "
                       "allocation='uniform' with a policy that compresses once")
    cands = kv_cache.candidates_of(allocation.pool_rows(cache) if heads_pool else cache,
                                   einops.rearrange(k, "b c h d -> b h c d"),
                                   einops.rearrange(v, "b c h d -> b h c d"), pos_BxHkvxC,
                                   fresh_stats_BxHkvxC)
    out, probs = _attend_slots(q, cands, positions_BxC, attend, policy.needs_attention, spec)
    cands = cands._replace(stats=policy.observe(cands.stats, probs, valid_BxC))
    if not insert:
      return out, (cache._replace(stats=cands.stats[..., :cache.capacity]), layer, tail)
    k_pre = (_unrotate(cands.k, cands.pos, spec) if policy.needs_pre_rope_keys else None)
    if policy.observes_chunk:
      view = kv_cache.candidates_view(cands, policy, t_end_B, layer, share, k_pre)
      chunk = _chunk_view(policy, q, h, positions_BxC, valid_BxC, spec)
      cands = cands._replace(stats=policy.observe_chunk(view, chunk))
    if heads_pool or layer_pool:
      scores = policy.score(kv_cache.candidates_view(cands, policy, t_end_B, layer, share,
                                                     k_pre))
      if layer_pool:
        return out, (cands, layer, scores)
      kept = allocation.keep_best_pooled(cands, scores, share,
                                         allocation.floor_slots(share, floor))
      return out, (kept, layer, tail)
    return out, (kv_cache.evict(cands, policy, t_end_B, layer, cache.capacity, k_pre), layer,
                 tail)

  return mix


class Share(NamedTuple):
  """Marks a layer of a cross-layer pool in the mixer's state: `slots` is its uniform share
  S_l (its buffer's size, the capacity its policy scores against)."""
  slots: int


def _pool_states(cache: ModelCache, groups: Sequence[Sequence[int]], floor: float,
                 states: list) -> list:
  """`states` with each layer of a cross-layer pool replaced by (its view of the pool,
  layer, Share)."""
  for group in groups:
    shares = [cache.layers[i].capacity for i in group]
    pool = allocation.joined([cache.layers[i] for i in group])
    for i, most in zip(group, allocation.ceilings(shares, floor)):
      states[i] = (allocation.member_view(pool, i, most), states[i][1],
                   Share(cache.layers[i].capacity))
  return states


def forward_chunk(params: llama.Params, cache: ModelCache, tokens_BxC: jax.Array,
                  valid_BxC: jax.Array, cfg: ModelConfig, policy: Policy, *,
                  marks_BxC: jax.Array | None = None, insert: bool = True,
                  pooling: allocation.Pooling = allocation.Pooling()
                  ) -> tuple[jax.Array, ModelCache]:
  """Run a chunk through every layer, updating the cache.

  Args:
    tokens_BxC: int32 token ids; padded entries may hold any id.
    valid_BxC: bool, True for real tokens; each row's real tokens come first.
    marks_BxC: float32 per-token flags that a policy with `uses_marks` (the `oracle`)
      reads as the fresh tokens' statistics; ignored by every other policy.
    params: best in the `llama.per_layer` layout (each layer's weights and cache its own
      buffers, blocks unrolled); stacked params are sliced inside the step, which XLA
      turns into copies of every weight (correct, several times slower).
    Traced under a placement with a mesh (`memjax.sharding.placement`), Pallas attention
    runs per device block of batch rows and KV heads (`memjax.sharding.kernels`).
    pooling: how the cache's pools were arranged (`allocation.arrange`): each pool
      member's floor and, for "layers", which layers share a pool; a pool of layers evicts
      once all of them have run the chunk.
    insert: False for a scoring pass of a `compresses_once` policy: the chunk attends at
      the positions after the cached tokens and the policy observes it, but it is not
      inserted and the clock does not move.

  A policy that never evicts appends the chunk: into `cache.tail` when the cache has one
  (the layers are only read; `kv_cache.commit` writes the tail later), else in place.

  Returns:
    hidden_BxCxD: final residual stream (before the final norm).
    the updated cache (clock advanced by each row's number of real tokens).
  """
  c = tokens_BxC.shape[1]
  positions_BxC = cache.t[:, None] + jnp.arange(c, dtype=jnp.int32)
  t_end_B = cache.t + jnp.sum(valid_BxC, axis=1, dtype=jnp.int32)
  attend = functools.partial(mesh_kernels.decode_attention, backend=cfg.attention_impl)
  mix = _cache_mixer(policy, valid_BxC, t_end_B, attend, marks_BxC, insert=insert,
                     floor=pooling.floor)
  x = llama.embed(params, tokens_BxC, cfg)
  tails = cache.tail or (None,) * len(cache.layers)
  states = [(layer, jnp.int32(i), tail) for i, (layer, tail) in enumerate(zip(cache.layers,
                                                                               tails))]
  groups = pooling.groups(cfg.layer_plan()) if policy.evicts else ()
  x, states = llama.run_layers(llama.per_layer(params), x, positions_BxC,
                               _pool_states(cache, groups, pooling.floor, states), mix, cfg)
  layers = [layer for layer, _, _ in states]
  for group in groups:
    kept = allocation.keep_best_layers([layers[i] for i in group], [states[i][2] for i in group],
                                       group, [cache.layers[i].capacity for i in group],
                                       pooling.floor)
    for i, layer in zip(group, kept):
      layers[i] = layer
  tails = None if cache.tail is None else tuple(tail for _, _, tail in states)
  return x, ModelCache(tuple(layers), t_end_B if insert else cache.t, tails)


def chunk_step(params, cache, tokens_BxC, valid_BxC, targets_BxC=None, marks_BxC=None, *,
               cfg: ModelConfig, policy: Policy, output: Output,
               pooling: allocation.Pooling = allocation.Pooling()):
  """`forward_chunk` plus an output head (`marks_BxC`, `pooling` as there).

  output="last_logits": float32 logits [B, V] at each row's last real token.
  output="target_logprobs": float32 log p(targets) [B, C] at every position.
  """
  hidden_BxCxD, cache = forward_chunk(params, cache, tokens_BxC, valid_BxC, cfg, policy,
                                      marks_BxC=marks_BxC, pooling=pooling)
  if output == "last_logits":
    last_B = jnp.maximum(jnp.sum(valid_BxC, axis=1) - 1, 0)
    hidden_Bx1xD = jnp.take_along_axis(hidden_BxCxD, last_B[:, None, None], axis=1)
    return llama.unembed(params, hidden_Bx1xD, cfg)[:, 0], cache
  logprobs_BxCxV = jax.nn.log_softmax(llama.unembed(params, hidden_BxCxD, cfg), axis=-1)
  return jnp.take_along_axis(logprobs_BxCxV, targets_BxC[..., None], axis=-1)[..., 0], cache


def appending_layers(cfg: ModelConfig, policy: Policy) -> list[bool]:
  """Which layers only append under `policy` (every global layer of a policy that never
  evicts); their cache can take a tail (`kv_cache.with_tail`)."""
  return [not policy.evicts and spec.window is None for spec in cfg.layer_plan()]


@functools.lru_cache(maxsize=64)
def jitted_chunk_step(cfg: ModelConfig, policy: Policy, output: Output,
                      pooling: allocation.Pooling = allocation.Pooling()):
  """`chunk_step` compiled for one (model, policy, output, pooling) on one device (traced
  under `Placement()`, whatever placement the caller is in); the cache buffers are donated.

  jax.jit compiles once per distinct chunk length and cache shape, so a prefill with a fixed
  chunk size and a decode loop each compile once, whatever the context length. For a
  policy that never evicts, the chunk goes into a tail of C slots while the layers are only
  read, and a second compiled program writes the tail in place (`kv_cache.commit`).
  """
  step = traced_under(Placement(), functools.partial(chunk_step, cfg=cfg, policy=policy,
                                                     output=output, pooling=pooling))
  appends = appending_layers(cfg, policy)
  if not any(appends):
    return jax.jit(step, donate_argnums=(1,))

  def step_into_tail(params, cache, tokens_BxC, *rest):
    return step(params, kv_cache.with_tail(cache, tokens_BxC.shape[1], appends), tokens_BxC,
                *rest)

  step_fn = jax.jit(step_into_tail, donate_argnums=(1,))
  # the layers are donated and written in place; the tail is only read
  commit = jax.jit(lambda cache, tail: kv_cache.commit(cache._replace(tail=tail)),
                   donate_argnums=(0,))

  def run(params, cache, *rest):
    out, cache = step_fn(params, cache, *rest)
    return out, commit(cache._replace(tail=None), cache.tail)

  return run


@functools.lru_cache(maxsize=16)
def jitted_scoring_pass(cfg: ModelConfig, policy: Policy):
  """`forward_chunk` with `insert=False`, compiled: (params, cache, tokens_BxC, valid_BxC)
  -> the cache with the statistics of `policy.observe` updated; buffers donated."""
  def run(params, cache, tokens_BxC, valid_BxC):
    return forward_chunk(params, cache, tokens_BxC, valid_BxC, cfg, policy, insert=False)[1]

  return jax.jit(traced_under(Placement(), run), donate_argnums=(1,))


def compress(cache: ModelCache, policy: Policy, budgets: Sequence[int], room: int,
             plan: Sequence[LayerSpec]) -> ModelCache:
  """Keep the `budgets[l]` best slots of layer l by `policy.score`, once, followed by `room`
  empty slots for the tokens still to come (a prompt compressed once after prefill).

  The result is shaped like `kv_cache.init_cache` of budgets + room; the clock is unchanged.
  `plan` (the model's `layer_plan()`) gives each layer's RoPE, to recover pre-RoPE keys for
  a policy that scores them; a sliding-window layer keeps its ring as it is (it already
  holds no more than its window).
  """
  if len(budgets) != len(cache.layers):
    raise ValueError(f"{len(budgets)} budgets for a cache of {len(cache.layers)} layers")

  def pad(a, fill):
    return jnp.concatenate([a, jnp.full(a.shape[:2] + (room,) + a.shape[3:], fill, a.dtype)], 2)

  kept = []
  for layer, (slots, budget, spec) in enumerate(zip(cache.layers, budgets, plan)):
    if spec.window is not None:
      kept.append(slots)
      continue
    k_pre = _unrotate(slots.k, slots.pos, spec) if policy.needs_pre_rope_keys else None
    best = kv_cache.evict(slots, policy, cache.t, jnp.int32(layer), budget, k_pre)
    kept.append(LayerCache(k=pad(best.k, 0), v=pad(best.v, 0), pos=pad(best.pos, kv_cache.EMPTY),
                           stats=pad(best.stats, 0)))
  return ModelCache(tuple(kept), cache.t)
