"""Product-key memory: exact top-k against brute force, chunked gather, decoder placement."""

import dataclasses

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.memory import decoder, pkm_layer, product_keys
from memjax.models import llama
from memjax.models.config import MemoryConfig, tiny_config

pytestmark = pytest.mark.memory


def rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def brute_force(p, values_NxV, h_BxTxD, mem):
  """Score all n_keys² slots with their full keys concat(keys1[i], keys2[j]), keep the top-k
  per head, softmax, and sum the weighted value rows over heads: [B, T, V]."""
  q = einops.rearrange(product_keys.queries(p, h_BxTxD, mem), "b t h two k -> b t h (two k)")
  keys = product_keys.subkeys(p, mem)
  n = mem.n_keys
  full_HxNNxK = jnp.concatenate([jnp.repeat(keys[:, 0], n, axis=1),
                                 jnp.tile(keys[:, 1], (1, n, 1))], axis=-1)
  scores = jnp.einsum("bthk,hsk->bths", q, full_HxNNxK)
  top, slots = jax.lax.top_k(scores, mem.topk)
  w = jax.nn.softmax(top, axis=-1)
  return jnp.einsum("bthk,bthkv->btv", w, values_NxV[slots]), top, slots


@pytest.mark.parametrize("kind,qk_norm,query_norm", [("pkm", False, "rms"),
                                                     ("pkm", False, "layer"),
                                                     ("memory_plus", True, "rms")])
def test_lookup_equals_brute_force(kind, qk_norm, query_norm):
  mem = MemoryConfig(kind=kind, layers=(0,), heads=3, k_dim=8, n_keys=12, topk=5,
                     qk_norm=qk_norm, query_norm=query_norm, max_gather_elems=200)
  d = 16
  kp, kh = jax.random.split(jax.random.PRNGKey(1))
  p = pkm_layer.init_layer(mem, d, kp)
  h = jax.random.normal(kh, (2, 7, d))
  ref, top_ref, slots_ref = jax.jit(brute_force, static_argnums=3)(p, p["values"], h, mem)
  top, slots = product_keys.top_slots(product_keys.queries(p, h, mem),
                                      product_keys.subkeys(p, mem), mem.topk)
  np.testing.assert_array_equal(slots, slots_ref)
  assert rel(top, top_ref) < 1e-6
  out, lookup = pkm_layer.apply(p, p["values"], h, mem, pkm_layer.local_bag(mem))
  if kind == "memory_plus":
    ref = (ref * jax.nn.silu(h @ p["w1"])) @ p["w2"]
  assert rel(out, ref) < 1e-6
  assert lookup.slots.shape == (2, 7, 3 * 5)
  np.testing.assert_allclose(lookup.weights.sum(-1), 3.0, rtol=1e-6)


@pytest.mark.parametrize("max_elems", [1, 70, 10_000])
def test_chunked_bag_caps_gather_and_matches(max_elems):
  k_i, k_w, k_v = jax.random.split(jax.random.PRNGKey(2), 3)
  values = jax.random.normal(k_v, (50, 6))
  idx = jax.random.randint(k_i, (23, 4), 0, 50)
  w = jax.random.uniform(k_w, (23, 4))
  out = product_keys.weighted_bag(values, idx, w, max_elems)
  assert rel(out, jnp.einsum("mk,mkv->mv", w, values[idx])) < 1e-6
  jaxpr = jax.make_jaxpr(lambda v: product_keys.weighted_bag(v, idx, w, max_elems))(values)
  gathered = [np.prod(var.aval.shape) for eqn in _eqns(jaxpr.jaxpr)
              if eqn.primitive.name == "gather" for var in eqn.outvars]
  assert gathered and max(gathered) <= max(max_elems, 4 * 6)


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def memory_model(**mem_fields):
  fields = dict(kind="pkm", layers=(1,), heads=2, k_dim=8, n_keys=6, topk=3)
  fields.update(mem_fields)
  return tiny_config(n_layers=3, memory=MemoryConfig(**fields))


@pytest.mark.parametrize("placement", ["parallel", "replace_mlp"])
def test_zero_memory_is_the_plain_decoder(placement):
  """With zero values a memory block reduces to a plain block ("parallel") or to one whose
  MLP outputs zero ("replace_mlp"): checks segment scanning and placement."""
  cfg = memory_model(placement=placement, layers=(0, 2))
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  params["memory"]["layers"]["values"] = jnp.zeros_like(params["memory"]["layers"]["values"])
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 9), 0, cfg.vocab_size)
  plain = {k: v for k, v in params.items() if k != "memory"}
  if placement == "replace_mlp":
    plain["layers"] = dict(plain["layers"], w_down=plain["layers"]["w_down"].at[np.array([0, 2])].set(0))
  forward = jax.jit(llama.forward, static_argnums=2)
  ref = forward(plain, tokens, dataclasses.replace(cfg, memory=None))
  assert rel(forward(params, tokens, cfg), ref) < 1e-6


@pytest.mark.parametrize("mem_fields", [
    dict(kind="pkm"),
    pytest.param(dict(kind="memory_plus", share_values=True, layers=(0, 2), value_dim=12,
                      qk_norm=True), marks=pytest.mark.slow),
    pytest.param(dict(kind="titans", titans_variant="mal", titans_chunk=4, titans_hidden=8),
                 marks=pytest.mark.slow),
    dict(kind="titans", titans_variant="mag", titans_chunk=4, titans_hidden=8),
], ids=["pkm", "memory_plus", "titans_mal", "titans_mag"])
def test_memory_decoder_is_causal(mem_fields):
  """Changing token j changes no logit before j (and some after), and every memory param
  gets a gradient."""
  cfg = memory_model(**mem_fields)
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 10), 0, cfg.vocab_size)
  j = 6
  other = tokens.at[:, j].set((tokens[:, j] + 1) % cfg.vocab_size)
  forward = jax.jit(llama.forward, static_argnums=2)
  a, b = forward(params, tokens, cfg), forward(params, other, cfg)
  np.testing.assert_array_equal(a[:, :j], b[:, :j])
  assert float(jnp.abs(a[:, j:] - b[:, j:]).max()) > 1e-6
  grads = jax.jit(jax.grad(lambda m: decoder.forward(dict(params, memory=m), tokens, cfg)[0]
                           .sum()))(params["memory"])
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("fields,match", [
    (dict(layers=(5,)), "subset"),
    (dict(query_norm="batch"), "batch norm"),
    (dict(topk=9), "topk"),
    (dict(kind="hopfield"), "kind"),
])
def test_bad_memory_configs(fields, match):
  with pytest.raises(ValueError, match=match):
    memory_model(**fields)
