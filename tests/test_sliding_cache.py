"""The budgeted cache on a Gemma-3-like model: sliding-window layers keep a ring of
min(window, budget) latest tokens (never scored), the budget applies to global layers;
equal to a full forward under the matching attention masks."""

import dataclasses

import jax
import numpy as np
import pytest

from memjax.cache.policies import get_policy
from memjax.eval.perplexity import budgeted_logprobs
from memjax.generation.generate import generate_ids, resolve_budgets
from memjax.models import llama
from memjax.models.config import tiny_config
from memjax.models.families.gemma3 import pattern_kinds
from tests.helpers import masked_logprobs

WINDOW, T, CHUNK = 5, 37, 8


@pytest.fixture(scope="module")
def gemma():
  cfg = tiny_config(family="gemma3", n_layers=7, layer_kinds=pattern_kinds(7),
                    sliding_window=WINDOW, qk_norm=True, mlp_act="gelu_tanh", post_norms=True,
                    embed_scale=True, query_pre_attn_scalar=12.0, rope_theta=100000.0,
                    rope_local_theta=10000.0, attn_soft_cap=5.0)
  return cfg, llama.init_params(cfg, jax.random.PRNGKey(3), scale=0.3)


def tokens(seed):
  return np.random.default_rng(seed).integers(0, 97, size=(2, T)).astype(np.int32)


def test_sliding_layers_get_their_window_and_global_layers_the_budget(gemma):
  cfg, _ = gemma
  assert resolve_budgets(cfg, get_policy("full"), None, T) == [5] * 5 + [256, 5]
  assert resolve_budgets(cfg, get_policy("window"), 11, T) == [5] * 5 + [11, 5]
  assert resolve_budgets(cfg, get_policy("window"), 3, T) == [3] * 7


def test_full_policy_equals_the_windowed_forward(gemma):
  cfg, params = gemma
  toks = tokens(0)
  budgets = resolve_budgets(cfg, get_policy("full"), None, T)
  got, cache = budgeted_logprobs(params, cfg, toks, get_policy("full"), budgets, CHUNK)
  logp = jax.nn.log_softmax(llama.forward(params, toks, cfg), axis=-1)
  want = np.take_along_axis(np.asarray(logp)[:, :-1], toks[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(got, want, atol=2e-5)
  ring = np.asarray(cache.stacked(0, 5).pos)  # the five sliding layers: the latest 5 positions
  np.testing.assert_array_equal(np.sort(ring, axis=-1),
                                np.broadcast_to(np.arange(T - WINDOW, T), ring.shape))
  # A window as long as the sequence changes the result: the windows are really applied.
  wide = dataclasses.replace(cfg, sliding_window=T)
  assert np.abs(got - masked_logprobs(params, wide, toks, lambda i, j: i >= j)).max() > 1e-3


@pytest.mark.parametrize("budget", [11, 3])
def test_evicting_policy_equals_the_masked_forward(gemma, budget):
  """Global layers under `window` with budget S see [c0 - S, i] (c0 = the query's chunk
  start); sliding layers see their window, within the ring of min(window, S) slots."""
  cfg, params = gemma
  toks = tokens(1)
  budgets = resolve_budgets(cfg, get_policy("window"), budget, T)
  got, _ = budgeted_logprobs(params, cfg, toks, get_policy("window"), budgets, CHUNK)
  ring = min(WINDOW, budget)
  want = masked_logprobs(params, cfg, toks, lambda i, j: j >= (i // CHUNK) * CHUNK - budget,
                         sliding_fn=lambda i, j: j >= (i // CHUNK) * CHUNK - ring)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_compress_once_keeps_the_rings(gemma):
  """Compressed once after prefill with a budget that holds the whole prompt, generation
  equals `full`: the sliding layers' rings come through the compression intact."""
  cfg, params = gemma
  prompts = tokens(2)[:, :20].tolist()
  full = generate_ids(params, cfg, prompts, policy="full", max_new_tokens=6, prefill_chunk=8)
  once = generate_ids(params, cfg, prompts, policy="window", budget=26, max_new_tokens=6,
                      prefill_chunk=8, compress_once=True)
  assert once == full
