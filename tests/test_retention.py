"""TRIM-KV pieces against brute-force numpy: decayed attention, capacity sums, gated model, loss.

The numpy oracles loop over rows, heads and positions on purpose: they follow the
definitions in the papers, not the vectorised code.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.models import llama
from memjax.retention import (add_gates, capacity_loss, capacity_sums, decayed_attention,
                              forward_gated, init_gate_params, split_gates, trimkv_loss)
from memjax.retention.losses import forward_kl
from tests.helpers import tiny_model


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def random_log_beta(rng, shape):
  """Mostly mild decay, some exactly 0 (β = 1) and some very strong (β ≈ e^-30)."""
  log_beta = -rng.exponential(0.3, size=shape)
  log_beta[rng.random(shape) < 0.1] = 0.0
  log_beta[rng.random(shape) < 0.05] = -30.0
  return log_beta.astype(np.float32)


def attention_inputs(seed, b, t, hq, hkv, dh=8, segmented=False):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, hq, dh)).astype(np.float32)
  k = rng.normal(size=(b, t, hkv, dh)).astype(np.float32)
  v = rng.normal(size=(b, t, hkv, dh)).astype(np.float32)
  log_beta = random_log_beta(rng, (b, t, hkv))
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  segments = np.zeros((b, t), np.int32)
  if segmented:  # packed rows: positions restart at each segment boundary
    for row in range(b):
      for start in sorted(rng.choice(np.arange(1, t), 2, replace=False)):
        segments[row, start:] += 1
        positions[row, start:] = np.arange(t - start)
  return q, k, v, log_beta, positions, segments


def np_decayed_attention(q, k, v, log_beta, positions, segments):
  b_, t_, hq, dh = q.shape
  group = hq // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for b in range(b_):
    for h in range(hq):
      kv = h // group
      for i in range(t_):
        keys = [j for j in range(t_)
                if positions[b, j] <= positions[b, i] and segments[b, j] == segments[b, i]]
        logits = np.array([
            np.dot(q[b, i, h], k[b, j, kv]) / np.sqrt(dh)
            + log_beta[b, j, kv] * (positions[b, i] - positions[b, j]) for j in keys])
        p = np.exp(logits - logits.max())
        out[b, i, h] = sum(pj * v[b, j, kv] for pj, j in zip(p / p.sum(), keys))
  return out


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (6, 1)])
@pytest.mark.parametrize("t,block,segmented", [(13, 8, False), (37, 8, True), (13, 16, True)])
def test_decayed_attention_matches_numpy(impl, hq, hkv, t, block, segmented):
  q, k, v, log_beta, positions, segments = attention_inputs(0, 2, t, hq, hkv, segmented=segmented)
  got = decayed_attention(q, k, v, log_beta, positions,
                          segment_ids=segments if segmented else None, impl=impl, block=block)
  assert got.shape == q.shape
  assert rel_err(got, np_decayed_attention(q, k, v, log_beta, positions, segments)) < 1e-5


def test_decay_bias_changes_the_output():
  """Given strong decay, the output differs from plain causal attention (the bias is used)."""
  q, k, v, log_beta, positions, _ = attention_inputs(1, 1, 20, 4, 2)
  plain = decayed_attention(q, k, v, np.zeros_like(log_beta), positions, impl="blockwise", block=8)
  decayed = decayed_attention(q, k, v, log_beta, positions, impl="blockwise", block=8)
  assert rel_err(decayed, plain) > 1e-2


@pytest.mark.parametrize("remat", [False, True])
def test_blockwise_gradients_equal_reference_gradients(remat):
  q, k, v, log_beta, positions, segments = attention_inputs(2, 2, 29, 4, 2, segmented=True)
  cotangent = np.random.default_rng(3).normal(size=q.shape).astype(np.float32)

  def grads(impl):
    def loss(q, k, v, log_beta):
      out = decayed_attention(q, k, v, log_beta, positions, segment_ids=segments, impl=impl,
                              block=8, remat=remat)
      return jnp.sum(out * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, log_beta)

  for name, got, want in zip("q k v log_beta".split(), grads("blockwise"), grads("reference")):
    assert np.isfinite(np.asarray(got)).all(), name
    assert rel_err(got, want) < 1e-5, name


def np_capacity_sums(log_beta_xTxH):
  *lead, t, h = log_beta_xTxH.shape
  flat = log_beta_xTxH.reshape(-1, t, h).astype(np.float64)
  out = np.zeros(flat.shape)
  for n in range(flat.shape[0]):
    for head in range(h):
      for i in range(t):
        out[n, i, head] = sum(np.exp(flat[n, j, head]) ** (i - j) for j in range(i + 1))
  return out.reshape(log_beta_xTxH.shape)


@pytest.mark.parametrize("t,block", [(23, 8), (16, 8), (5, 16)])
def test_capacity_sums_match_numpy(t, block):
  log_beta = random_log_beta(np.random.default_rng(4), (2, 3, t, 2))  # [L, B, T, Hkv]
  got = capacity_sums(jnp.asarray(log_beta), block)
  assert got.shape == log_beta.shape
  np.testing.assert_allclose(got, np_capacity_sums(log_beta), rtol=1e-5)


def test_capacity_loss_matches_numpy_and_its_gradient_is_finite():
  log_beta = random_log_beta(np.random.default_rng(5), (2, 1, 30, 2)) * 0.1
  memory_m = 6
  sums = np_capacity_sums(log_beta)
  terms = [max(sums[l, b, t, h] - memory_m, 0) / max(t - memory_m, 1)
           for l in range(2) for b in range(1) for t in range(30) for h in range(2)
           if sums[l, b, t, h] > memory_m]
  assert terms, "the test needs some steps above the budget"
  got = capacity_loss(jnp.asarray(log_beta), memory_m, block=8)
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
  grad = jax.grad(capacity_loss)(jnp.asarray(log_beta), memory_m, 8)
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0
  assert float(capacity_loss(jnp.full((1, 1, 30, 2), -50.0), memory_m, block=8)) == 0.0


def tokens(seed, b=2, t=33, vocab=97):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


def gated_tiny_model(bias_init=12.0):
  cfg, params = tiny_model()
  return cfg, params, init_gate_params(cfg, 16, jax.random.PRNGKey(1), bias_init=bias_init)


def test_gate_params_live_in_the_layers_and_split_back():
  cfg, params, gates = gated_tiny_model()
  gated = add_gates(params, gates)
  assert {k: v.shape for k, v in gated["layers"]["gate"].items()} == {
      "w1": (2, 32, 16), "b1": (2, 16), "w2": (2, 16, 2), "bias": (2, 2)}
  got_gates, got_params = split_gates(gated)
  assert got_gates is gates and "gate" not in got_params["layers"]
  assert "gate" not in params["layers"], "add_gates does not modify its input"


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_initial_gates_leave_the_model_unchanged(impl):
  cfg, params, gates = gated_tiny_model()
  toks = tokens(0)
  teacher = llama.forward(params, toks, cfg)
  logits, log_beta = forward_gated(add_gates(params, gates), toks, cfg, impl=impl, block=8)
  assert log_beta.shape == (cfg.n_layers, 2, 33, cfg.n_kv_heads)
  assert float(forward_kl(teacher, logits)) < 1e-4
  strong = gated_tiny_model(bias_init=1.0)[2]
  decayed, _ = forward_gated(add_gates(params, strong), toks, cfg, impl=impl, block=8)
  assert float(forward_kl(teacher, decayed)) > 1e-3, "a small gate bias must change the model"


def test_blockwise_and_reference_gated_models_agree():
  cfg, params, gates = gated_tiny_model(bias_init=2.0)
  toks = tokens(1)
  ref_logits, ref_beta = forward_gated(add_gates(params, gates), toks, cfg, impl="reference")
  blk_logits, blk_beta = forward_gated(add_gates(params, gates), toks, cfg, impl="blockwise",
                                       block=8, remat=True)
  assert rel_err(blk_logits, ref_logits) < 1e-5 and rel_err(blk_beta, ref_beta) < 1e-6


def test_loss_gradients_reach_only_the_gates():
  cfg, params, gates = gated_tiny_model(bias_init=3.0)
  toks = tokens(2)
  loss_fn = functools.partial(trimkv_loss, tokens_BxT=toks, cfg=cfg, memory_M=8, block=8)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
  (loss, metrics), (gate_grads, frozen_grads) = grad_fn(gates, params)
  for name, g in gate_grads.items():
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g).max() > 0, name
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(frozen_grads))
  np.testing.assert_allclose(loss, (metrics["ce"] + metrics["kl"]) / 2 + metrics["capacity"],
                             rtol=1e-6)
  assert float(metrics["kl"]) > 0 and float(metrics["capacity"]) > 0
  frozen_outside = lambda g, p: loss_fn(g, jax.lax.stop_gradient(p))[0]
  np.testing.assert_allclose(jax.jit(frozen_outside)(gates, params), loss, rtol=1e-6)


def test_loss_weights_and_given_teacher_logits():
  cfg, params, gates = gated_tiny_model(bias_init=3.0)
  toks = tokens(3)
  loss_fn = jax.jit(functools.partial(trimkv_loss, cfg=cfg, memory_M=8, impl="reference"),
                    static_argnames="weights")
  loss, metrics = loss_fn(gates, params, toks)
  given, _ = loss_fn(gates, params, toks, teacher_logits=llama.forward(params, toks, cfg))
  np.testing.assert_allclose(given, loss, rtol=1e-6)
  for weights, want in [((0, 1, 0), metrics["kl"]),
                        ((1, 0, 2), metrics["ce"] + 2 * metrics["capacity"])]:
    np.testing.assert_allclose(loss_fn(gates, params, toks, weights=weights)[0], want, rtol=1e-6)


def test_capacity_loss_with_a_kept_fraction_matches_numpy():
  """memory_ratio r: the budget at step t is max(M, r (t + 1)), the excess divided by t − M_t."""
  log_beta = random_log_beta(np.random.default_rng(6), (1, 2, 40, 2)) * 0.05
  memory_m, ratio = 4, 0.25
  sums = np_capacity_sums(log_beta)
  budget = lambda t: max(memory_m, ratio * (t + 1))
  terms = [max(sums[l, b, t, h] - budget(t), 0) / max(t - budget(t), 1)
           for l in range(1) for b in range(2) for t in range(40) for h in range(2)
           if sums[l, b, t, h] > budget(t)]
  assert terms and any(budget(t) > memory_m for t in range(40) if t > 20)
  got = capacity_loss(jnp.asarray(log_beta), memory_m, block=8, memory_ratio=ratio)
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
  assert float(got) != float(capacity_loss(jnp.asarray(log_beta), memory_m, block=8))


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_answer_weighted_loss_adds_the_answer_span_terms():
  """loss = D(all) + w · D(answer) + capacity, D = mean(CE, KL), in numpy from the logits."""
  cfg, params, gates = gated_tiny_model(bias_init=3.0)
  toks = tokens(4)
  answer = np.zeros(toks.shape, bool)
  answer[0, -5:] = True  # row 1 has no answer: only row 0's last 5 targets count
  loss_fn = jax.jit(functools.partial(trimkv_loss, cfg=cfg, memory_M=8, impl="reference",
                                      answer_weight=3.0))
  loss, metrics = loss_fn(gates, params, toks, answer_BxT=answer)
  student = np_log_softmax(forward_gated(add_gates(params, gates), toks, cfg,
                                         impl="reference")[0])[:, :-1]
  teacher = np_log_softmax(llama.forward(params, toks, cfg))[:, :-1]
  ce = -np.take_along_axis(student, toks[:, 1:, None], -1)[..., 0]
  kl = (np.exp(teacher) * (teacher - student)).sum(-1)
  on = answer[:, 1:]
  np.testing.assert_allclose(metrics["answer_ce"], ce[on].mean(), rtol=1e-4)
  np.testing.assert_allclose(metrics["answer_kl"], kl[on].mean(), rtol=1e-3)
  want = ((ce.mean() + kl.mean()) / 2 + 3.0 * (ce[on].mean() + kl[on].mean()) / 2
          + float(metrics["capacity"]))
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  _, none = loss_fn(gates, params, toks, answer_BxT=np.zeros(toks.shape, bool))
  assert float(none["answer_ce"]) == 0.0 and float(none["answer_kl"]) == 0.0
  with pytest.raises(ValueError, match="answer mask"):
    trimkv_loss(gates, params, toks, cfg, memory_M=8, answer_weight=1.0)


def test_fact_fade_term_is_the_mean_decay_of_fact_tokens_across_the_row():
  cfg, params, gates = gated_tiny_model(bias_init=3.0)
  toks = tokens(5)
  fact = np.zeros(toks.shape, bool)
  fact[0, 3:9] = fact[1, 20:22] = True
  loss_fn = jax.jit(functools.partial(trimkv_loss, cfg=cfg, memory_M=8, impl="reference"),
                    static_argnames="fact_weight")
  base, _ = loss_fn(gates, params, toks)
  loss, metrics = loss_fn(gates, params, toks, fact_BxT=fact, fact_weight=0.5)
  log_beta = np.asarray(forward_gated(add_gates(params, gates), toks, cfg,
                                      impl="reference")[1])  # [L, B, T, Hkv]
  want = np.mean(-log_beta[:, fact] * toks.shape[1])
  np.testing.assert_allclose(metrics["fact_fade"], want, rtol=1e-5)
  np.testing.assert_allclose(loss, base + 0.5 * want, rtol=1e-5)
  grads = jax.grad(lambda g: loss_fn(g, params, toks, fact_BxT=fact, fact_weight=0.5)[0]
                   - loss_fn(g, params, toks)[0])(gates)
  assert float(np.sum(grads["bias"])) < 0, "the fade term raises the gates' retention"
