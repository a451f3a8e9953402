"""The `learned` policy: retention scores from gates, fresh stats from the gate, eviction.

(The shared matrix in tests/test_policies.py also checks that `learned` keeps exactly the
top-S slots by its score.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.cache.policies import Candidates, get_policy, heuristic_policy_names, policy_names
from memjax.eval.perplexity import budgeted_logprobs
from memjax.generation import generate
from memjax.models import llama
from memjax.attention import reference
from memjax.retention import add_gates, init_gate_params, log_beta
from tests.helpers import tiny_model

PLANTED_ID, PLANTED_POS = 5, 3


def tokens(seed, b=2, t=37, vocab=97):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


def test_learned_is_registered_and_needs_gates():
  assert "learned" in policy_names() and "learned" not in heuristic_policy_names()
  assert get_policy("learned").uses_retention_gate
  assert not any(get_policy(n).uses_retention_gate for n in heuristic_policy_names())


def test_scores_equal_log_beta_times_age():
  rng = np.random.default_rng(0)
  b, h, n = 2, 3, 12
  t = np.array([30, 17], np.int32)
  pos = np.stack([np.stack([np.sort(rng.choice(t[i], n, replace=False)) for _ in range(h)])
                  for i in range(b)]).astype(np.int32)
  pos[1, 2, -3:] = -1
  stats = -rng.exponential(0.5, size=(b, h, n)).astype(np.float32)
  c = Candidates(k=jnp.zeros((b, h, n, 4)), pos=jnp.asarray(pos), stats=jnp.asarray(stats),
                 t=jnp.asarray(t), layer=jnp.int32(0), capacity=8)
  got = np.asarray(get_policy("learned").score(c))
  for i in range(b):
    for head in range(h):
      for slot in range(n):
        if pos[i, head, slot] >= 0:
          want = stats[i, head, slot] * (t[i] - pos[i, head, slot])
          np.testing.assert_allclose(got[i, head, slot], want, rtol=1e-6)


def full_attention_log_beta(params, cfg, tokens_BxT):
  """log β [L, B, T, Hkv] of every layer when the model attends with plain full attention
  (inference: β only ranks tokens, it does not decay the attention)."""
  b, t = tokens_BxT.shape
  mask = reference.causal_mask(jnp.broadcast_to(jnp.arange(t), (b, t)))

  def mix(p, h, q, k, v, positions, state):
    out, _ = reference.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
    return out, log_beta(p["gate"], h)

  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  _, log_beta_LxBxTxHkv = llama.run_layers(params["layers"], llama.embed(params, tokens_BxT, cfg),
                                           positions, None, mix, cfg)
  return np.asarray(log_beta_LxBxTxHkv)


def test_fresh_stats_are_the_gate_log_beta():
  """Without eviction (budget > length) the outputs are those of full attention and every
  cached slot holds the log β its layer's gate gave the token."""
  cfg, params = tiny_model()
  gated = add_gates(params, init_gate_params(cfg, 16, jax.random.PRNGKey(2), bias_init=1.0,
                                             scale=0.5))
  toks = tokens(1)
  got, cache = budgeted_logprobs(gated, cfg, toks, get_policy("learned"), [40, 40], chunk=8)
  logp = jax.nn.log_softmax(llama.forward(params, toks, cfg), axis=-1)
  want = np.take_along_axis(np.asarray(logp)[:, :-1], toks[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(got, want, atol=2e-5)
  log_beta_LxBxTxHkv = full_attention_log_beta(gated, cfg, toks)
  pos_LxBxHkvxS = np.asarray(cache.groups[0].pos)
  stats_LxBxHkvxS = np.asarray(cache.groups[0].stats)
  assert np.ptp(stats_LxBxHkvxS[pos_LxBxHkvxS >= 0]) > 0.1, "the gates must vary by token"
  for layer, row, head, slot in zip(*np.nonzero(pos_LxBxHkvxS >= 0)):
    p = pos_LxBxHkvxS[layer, row, head, slot]
    np.testing.assert_allclose(stats_LxBxHkvxS[layer, row, head, slot],
                               log_beta_LxBxTxHkv[layer, row, p, head], atol=1e-5)


def planted_gates(cfg, params):
  """Layer 0 gives the token PLANTED_ID log β = 0 exactly (β = 1) and every other token
  log β ≈ −5; layer 1 gives every token log β = log_sigmoid(−5) (pure recency)."""
  h_planted = llama.rms_norm(params["embed"][PLANTED_ID], params["layers"]["attn_norm"][0],
                             cfg.norm_eps)
  detector_D = h_planted / jnp.sum(h_planted ** 2)  # h · detector = 1 for the planted token
  gates = init_gate_params(cfg, 1, jax.random.PRNGKey(0), bias_init=-5.0, scale=0.0)
  gates["w1"] = gates["w1"].at[0, :, 0].set(100.0 * detector_D)
  gates["b1"] = gates["b1"].at[0, 0].set(-80.0)  # silu(100 (h · detector − 0.8))
  gates["w2"] = gates["w2"].at[0, 0, :].set(30.0)
  return gates


def test_planted_token_is_kept_by_learned_and_evicted_by_window():
  cfg, params = tiny_model()
  gated = add_gates(params, planted_gates(cfg, params))
  toks = tokens(2)
  toks[toks == PLANTED_ID] = PLANTED_ID + 1
  toks[:, PLANTED_POS] = PLANTED_ID
  h0 = llama.rms_norm(llama.embed(params, toks, cfg), params["layers"]["attn_norm"][0],
                      cfg.norm_eps)
  layer0_log_beta = np.asarray(log_beta(jax.tree.map(lambda a: a[0], gated["layers"]["gate"]),
                                        h0))
  assert (layer0_log_beta[:, PLANTED_POS] == 0.0).all()
  others = np.delete(layer0_log_beta, PLANTED_POS, axis=1)
  np.testing.assert_allclose(others, jax.nn.log_sigmoid(-5.0), atol=1e-3)

  s, t = 8, toks.shape[1]
  _, learned = budgeted_logprobs(gated, cfg, toks, get_policy("learned"), [s, s], chunk=4)
  _, window = budgeted_logprobs(gated, cfg, toks, get_policy("window"), [s, s], chunk=4)
  pos_learned = np.asarray(learned.groups[0].pos)  # [L, B, Hkv, S]
  pos_window = np.asarray(window.groups[0].pos)
  recent = lambda n: np.broadcast_to(np.arange(t - n, t), pos_learned.shape[1:3] + (n,))
  np.testing.assert_array_equal(pos_learned[0, :, :, 0], PLANTED_POS)
  np.testing.assert_array_equal(pos_learned[0, :, :, 1:], recent(s - 1))
  np.testing.assert_array_equal(pos_learned[1], recent(s))
  np.testing.assert_array_equal(pos_window[0], recent(s))


def test_learned_without_gates_is_a_clear_error():
  cfg, params = tiny_model()
  with pytest.raises(ValueError, match="policy 'learned' needs retention gates"):
    generate.generate_ids(params, cfg, [[1, 2, 3]], policy="learned", budget=8,
                          max_new_tokens=1)
