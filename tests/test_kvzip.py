"""`kvzip` (scores by context reconstruction, applied once after prefill) on a tiny random model.

The reference score of a context token is computed the plain way: one causal forward over
the context followed by a reconstruction pass, recording every layer's attention, and taking
the largest attention (averaged over the GQA group) that a query of a pass pays the token.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.attention import reference
from memjax.cache import kv_cache
from memjax.cache.policies import get_policy
from memjax.generation import generate, step
from memjax.models import llama
from memjax.sharding.placement import Placement
from tests.helpers import tiny_model

ENCODE = lambda text: [ord(ch) % 97 for ch in text][:3]  # a toy tokenizer: <= 3 ids per text


def context_rows(seed=0, lengths=(37, 22), vocab=97):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def reference_scores(params, cfg, context, passes):
  """float [L, Hkv, len(context)]: max over passes and their queries of the group-mean
  attention each context token receives in a causal forward of context + pass."""
  best = np.zeros((cfg.n_layers, cfg.n_kv_heads, len(context)))
  for row in passes:
    tokens = jnp.asarray([context + row], jnp.int32)
    t = tokens.shape[1]

    def mix(spec, p, h, q, k, v, positions, state):
      out, probs = reference.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                                    reference.causal_mask(positions))
      return out, probs.mean(axis=2)  # [B, Hkv, T, T]

    positions = jnp.arange(t, dtype=jnp.int32)[None]
    states = jnp.zeros((cfg.n_layers, 1, cfg.n_kv_heads, t, t))
    x, probs = llama.run_layers(params, llama.embed(params, tokens, cfg), positions, states,
                                mix, cfg)
    np.testing.assert_allclose(llama.unembed(params, x, cfg), llama.forward(params, tokens, cfg),
                               atol=1e-4)  # the recording forward is the model's forward
    from_pass = np.asarray(probs)[:, 0, :, len(context):, :len(context)].max(axis=2)
    best = np.maximum(best, from_pass)
  return best


def test_reconstruction_rows_follow_the_instruction_scheme():
  policy = get_policy("kvzip", chunk_size=4, tail=2)
  enc = {"\n\nRepeat the previous context exactly.": [90],
         "\n\nRepeat the part of the previous context exactly, starting with": [91],
         "\n": [92]}.__getitem__
  context = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  assert policy.reconstruction_rows(context, enc) == [
      [90, 92, 1, 2, 3, 4], [91, 3, 4, 92, 5, 6, 7, 8], [91, 7, 8, 92, 9, 10]]


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_scores_and_kept_set_match_the_plain_reference(chunk_size):
  cfg, params = tiny_model()
  policy = get_policy("kvzip", chunk_size=chunk_size, n_sink=2)
  rows = context_rows()
  capacity = 64
  cache = kv_cache.init_cache([capacity] * cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim)
  prefill = step.jitted_chunk_step(cfg, get_policy("full"), "last_logits")
  for tokens, valid in generate.chunks(rows, 8):
    _, cache = prefill(params, cache, tokens, valid)
  passes = [policy.reconstruction_rows(r, ENCODE) for r in rows]
  longest = max(len(p) for ps in passes for p in ps)
  score = step.jitted_scoring_pass(cfg, policy)
  for i in range(max(len(ps) for ps in passes)):
    tokens, valid = next(generate.chunks([ps[i] if i < len(ps) else [] for ps in passes],
                                         longest))
    cache = score(params, cache, tokens, valid)
  np.testing.assert_array_equal(np.asarray(cache.t), [37, 22])  # passes move no clock
  stats = np.asarray(cache.stacked().stats)  # [L, B, Hkv, S]; slot i holds position i
  budget = 9
  kept = step.compress(cache, policy, [budget] * cfg.n_layers, 5, cfg.layer_plan())
  assert kept.budgets == [budget + 5] * cfg.n_layers
  kept_pos = np.asarray(kept.stacked().pos)
  for b, row in enumerate(rows):
    want = reference_scores(params, cfg, row, passes[b])
    np.testing.assert_allclose(stats[:, b, :, :len(row)], want, atol=2e-5)
    assert (stats[:, b, :, len(row):] == 0).all()
    want[..., :2] = np.inf  # sinks
    for layer in range(cfg.n_layers):
      for head in range(cfg.n_kv_heads):
        top = set(np.argsort(-want[layer, head], kind="stable")[:budget].tolist())
        assert set(kept_pos[layer, b, head, :budget].tolist()) == top
        assert (kept_pos[layer, b, head, budget:] == -1).all()


def test_budget_at_least_length_generates_like_full():
  cfg, params = tiny_model()
  rows = context_rows(1)
  questions = [[5, 6, 7], [8]]
  want = generate.generate_ids(params, cfg, rows, policy="full", questions=questions,
                               max_new_tokens=6)
  got = generate.generate_ids(params, cfg, rows, policy="kvzip", budget=48, questions=questions,
                              max_new_tokens=6, encode=ENCODE, prefill_chunk=8)
  assert got == want


def test_small_budget_changes_the_answer_and_keeps_question_and_new_tokens():
  """Under a budget the context is cut to S slots once; the question and generated tokens
  still fit (they are appended on top), so generation runs to the end."""
  cfg, params = tiny_model()
  rows = context_rows(2, lengths=(40, 40))
  full = generate.generate_ids(params, cfg, rows, policy="full", max_new_tokens=8)
  got = generate.generate_ids(params, cfg, rows, policy="kvzip", budget=6, max_new_tokens=8,
                              encode=ENCODE, prefill_chunk=8, questions=[[1, 2], [3, 4]])
  assert [len(g) for g in got] == [8, 8] and got != full


def test_needs_encode_and_one_device():
  cfg, params = tiny_model()
  with pytest.raises(ValueError, match="encode=tokenizer.encode"):
    generate.generate_ids(params, cfg, context_rows(), policy="kvzip", budget=8)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  with pytest.raises(ValueError, match="leave placement and marks unset"):
    generate.generate_ids(params, cfg, context_rows(), policy="kvzip", budget=8, encode=ENCODE,
                          placement=Placement.on(mesh))


@pytest.mark.parametrize("name", ["snapkv", "compactor", "knorm"])
def test_compress_once_keeps_the_top_scores_of_the_whole_prompt(name):
  """kvpress's protocol for any policy: the prompt is prefilled whole under the policy, the
  top S slots by its scores at the end are kept once, and the question and new tokens are
  appended; with S >= the prompt it generates like the full cache."""
  cfg, params = tiny_model()
  rows = context_rows(3)
  small = {"snapkv": {"window": 4}, "compactor": {"tile": 8}}.get(name, {})
  policy = get_policy(name, **small)
  want = generate.generate_ids(params, cfg, rows, policy="full", max_new_tokens=5)
  got = generate.generate_ids(params, cfg, rows, policy=policy, budget=48, max_new_tokens=5,
                              prefill_chunk=8, compress_once=True)
  assert got == want
  if policy.needs_pre_rope_keys:
    return
  # budget 10: the kept set is the policy's top 10 over the whole prompt, scored once
  cache = kv_cache.init_cache([64] * cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim)
  fn = step.jitted_chunk_step(cfg, policy, "last_logits")
  for tokens, valid in generate.chunks(rows, 8):
    _, cache = fn(params, cache, tokens, valid)
  layer0 = cache.layers[0]
  view = kv_cache.candidates_view(layer0, policy, cache.t, jnp.int32(0), 10)
  scores = np.where(np.asarray(layer0.pos) >= 0, np.asarray(policy.score(view)), -np.inf)
  kept = step.compress(cache, policy, [10] * cfg.n_layers, 0, cfg.layer_plan())
  kept_pos = np.asarray(kept.layers[0].pos)
  for b in range(2):
    for h in range(cfg.n_kv_heads):
      top = np.argsort(-scores[b, h], kind="stable")[:10]
      assert set(kept_pos[b, h].tolist()) == set(np.asarray(layer0.pos)[b, h, top].tolist())
