"""Per-head allocation: a layer's S x Hkv slots shared by its KV heads (memjax.cache.allocation),
against a plain numpy selection and an attention-mask oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.attention import reference
from memjax.cache import allocation, kv_cache
from memjax.cache.policies import get_policy
from memjax.generation import step
from memjax.generation.generate import generate_ids
from memjax.models import llama
from tests.helpers import tiny_model


def _numpy_pool(pos, scores, capacity, floor):
  """The kept (head, position) pairs of one batch row, chosen plainly."""
  entries = [(h, int(p), float(s)) for h in range(pos.shape[0])
             for p, s in zip(pos[h], scores[h]) if p >= 0]
  forced = set()
  for h in range(pos.shape[0]):
    mine = sorted((e for e in entries if e[0] == h), key=lambda e: -e[2])
    forced |= {(e[0], e[1]) for e in mine[:floor]}
  rest = sorted((e for e in entries if (e[0], e[1]) not in forced), key=lambda e: -e[2])
  room = pos.shape[0] * capacity - len(forced)
  return forced | {(e[0], e[1]) for e in rest[:room]}


@pytest.mark.parametrize("floor", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pool_keeps_the_top_scores_under_the_head_floor(floor, seed):
  rng = np.random.default_rng(seed)
  b, h, n, capacity = 2, 3, 9, 3
  pos = np.where(rng.random((b, h, n)) < 0.7, rng.permutation(b * h * n).reshape(b, h, n), -1)
  pos[0, 2, :] = -1  # a head with no candidate at all
  pos[1, 0, 1:] = -1  # and one with a single candidate
  scores = rng.normal(size=(b, h, n)).astype(np.float32)
  k = jnp.asarray(rng.normal(size=(b, h, n, 4)), jnp.float32)
  cands = kv_cache.LayerCache(k=k, v=k + 1, pos=jnp.asarray(pos, jnp.int32),
                              stats=jnp.asarray(scores))
  kept = allocation.keep_best_pooled(cands, jnp.asarray(scores), capacity, floor)
  assert kept.pos.shape == (b, h, capacity)
  for row in range(b):
    got_pos, got_head = np.asarray(kept.pos[row]).ravel(), np.asarray(kept.head[row]).ravel()
    got = {(int(hd), int(p)) for hd, p in zip(got_head, got_pos) if p >= 0}
    assert got == _numpy_pool(pos[row], scores[row], capacity, floor)
    assert len(got) <= h * capacity
    for head in range(h):
      mine = sum(1 for hd, _ in got if hd == head)
      assert mine >= min(floor, int((pos[row, head] >= 0).sum()))
    # every kept slot carries its own key, value and statistics
    for hd, p in got:
      j = int(np.flatnonzero(pos[row, hd] == p)[0])
      slot = np.flatnonzero((got_pos == p) & (got_head == hd))[0]
      np.testing.assert_array_equal(np.asarray(kept.k[row]).reshape(-1, 4)[slot],
                                    np.asarray(k[row, hd, j]))
      assert np.asarray(kept.stats[row]).ravel()[slot] == scores[row, hd, j]


def test_pool_rows_show_each_head_only_its_own_slots():
  b, h, s = 1, 3, 2
  pool = kv_cache.LayerCache(k=jnp.arange(b * h * s * 2, dtype=jnp.float32).reshape(b, h, s, 2),
                             v=jnp.zeros((b, h, s, 2)),
                             pos=jnp.array([[[5, 1], [2, -1], [7, 3]]], jnp.int32),
                             stats=jnp.ones((b, h, s)),
                             head=jnp.array([[[0, 2], [2, 0], [0, 0]]], jnp.int32))
  rows = allocation.pool_rows(pool)
  assert rows.pos.shape == (b, h, h * s)
  visible = [sorted(int(p) for p in np.asarray(rows.pos[0, hd]) if p >= 0) for hd in range(h)]
  assert visible == [[3, 5, 7], [], [1, 2]]
  np.testing.assert_array_equal(rows.k[0, 1], pool.k[0].reshape(h * s, 2))
  counts = allocation.slots_per_head(kv_cache.ModelCache((pool,), jnp.zeros((1,), jnp.int32)))
  np.testing.assert_array_equal(counts, [[[3, 0, 2]]])


@pytest.mark.parametrize("mode", ["heads", "layers"])
@pytest.mark.parametrize("policy", ["h2o", "tova", "keydiff", "knorm"])
def test_a_full_floor_reproduces_the_uniform_cache_token_for_token(policy, mode):
  cfg, params = tiny_model()
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (37, 22)]
  kw = dict(policy=policy, budget=10, max_new_tokens=8, prefill_chunk=8)
  uniform = generate_ids(params, cfg, prompts, **kw)
  assert generate_ids(params, cfg, prompts, allocation=mode, floor=1.0, **kw) == uniform


@pytest.mark.parametrize("mode", ["heads", "layers"])
def test_pools_with_room_for_everything_generate_like_full(mode):
  cfg, params = tiny_model()
  prompt = [np.random.default_rng(4).integers(0, cfg.vocab_size, 20).tolist()]
  full = generate_ids(params, cfg, prompt, max_new_tokens=6)
  assert generate_ids(params, cfg, prompt, policy="h2o", budget=26, allocation=mode,
                      max_new_tokens=6, prefill_chunk=8) == full


def _decode_against_masked_forward(cfg, params, pooling: allocation.Pooling, budget: int,
                                   t_len: int, seed: int):
  """Feed `t_len` random tokens one at a time through an h2o cache arranged by `pooling`,
  noting before each step which (layer, KV head) tokens the pool holds; return the cache
  and the step's log-probabilities next to a full forward under those per-layer,
  per-head masks (each query also sees itself)."""
  policy = get_policy("h2o")
  tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (1, t_len)).astype(np.int32)
  cache = allocation.arrange(kv_cache.init_cache([budget] * cfg.n_layers, 1, cfg.n_kv_heads,
                                                 cfg.head_dim), pooling, policy,
                             cfg.layer_plan())
  fn = step.jitted_chunk_step(cfg, policy, "target_logprobs", pooling)
  masks = np.zeros((cfg.n_layers, 1, cfg.n_kv_heads, t_len, t_len), bool)
  got = []
  for t in range(t_len - 1):
    for i, layer in enumerate(cache.layers):
      own_head = np.broadcast_to(np.arange(cfg.n_kv_heads)[:, None], layer.pos.shape[1:])
      heads = own_head if layer.head is None else np.asarray(layer.head[0])
      owners = np.full(layer.pos.shape[1:], i) if layer.owner is None else np.asarray(
          layer.owner[0])
      for p, hd, owner in zip(np.asarray(layer.pos[0]).ravel(), heads.ravel(), owners.ravel()):
        if p >= 0:
          masks[owner, 0, hd, t, p] = True
    masks[:, :, :, t, t] = True
    logp, cache = fn(params, cache, tokens[:, t:t + 1], np.ones((1, 1), bool),
                     tokens[:, t + 1:t + 2])
    got.append(float(logp[0, 0]))

  def mix(spec, p, h, q, k, v, positions, mask):
    out, _ = reference.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
    return out, mask

  positions = jnp.arange(t_len, dtype=jnp.int32)[None]
  x, _ = llama.run_layers(llama.per_layer(params), llama.embed(params, tokens, cfg), positions,
                          [jnp.asarray(m) for m in masks], mix, cfg)
  logp = jax.nn.log_softmax(llama.unembed(params, x, cfg), axis=-1)
  want = np.take_along_axis(np.asarray(logp)[0, :-1], tokens[0, 1:, None], axis=-1)[:, 0]
  return cache, np.asarray(got), want


def test_pooled_cache_equals_a_forward_masked_by_what_each_head_kept():
  """Query t of head h in layer l sees exactly the slots that layer's pool held for head h
  after step t-1, plus itself; the heads really take different shares."""
  cfg, params = tiny_model()
  budget = 4
  cache, got, want = _decode_against_masked_forward(cfg, params, allocation.Pooling("heads", 0.25),
                                                    budget, 20, seed=5)
  np.testing.assert_allclose(got, want, atol=2e-5)
  counts = np.asarray(allocation.slots_per_head(cache))
  assert (counts.sum(-1) <= budget * cfg.n_kv_heads).all() and (counts >= 1).all()
  assert (counts != budget).any()


def test_bad_allocations_are_clear_errors():
  cfg, params = tiny_model()
  with pytest.raises(ValueError, match="unknown allocation"):
    generate_ids(params, cfg, [[1, 2, 3]], policy="h2o", budget=8, allocation="layerz")
  with pytest.raises(ValueError, match="floor must"):
    generate_ids(params, cfg, [[1, 2, 3]], policy="h2o", budget=8, allocation="heads",
                 floor=1.5)
  with pytest.raises(ValueError, match="one device"):
    generate_ids(params, cfg, [[1, 2, 3]], policy="h2o", budget=8, allocation="heads",
                 compress_once=True)


def test_the_pool_costs_the_uniform_caches_bytes_plus_head_ids():
  cfg, _ = tiny_model()
  uniform = kv_cache.init_cache([16] * cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim)
  pooled = allocation.arrange(uniform, allocation.Pooling("heads"), get_policy("h2o"),
                              cfg.layer_plan())
  ids = cfg.n_layers * 2 * cfg.n_kv_heads * 16 * 4
  assert kv_cache.cache_bytes(pooled) == kv_cache.cache_bytes(uniform) + ids
  assert kv_cache.cache_bytes(jax.eval_shape(lambda: uniform)) == kv_cache.cache_bytes(uniform)


def test_language_model_reports_cache_bytes_by_configuration():
  from memjax.lm import LanguageModel
  cfg, params = tiny_model()
  lm = LanguageModel(cfg, params, tokenizer=None)
  slot = cfg.n_layers * cfg.n_kv_heads * (2 * cfg.head_dim * 4 + 4 + 4)  # k, v, pos, stats
  assert lm.cache_bytes("h2o", budget=16, tokens=100, batch=3) == 3 * 16 * slot
  assert lm.cache_bytes("full", tokens=100) == 256 * slot  # rounded up to 256 slots
  heads = lm.cache_bytes("h2o", budget=16, tokens=100, allocation="heads")
  assert heads == 16 * slot + 16 * cfg.n_layers * cfg.n_kv_heads * 4
  assert lm.cache_bytes("h2o", budget=16, tokens=100, allocation="layers") == heads


# ---- cross-layer pools (allocation="layers") ----

def _numpy_layer_pool(pos, scores, shares, floor):
  """The kept (layer, position) pairs of one (row, KV head) of a cross-layer pool, chosen
  plainly: each layer's valid candidates ranked by score (ties in index order), at most its
  ceiling eligible, its floor forced, the rest of the pool by score."""
  floors = [int(np.floor(floor * s)) for s in shares]
  ceilings = [min(allocation.CEILING * s, sum(shares) - (sum(floors) - f))
              for s, f in zip(shares, floors)]
  eligible, forced = [], set()
  for m, (p, s) in enumerate(zip(pos, scores)):
    ranked = sorted((i for i in range(len(p)) if p[i] >= 0), key=lambda i: -s[i])
    eligible += [(m, int(p[i]), float(s[i])) for i in ranked[:ceilings[m]]]
    forced |= {(m, int(p[i])) for i in ranked[:floors[m]]}
  rest = sorted((e for e in eligible if (e[0], e[1]) not in forced), key=lambda e: -e[2])
  return forced | {(e[0], e[1]) for e in rest[:sum(shares) - len(forced)]}


@pytest.mark.parametrize("floor", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_layer_pool_keeps_the_top_scores_under_floor_and_ceiling(floor, seed):
  rng = np.random.default_rng(seed)
  b, h, shares, members = 2, 2, [2, 4, 2], [0, 2, 3]
  cands, scores, pos_all = [], [], []
  for m, share in enumerate(shares):
    n = share * 5 + 3  # more candidates than any ceiling
    pos = np.where(rng.random((b, h, n)) < 0.8, rng.permutation(b * h * n).reshape(b, h, n), -1)
    if m == 0:
      pos[0, 1, :] = -1  # a layer with nothing to keep in one head
    s = rng.normal(size=(b, h, n)).astype(np.float32)
    if m == 1:
      s += 3.0  # a layer that would take the whole pool without its neighbours' floors
    k = rng.normal(size=(b, h, n, 4)).astype(np.float32)
    cands.append(kv_cache.LayerCache(k=jnp.asarray(k), v=jnp.asarray(k - 1),
                                     pos=jnp.asarray(pos, jnp.int32), stats=jnp.asarray(s)))
    scores.append(jnp.asarray(s))
    pos_all.append(pos)
  kept = allocation.keep_best_layers(cands, scores, members, shares, floor)
  assert [layer.pos.shape for layer in kept] == [(b, h, s) for s in shares]
  for row in range(b):
    for head in range(h):
      got = set()
      for layer in kept:
        for p, owner, k, stat in zip(np.asarray(layer.pos[row, head]),
                                     np.asarray(layer.owner[row, head]),
                                     np.asarray(layer.k[row, head]),
                                     np.asarray(layer.stats[row, head])):
          if p < 0:
            continue
          m = members.index(int(owner))
          got.add((m, int(p)))
          j = int(np.flatnonzero(pos_all[m][row, head] == p)[0])
          np.testing.assert_array_equal(k, np.asarray(cands[m].k[row, head, j]))
          assert stat == np.asarray(scores[m][row, head, j])
      want = _numpy_layer_pool([p[row, head] for p in pos_all],
                               [np.asarray(s[row, head]) for s in scores], shares, floor)
      assert got == want
      assert len(got) <= sum(shares)


@pytest.mark.parametrize("layer_group", [None, 2])
def test_layer_pool_equals_a_forward_masked_by_what_each_layer_kept(layer_group):
  """Query t of layer l and KV head h sees exactly the slots of its pool that hold layer
  l's tokens for head h after step t-1, plus itself; the layers really take different
  shares, within their floors and ceilings."""
  cfg, params = tiny_model(n_layers=4)
  budget, pooling = 3, allocation.Pooling("layers", 0.34, layer_group)
  cache, got, want = _decode_against_masked_forward(cfg, params, pooling, budget, 24, seed=8)
  np.testing.assert_allclose(got, want, atol=2e-5)
  counts = np.asarray(allocation.slots_per_layer(cache))[:, 0]  # [L, Hkv]
  groups = pooling.groups(cfg.layer_plan())
  for group in groups:
    assert (counts[list(group)].sum(0) <= budget * len(group)).all()
  most = min(allocation.CEILING * budget, budget * len(groups[0]) - (len(groups[0]) - 1))
  assert (counts >= 1).all() and (counts <= most).all()
  assert (counts != budget).any()


def test_layer_groups_skip_sliding_window_layers():
  from memjax.models.config import LayerSpec
  plan = [LayerSpec(window=4), LayerSpec(), LayerSpec(), LayerSpec(window=4), LayerSpec(),
          LayerSpec()]
  assert allocation.Pooling("layers").groups(plan) == ((1, 2, 4, 5),)
  assert allocation.Pooling("layers", layer_group=3).groups(plan) == ((1, 2, 4), (5,))
  assert allocation.Pooling("heads").groups(plan) == ()
  with pytest.raises(ValueError, match="layer_group must be a positive"):
    allocation.Pooling("layers", layer_group=0).checked()


def test_layer_pool_errors_and_bytes():
  cfg, params = tiny_model()
  with pytest.raises(ValueError, match="one device"):
    generate_ids(params, cfg, [[1, 2, 3]], policy="h2o", budget=8, allocation="layers",
                 compress_once=True)
  with pytest.raises(ValueError, match="layer_group"):
    generate_ids(params, cfg, [[1, 2, 3]], policy="h2o", budget=8, allocation="layers",
                 layer_group=-1)
  uniform = kv_cache.init_cache([16] * cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim)
  pooled = allocation.arrange(uniform, allocation.Pooling("layers"), get_policy("h2o"),
                              cfg.layer_plan())
  ids = cfg.n_layers * 2 * cfg.n_kv_heads * 16 * 4
  assert kv_cache.cache_bytes(pooled) == kv_cache.cache_bytes(uniform) + ids
