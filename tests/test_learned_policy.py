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
from memjax.retention import add_gates, forward_gated, init_gate_params, log_beta
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
  got = np.asarray(get_policy("learned", n_sink=0).score(c))
  guarded = np.asarray(get_policy("learned", n_sink=3, n_recent=4).score(c))
  for i in range(b):
    for head in range(h):
      for slot in range(n):
        p = pos[i, head, slot]
        if p >= 0:
          want = stats[i, head, slot] * (t[i] - p)
          np.testing.assert_allclose(got[i, head, slot], want, rtol=1e-6)
          protected = p < 3 or p >= t[i] - 4
          assert (guarded[i, head, slot] == np.inf) == protected
          if not protected:
            np.testing.assert_allclose(guarded[i, head, slot], want, rtol=1e-6)
  assert get_policy("learned", n_sink=3, n_recent=4).protected_slots(8) == 7


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
  # Inference attends without decay: β only ranks tokens.
  log_beta_LxBxTxHkv = np.asarray(forward_gated(gated, toks, cfg, decay=False)[1])
  pos_LxBxHkvxS = np.asarray(cache.stacked().pos)
  stats_LxBxHkvxS = np.asarray(cache.stacked().stats)
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
  _, learned = budgeted_logprobs(gated, cfg, toks, get_policy("learned", n_sink=0), [s, s],
                                chunk=4)
  _, window = budgeted_logprobs(gated, cfg, toks, get_policy("window"), [s, s], chunk=4)
  pos_learned = np.asarray(learned.stacked().pos)  # [L, B, Hkv, S]
  pos_window = np.asarray(window.stacked().pos)
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


MARKER_ID = 7


def marker_model():
  """A tiny model whose first layer attends almost only to the token MARKER_ID.

  Every embedding shares a strong direction c and the marker's is a direction u ⟂ c;
  layer 0 maps c to one query vector and u to a key aligned with it (and to a large
  value). RoPE is made negligible (huge base) so the match does not depend on distance.
  """
  cfg, params = tiny_model(rope_theta=1e9)
  rng = np.random.default_rng(0)
  c, u = np.linalg.qr(rng.normal(size=(cfg.d_model, 2)))[0].T
  embed = 0.3 * rng.normal(size=(cfg.vocab_size, cfg.d_model)) + 4.0 * c
  embed[MARKER_ID] = 4.0 * u + 0.3 * rng.normal(size=cfg.d_model)
  a_Dh = rng.normal(size=cfg.head_dim)
  a_Dh *= 2.0 / np.linalg.norm(a_Dh)
  layers = jax.tree.map(np.array, params["layers"])
  layers["wq"][0] += np.outer(c, np.tile(a_Dh, cfg.n_heads))
  layers["wk"][0] += np.outer(u, np.tile(a_Dh, cfg.n_kv_heads))
  layers["wv"][0] += np.outer(u, np.tile(5.0 * a_Dh, cfg.n_kv_heads))
  params = jax.tree.map(jnp.asarray, {**params, "embed": embed.astype(np.float32),
                                      "layers": layers})
  return cfg, params


def marker_tokens(seed, b, t, marker_pos):
  """Random tokens without the marker, then the marker at `marker_pos` of every row."""
  toks = tokens(seed, b, t)
  toks[toks == MARKER_ID] = MARKER_ID + 1
  toks[np.arange(b), marker_pos] = MARKER_ID
  return toks


def layer0_attention(params, cfg, toks_BxT):
  """Attention probabilities [B, Hkv, G, T, T] of layer 0 under full causal attention."""
  p0 = jax.tree.map(lambda a: a[0], params["layers"])
  h = llama.rms_norm(llama.embed(params, toks_BxT, cfg), p0["attn_norm"], cfg.norm_eps)
  positions = jnp.broadcast_to(jnp.arange(toks_BxT.shape[1]), toks_BxT.shape)
  q, k, v = llama.qkv(p0, h, positions, cfg.layer_plan()[0], cfg)
  _, probs = reference.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                              reference.causal_mask(positions))
  return probs


def test_tiny_training_learns_to_keep_what_the_teacher_attends_to():
  """End to end: the TRIM-KV loss trains the gates of a tiny model whose first layer reads
  one marker token; the learned policy then keeps that token in layer 0 while `window`,
  with the same budget, has evicted it."""
  from memjax.train import (MethodConfig, TrainConfig, TrimKVConfig, init_state,
                            make_optimizer, make_train_step)
  from memjax.train.methods import trim_kv_loss

  cfg, params = marker_model()
  toks = marker_tokens(0, 4, 40, 3)
  probs_BxHkvxGxTxT = layer0_attention(params, cfg, toks)
  assert float(jnp.mean(probs_BxHkvxGxTxT[..., 10:, 3])) > 0.9, "precondition: layer 0 reads the marker"

  train_cfg = TrainConfig(steps=120, lr=3e-2, warmup_steps=5, end_lr=1e-3, method=MethodConfig(
      name="trim_kv", trim_kv=TrimKVConfig(memory_M=6, gate_hidden=8, gate_bias_init=3.0,
                                           attention="reference")))
  loss_fn = trim_kv_loss(cfg, train_cfg)
  gates = init_gate_params(cfg, 8, jax.random.PRNGKey(1), bias_init=3.0)
  optimizer, schedule = make_optimizer(train_cfg)
  state = init_state({"layers": {"gate": gates}}, optimizer, 0)
  step = make_train_step(loss_fn, optimizer, 1, schedule)
  rng = np.random.default_rng(5)
  history = []
  for i in range(train_cfg.steps):
    batch = marker_tokens(100 + i, 8, 48, rng.integers(0, 12, size=8))
    state, metrics = step(state, params, {"tokens": jnp.asarray(batch)})
    history.append({k: float(v) for k, v in metrics.items()})
  first, last = ({k: np.mean([h[k] for h in part]) for k in part[0]}
                 for part in (history[:10], history[-10:]))
  assert last["loss"] < first["loss"] and last["capacity"] < 0.5 * first["capacity"]

  gated = add_gates(params, state.trainable["layers"]["gate"])
  toks, s = marker_tokens(999, 4, 48, 3), 24
  log_beta_LxBxTxHkv = np.asarray(forward_gated(gated, jnp.asarray(toks), cfg, decay=False)[1])
  # In layer 0 the marker lasts longer than the average other token (3.6 to 6.4 times when
  # this test was written).
  half_life_BxTxHkv = np.log(0.5) / log_beta_LxBxTxHkv[0]
  assert (half_life_BxTxHkv[:, 3] > 2 * half_life_BxTxHkv[:, 4:].mean(axis=1)).all()
  _, learned = budgeted_logprobs(gated, cfg, toks, get_policy("learned", n_sink=0), [s, s],
                                chunk=4)
  _, window = budgeted_logprobs(gated, cfg, toks, get_policy("window"), [s, s], chunk=4)
  assert (np.asarray(learned.stacked().pos)[0] == 3).any(axis=-1).all()  # every row and head
  assert not (np.asarray(window.stacked().pos)[0] == 3).any()
