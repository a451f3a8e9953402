"""Fast inference paths: per-layer weights, the full cache's tail, attention over blocks,
on-device sampling and the on-device decode loop, each against a plain reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.attention import reference
from memjax.cache import allocation, kv_cache
from memjax.cache.policies import get_policy
from memjax.generation import generate, sampling, step
from memjax.generation.generate import generate_ids
from memjax.models import llama
from tests.helpers import tiny_model


def test_per_layer_params_give_the_stacked_forward():
  cfg, params = tiny_model()
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, cfg.vocab_size)
  split = llama.per_layer(params)
  assert len(split["layers"]) == cfg.n_layers and llama.per_layer(split) is split
  np.testing.assert_allclose(llama.forward(split, tokens, cfg), llama.forward(params, tokens, cfg),
                             atol=1e-5)


def test_attention_over_blocks_equals_attention_over_their_concatenation():
  keys = jax.random.split(jax.random.PRNGKey(2), 7)
  b, c, hq, hkv, d = 2, 3, 4, 2, 8
  q = jax.random.normal(keys[0], (b, c, hq, d))
  blocks = []
  for i, n in enumerate((5, 4)):
    k = jax.random.normal(keys[1 + 2 * i], (b, hkv, n, d))
    v = jax.random.normal(keys[2 + 2 * i], (b, hkv, n, d))
    blocks.append((k, v, jax.random.bernoulli(keys[5 + i], 0.6, (b, hkv, c, n))))
  joined = [jnp.concatenate(parts, axis=-2 if j < 2 else -1) for j, parts in
            enumerate(zip(*blocks))]
  want_out, want_probs = reference.attend(q, *joined)
  got_out, got_probs = reference.attend_blocks(q, blocks)
  np.testing.assert_allclose(got_out, want_out, atol=1e-5)
  np.testing.assert_allclose(jnp.concatenate(got_probs, axis=-1), want_probs, atol=1e-6)


def test_commit_writes_the_tail_after_each_rows_occupied_slots():
  cache = kv_cache.init_cache([6, 6], 2, 1, 2)
  first = cache.layers[0]._replace(pos=jnp.array([[[0, 1, -1, -1, -1, -1]],
                                                  [[0, 1, 2, 3, -1, -1]]], jnp.int32))
  cache = cache._replace(layers=(first, cache.layers[1]))
  cache = kv_cache.with_tail(cache, 2, [True, False])
  tail = cache.tail[0]._replace(pos=jnp.array([[[2, -1]], [[4, 5]]], jnp.int32),
                                k=jnp.ones((2, 1, 2, 2)))
  done = kv_cache.commit(cache._replace(tail=(tail, None)))
  assert done.tail is None
  np.testing.assert_array_equal(done.layers[0].pos[:, 0], [[0, 1, 2, -1, -1, -1],
                                                            [0, 1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(done.layers[0].k[1, 0, 4:], np.ones((2, 2)))
  np.testing.assert_array_equal(done.layers[1].pos, cache.layers[1].pos)


def _nucleus(logits, p):
  order = np.argsort(-logits)
  probs = np.exp(logits[order] - logits.max())
  probs /= probs.sum()
  before = np.cumsum(probs) - probs
  return set(order[before < p].tolist())


def test_sampler_keeps_to_top_k_and_the_nucleus():
  logits = jax.random.normal(jax.random.PRNGKey(3), (1, 50))
  keys = jax.random.split(jax.random.PRNGKey(4), 300)
  draw = lambda s: {int(sampling.sample(logits, k, s)[0]) for k in keys}
  top5 = set(np.argsort(-np.asarray(logits[0]))[:5].tolist())
  assert draw(sampling.Sampler(1.0, top_k=5)) <= top5
  nucleus = _nucleus(np.asarray(logits[0]), 0.6)
  assert 2 < len(nucleus) < 40
  got = draw(sampling.Sampler(1.0, top_p=0.6))
  assert got <= nucleus and len(got) > 1
  greedy = int(jnp.argmax(logits[0]))
  assert draw(sampling.Sampler(1.0, top_k=1)) == {greedy}
  assert int(sampling.sample(logits, keys[0], sampling.Sampler())[0]) == greedy


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(temperature=-1.0)])
def test_sampler_rejects_bad_settings(bad):
  with pytest.raises(ValueError):
    sampling.Sampler(**{"temperature": 1.0, **bad}).checked()


@pytest.mark.parametrize("policy,budget", [("full", None), ("h2o", 12), ("streaming", 10)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_device_loop_equals_the_streamed_host_loop(policy, budget, temperature):
  cfg, params = tiny_model()
  rng = np.random.default_rng(5)
  prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (17, 9)]
  eos = int(rng.integers(0, cfg.vocab_size))
  kwargs = dict(policy=policy, budget=budget, max_new_tokens=11, prefill_chunk=8,
                temperature=temperature, top_k=20, seed=7, eos_id=eos)
  on_device = generate_ids(params, cfg, prompts, **kwargs)
  steps = list(generate_ids(params, cfg, prompts, stream=True, **kwargs))
  streamed = [[s[b] for s in steps if s[b] is not None] for b in range(len(prompts))]
  assert on_device == streamed
  assert all(len(row) <= 11 and eos not in row for row in on_device)


def test_full_decode_equals_the_full_forward_argmax():
  cfg, params = tiny_model()
  prompt = np.random.default_rng(6).integers(0, cfg.vocab_size, 13).tolist()
  got = generate_ids(params, cfg, [prompt], max_new_tokens=6, prefill_chunk=4)[0]
  ids = list(prompt)
  for _ in range(6):
    ids.append(int(jnp.argmax(llama.forward(params, jnp.asarray([ids]), cfg)[0, -1])))
  assert got == ids[len(prompt):]


def test_seeded_sampling_is_reproducible_and_seed_dependent():
  cfg, params = tiny_model()
  prompt = [[1, 2, 3, 4, 5]]
  run = lambda seed: generate_ids(params, cfg, prompt, max_new_tokens=16, temperature=1.0,
                                  seed=seed)
  assert run(1) == run(1)
  assert run(1) != run(2)


def test_any_per_layer_budgets_compile_one_prefill_step_and_one_decode_loop():
  cfg, params = tiny_model(vocab_size=103)  # a model no other test uses: a fresh jit cache
  policy = get_policy("h2o")
  fn = step.jitted_chunk_step(cfg, policy, "last_logits")
  loop = generate.jitted_decode(cfg, policy, sampling.Sampler(), None, generate.bucket(8),
                                allocation.Pooling())
  budgets = generate.resolve_budgets(cfg, policy, 24, 64, "pyramid")
  assert len(set(budgets)) == cfg.n_layers  # every layer its own shape
  generate_ids(params, cfg, [list(range(40))], policy=policy, budget=24,
               budget_schedule="pyramid", max_new_tokens=8, prefill_chunk=16)
  assert fn._cache_size() == 1 and loop._cache_size() == 1
  assert kv_cache.init_cache(budgets, 1, cfg.n_kv_heads, cfg.head_dim).budgets == budgets


@pytest.mark.parametrize("filled,capacity,block", [([0, 5], 12, 4), ([12, 7], 12, 5),
                                                   ([3, 3], 8, 16)])
def test_blockwise_attention_over_filled_slots_equals_the_reference(filled, capacity, block):
  from memjax.attention import blockwise
  keys = jax.random.split(jax.random.PRNGKey(8), 6)
  b, c, hq, hkv, d = 2, 3, 4, 2, 8
  q = jax.random.normal(keys[0], (b, c, hq, d))
  k = jax.random.normal(keys[1], (b, hkv, capacity, d))
  v = jax.random.normal(keys[2], (b, hkv, capacity, d))
  pos = jnp.where(jnp.arange(capacity)[None, None] < jnp.asarray(filled)[:, None, None],
                  jnp.arange(capacity)[None, None], -1) * jnp.ones((b, hkv, 1), jnp.int32)
  k2, v2 = jax.random.normal(keys[3], (b, hkv, c, d)), jax.random.normal(keys[4], (b, hkv, c, d))
  pos2 = jnp.asarray(filled)[:, None, None] + jnp.arange(c)[None, None] * jnp.ones((b, hkv, 1),
                                                                                   jnp.int32)
  q_pos = jnp.asarray(filled)[:, None] + jnp.arange(c)[None]
  visible = lambda p: (p[:, :, None, :] >= 0) & (p[:, :, None, :] <= q_pos[:, None, :, None])
  want, _ = reference.attend_blocks(q, [(k, v, visible(pos)), (k2, v2, visible(pos2))],
                                    soft_cap=5.0)
  got = blockwise.attend_filled(q, k, v, pos, jnp.asarray(filled, jnp.int32),
                                [(k2, v2, pos2)], q_pos, block=block, soft_cap=5.0)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_new_token_replaces_the_slot_keep_best_would_drop(seed):
  rng = np.random.default_rng(seed)
  b, h, s, d = 2, 3, 6, 4
  pos = rng.permutation(60)[:b * h * (s + 1)].reshape(b, h, s + 1).astype(np.int32)
  pos[0, 1, 2] = -1  # an empty slot: it loses before any token
  scores = np.round(rng.normal(size=(b, h, s + 1)), 1).astype(np.float32)  # with ties
  scores[1, 2] = 0.5  # all equal: the last candidate (the new token) loses
  k = jnp.asarray(rng.normal(size=(b, h, s + 1, d)), jnp.float32)
  cands = kv_cache.LayerCache(k=k, v=-k, pos=jnp.asarray(pos), stats=jnp.asarray(scores))
  want = kv_cache.keep_best(cands, jnp.asarray(scores), s)
  got = kv_cache.replace_worst(cands, jnp.asarray(scores), s)
  for row in range(b):
    for head in range(h):
      order = np.argsort(np.asarray(got.pos[row, head]))
      want_order = np.argsort(np.asarray(want.pos[row, head]))
      for field in ("pos", "stats", "k", "v"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)[row, head])[order],
                                      np.asarray(getattr(want, field)[row, head])[want_order])
  np.testing.assert_array_equal(got.pos[1, 2], pos[1, 2, :s])
