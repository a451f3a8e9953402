"""The decoder on tiny random configs: causality, jit/no-jit, bfloat16, chunked vs one-shot."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from memjax.cache.policies import get_policy
from memjax.eval.perplexity import budgeted_logprobs
from memjax.models import llama
from memjax.models.config import tiny_config
from tests.helpers import tiny_model


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


class ForwardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_logits_are_causal(self):
    cfg, params = tiny_model()
    forward = self.variant(lambda p, t: llama.forward(p, t, cfg))
    toks = np.arange(12, dtype=np.int32)[None] % cfg.vocab_size
    changed = toks.copy()
    changed[0, 7] = 50
    a, b = np.asarray(forward(params, toks)), np.asarray(forward(params, changed))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-4

  def test_gradients_do_not_flow_from_the_future(self):
    cfg, params = tiny_model()
    emb = llama.embed(params, jnp.arange(10)[None] % cfg.vocab_size, cfg)

    def logit_at_4(x):
      pos = jnp.arange(10)[None]
      out, _ = llama.run_layers(params, x, pos, None, llama.full_causal_mixer(cfg), cfg)
      return llama.unembed(params, out, cfg)[0, 4].sum()

    grad = np.asarray(jax.grad(logit_at_4)(emb))
    assert np.abs(grad[0, 5:]).max() == 0 and np.abs(grad[0, :5]).max() > 0


def test_untied_embeddings_use_the_output_head():
  cfg = tiny_config(tie_embeddings=False)
  params = llama.init_params(cfg, jax.random.PRNGKey(1))
  toks = jnp.ones((1, 3), jnp.int32)
  before = llama.forward(params, toks, cfg)
  params["lm_head"] = params["lm_head"] * 2
  assert rel_err(llama.forward(params, toks, cfg), before) > 0.5


def test_bfloat16_matches_float32_and_chunked_matches_one_shot():
  cfg32, params32 = tiny_model()
  cfg16 = tiny_config(dtype="bfloat16")
  params16 = llama.cast_params(params32, cfg16)
  toks = np.random.default_rng(0).integers(0, 97, (2, 30)).astype(np.int32)
  logits32 = llama.forward(params32, toks, cfg32)
  logits16 = llama.forward(params16, toks, cfg16)
  assert logits16.dtype == jnp.float32
  assert rel_err(logits16, logits32) < 3e-2
  want = jnp.take_along_axis(jax.nn.log_softmax(logits16)[:, :-1], toks[:, 1:, None], -1)[..., 0]
  got, cache = budgeted_logprobs(params16, cfg16, toks, get_policy("h2o"), [32, 32], 8)
  assert cache.layers[0].k.dtype == jnp.bfloat16
  assert rel_err(got, want) < 1e-2
