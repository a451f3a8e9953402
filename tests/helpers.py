"""Shared helpers for tests on tiny random models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from memjax.cache import kv_cache
from memjax.generation import generate, step
from memjax.models import llama
from memjax.models.config import tiny_config


@functools.lru_cache(maxsize=None)
def tiny_model(**overrides):
  cfg = tiny_config(**overrides)
  return cfg, llama.init_params(cfg, jax.random.PRNGKey(0), scale=0.3)


def chunked_logprobs(params, cfg, tokens_BxT, policy, budgets, chunk):
  """log p(token t+1 | ...) [B, T-1] through the budgeted cache, chunk by chunk; and the cache."""
  b, t = tokens_BxT.shape
  cache = kv_cache.init_cache(budgets, b, cfg.n_kv_heads, cfg.head_dim)
  fn = step.jitted_chunk_step(cfg, policy, "target_logprobs")
  targets = np.concatenate([tokens_BxT[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
  outs = []
  for (tok, valid), (tgt, _) in zip(generate.chunks(tokens_BxT.tolist(), chunk),
                                    generate.chunks(targets.tolist(), chunk)):
    lp, cache = fn(params, cache, tok, valid, tgt)
    outs.append(np.asarray(lp))
  return np.concatenate(outs, axis=1)[:, :t - 1], cache


def masked_logprobs(params, cfg, tokens_BxT, visible_fn):
  """Oracle: full forward where query i sees key j iff visible_fn(i, j) (numpy bool [T, T])."""
  b, t = tokens_BxT.shape
  i, j = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
  mask = jnp.asarray(visible_fn(i, j) & (j <= i))[None, None]

  def mix(p, q, k, v, positions, state):
    from memjax.attention import reference
    out, _ = reference.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
    return out, state

  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  x, _ = llama.run_layers(params["layers"], llama.embed(params, tokens_BxT, cfg), positions,
                          None, mix, cfg)
  logp = jax.nn.log_softmax(llama.unembed(params, x, cfg), axis=-1)
  return np.take_along_axis(np.asarray(logp)[:, :-1], tokens_BxT[:, 1:, None], axis=-1)[..., 0]
