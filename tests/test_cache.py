"""Budgeted cache invariants on a tiny random model."""

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from memjax.cache import budgets as budgets_lib
from memjax.cache import allocation, kv_cache
from memjax.cache.policies import get_policy, heuristic_policy_names
from memjax.generation import generate, sampling, step
from memjax.models import llama
from memjax.eval.perplexity import budgeted_logprobs as chunked_logprobs
from tests.helpers import masked_logprobs, tiny_model

CHUNK = 8


def tokens(seed, b=2, t=37, vocab=97):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


def full_logprobs(params, cfg, toks):
  logp = jax.nn.log_softmax(llama.forward(params, toks, cfg), axis=-1)
  return np.take_along_axis(np.asarray(logp)[:, :-1], toks[:, 1:, None], axis=-1)[..., 0]


@pytest.mark.parametrize("name", heuristic_policy_names())
def test_budget_at_least_length_is_full_attention(name):
  cfg, params = tiny_model()
  toks = tokens(0)
  got, cache = chunked_logprobs(params, cfg, toks, get_policy(name), [40, 40], CHUNK)
  np.testing.assert_allclose(got, full_logprobs(params, cfg, toks), atol=2e-5)
  assert int(cache.valid_counts().min()) == toks.shape[1]


@pytest.mark.parametrize("capacity", [37, 40])
def test_full_appends_in_place_up_to_an_exact_capacity(capacity):
  cfg, params = tiny_model()
  toks = tokens(7)
  got, cache = chunked_logprobs(params, cfg, toks, get_policy("full"), [capacity] * 2, CHUNK)
  np.testing.assert_allclose(got, full_logprobs(params, cfg, toks), atol=2e-5)
  pos = np.asarray(cache.stacked().pos)
  np.testing.assert_array_equal(pos[..., :37], np.broadcast_to(np.arange(37), pos[..., :37].shape))
  assert (pos[..., 37:] == -1).all()


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(name=st.sampled_from(heuristic_policy_names()[1:]),
                  budget=st.sampled_from([9, 12, 16]),
                  schedule=st.sampled_from(["uniform", "pyramid"]), seed=st.integers(0, 99),
                  length=st.integers(1, 45))
def test_never_more_than_budget_and_clock_counts_tokens(name, budget, schedule, seed, length):
  cfg, params = tiny_model()
  small = {"snapkv": {"window": 4}, "lagkv": {"lag": 4}, "compactor": {"tile": 8},
           "non_causal_attn": {"tile": 8}}
  policy = get_policy(name, **small.get(name, {}))
  per_layer = budgets_lib.layer_budgets(budget, cfg.n_layers, schedule)
  toks = tokens(seed, t=45)
  rows = [toks[0, :length].tolist(), toks[1].tolist()]
  cache = kv_cache.init_cache(per_layer, 2, cfg.n_kv_heads, cfg.head_dim)
  fn = step.jitted_chunk_step(cfg, policy, "last_logits")
  for tok, valid in generate.chunks(rows, CHUNK):
    _, cache = fn(params, cache, tok, valid)
    counts = np.asarray(cache.valid_counts())  # [L, B, Hkv]
    for layer, cap in enumerate(per_layer):
      assert (counts[layer] <= cap).all()
  np.testing.assert_array_equal(np.asarray(cache.t), [length, 45])
  for layer, cap in enumerate(per_layer):
    want = np.minimum([[length], [45]], cap)
    np.testing.assert_array_equal(counts[layer], np.broadcast_to(want, counts[layer].shape))
  assert cache.budgets == per_layer
  assert all(g.k.shape[-2] == g.capacity for g in cache.layers)


@pytest.mark.parametrize("chunk", [1, 5, CHUNK])
def test_window_equals_sliding_mask_oracle(chunk):
  """Eviction really drops tokens: `window` with budget S equals attention masked so that a
  query in the chunk starting at c0 sees only keys in [c0 - S, itself]."""
  cfg, params = tiny_model()
  toks, s = tokens(1), 11
  got, _ = chunked_logprobs(params, cfg, toks, get_policy("window"), [s, s], chunk)
  want = masked_logprobs(params, cfg, toks, lambda i, j: j >= (i // chunk) * chunk - s)
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.abs(got - full_logprobs(params, cfg, toks)).max() > 1e-3


def test_streaming_keeps_sinks_and_equals_mask_oracle():
  cfg, params = tiny_model()
  toks, s, sinks = tokens(2), 12, 4
  policy = get_policy("streaming", n_sink=sinks)
  got, cache = chunked_logprobs(params, cfg, toks, policy, [s, s], CHUNK)
  want = masked_logprobs(params, cfg, toks,
                         lambda i, j: (j < sinks) | (j >= (i // CHUNK) * CHUNK - (s - sinks)))
  np.testing.assert_allclose(got, want, atol=2e-5)
  pos = np.asarray(cache.stacked().pos)
  np.testing.assert_array_equal(pos[..., :sinks], np.broadcast_to(np.arange(sinks), pos[..., :sinks].shape))
  np.testing.assert_array_equal(pos[..., sinks:], np.broadcast_to(np.arange(37 - (s - sinks), 37), pos[..., sinks:].shape))


def test_h2o_and_snapkv_keep_their_recent_window():
  cfg, params = tiny_model()
  toks, s = tokens(3), 12
  for policy, window in [(get_policy("h2o"), 6), (get_policy("snapkv", window=5), 5)]:
    _, cache = chunked_logprobs(params, cfg, toks, policy, [s, s], CHUNK)
    pos = np.asarray(cache.stacked().pos)
    for recent in range(37 - window, 37):
      assert ((pos == recent).sum(-1) == 1).all(), (policy.name, recent)


def test_per_head_eviction_differs_across_heads():
  cfg, params = tiny_model()
  _, cache = chunked_logprobs(params, cfg, tokens(4), get_policy("knorm"), [10, 10], CHUNK)
  pos = np.asarray(cache.stacked().pos)
  assert not all(np.array_equal(pos[:, :, 0], pos[:, :, h]) for h in range(pos.shape[2]))


def test_pyramid_budgets_fall_with_depth_and_keep_the_mean():
  b = budgets_lib.layer_budgets(100, 30, "pyramid")
  assert sum(b) == 3000 and b[0] > b[-1] and all(x >= y for x, y in zip(b, b[1:]))
  assert b[0] in (149, 150, 151) and b[-1] in (49, 50, 51)
  assert budgets_lib.layer_budgets(7, 3) == [7, 7, 7]
  with pytest.raises(ValueError, match="schedule"):
    budgets_lib.layer_budgets(7, 3, "zigzag")


def test_budget_too_small_for_protected_slots_is_a_clear_error():
  cfg, params = tiny_model()
  with pytest.raises(ValueError, match="protects 4 slots"):
    generate.generate_ids(params, cfg, [[1, 2, 3]], policy="streaming", budget=4)
  with pytest.raises(ValueError, match="needs a budget"):
    generate.generate_ids(params, cfg, [[1, 2, 3]], policy="h2o")


def test_full_refuses_prompts_longer_than_the_model():
  cfg, params = tiny_model()
  with pytest.raises(ValueError, match="maximum of 256 positions"):
    generate.generate_ids(params, cfg, [[1] * 250], policy="full", max_new_tokens=8)


def test_decode_compiles_once_across_50_steps():
  cfg, params = tiny_model(vocab_size=101)  # a model no other test uses: a fresh jit cache
  policy = get_policy("h2o")
  fn = step.jitted_chunk_step(cfg, policy, "last_logits")
  loop = generate.jitted_decode(cfg, policy, sampling.Sampler(), None, 64,
                                allocation.Pooling())  # as generate_ids
  generate.generate_ids(params, cfg, [[1, 2, 3] * 7], policy=policy, budget=16,
                        max_new_tokens=51, prefill_chunk=CHUNK)
  assert fn._cache_size() == 1 and loop._cache_size() == 1  # a prefill chunk, a decode loop
  generate.generate_ids(params, cfg, [[5, 6] * 40], policy=policy, budget=16,
                        max_new_tokens=40, prefill_chunk=CHUNK)
  assert fn._cache_size() == 1 and loop._cache_size() == 1


def test_ragged_batch_rows_match_single_rows():
  cfg, params = tiny_model()
  rows = [tokens(5, b=1, t=30)[0].tolist(), tokens(6, b=1, t=13)[0].tolist()]
  questions = [[3, 4, 5], [7]]
  kw = dict(policy="tova", budget=10, max_new_tokens=6, prefill_chunk=CHUNK)
  batched = generate.generate_ids(params, cfg, rows, questions=questions, **kw)
  for b in range(2):
    assert batched[b] == generate.generate_ids(params, cfg, [rows[b]], questions=[questions[b]], **kw)[0]


def test_oracle_keeps_marked_tokens_and_the_most_recent():
  """The oracle (without sinks) equals a full forward where each query sees its own chunk,
  the marked tokens and, of the rest, the latest that fit the budget beside them."""
  cfg, params = tiny_model()
  toks = tokens(3, b=1, t=40)
  marked = [5, 6, 7, 20]
  marks = np.isin(np.arange(40), marked).astype(np.int32)[None]
  budget = 12
  cache = kv_cache.init_cache([budget] * cfg.n_layers, 1, cfg.n_kv_heads, cfg.head_dim)
  fn = step.jitted_chunk_step(cfg, get_policy("oracle", n_sink=0), "target_logprobs")
  targets = np.concatenate([toks[:, 1:], np.zeros((1, 1), np.int32)], axis=1)
  pieces = []
  for start in range(0, 40, CHUNK):
    piece = slice(start, start + CHUNK)
    logprobs, cache = fn(params, cache, toks[:, piece], np.ones((1, CHUNK), bool),
                         targets[:, piece], marks[:, piece])
    pieces.append(np.asarray(logprobs))
  got = np.concatenate(pieces, axis=1)[:, :-1]

  def kept_before(start):
    """The oracle's cache before the chunk at `start`: marks, then the latest unmarked."""
    seen_marks = [m for m in marked if m < start]
    unmarked = [j for j in range(start) if j not in marked]
    room = max(budget - len(seen_marks), 0)
    return set(seen_marks) | set(unmarked[max(len(unmarked) - room, 0):])

  def visible(i, j):
    kept = {start: kept_before(start) for start in range(0, 40, CHUNK)}
    chunk_start = (i // CHUNK) * CHUNK
    in_cache = np.vectorize(lambda s, k: k in kept[s])(chunk_start, j)
    return (j >= chunk_start) | in_cache

  np.testing.assert_allclose(got, masked_logprobs(params, cfg, toks, visible), atol=2e-5)
  assert set(marked) <= set(np.asarray(cache.stacked().pos).ravel().tolist())
  with pytest.raises(ValueError, match="marks"):
    generate.generate_ids(params, cfg, [[1, 2, 3]], policy="oracle", budget=8)
