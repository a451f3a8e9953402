"""Shared helpers for tests on tiny random models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from memjax.models import llama
from memjax.models.config import tiny_config


@functools.lru_cache(maxsize=None)
def tiny_model(**overrides):
  cfg = tiny_config(**overrides)
  return cfg, llama.init_params(cfg, jax.random.PRNGKey(0), scale=0.3)


def masked_logprobs(params, cfg, tokens_BxT, visible_fn, sliding_fn=None):
  """Oracle: full forward where query i sees key j iff visible_fn(i, j) (numpy bool [T, T]);
  in a sliding-window block, iff (sliding_fn or visible_fn)(i, j) and i - j < window."""
  b, t = tokens_BxT.shape
  i, j = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")

  def mix(spec, p, h, q, k, v, positions, state):
    from memjax.attention import reference
    visible = visible_fn(i, j) if spec.window is None else (
        (sliding_fn or visible_fn)(i, j) & (i - j < spec.window))
    mask = jnp.asarray(visible & (j <= i))[None, None]
    out, _ = reference.attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask,
                              spec.attn_soft_cap)
    return out, state

  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  x, _ = llama.run_layers(params, llama.embed(params, tokens_BxT, cfg), positions, None, mix,
                          cfg)
  logp = jax.nn.log_softmax(llama.unembed(params, x, cfg), axis=-1)
  return np.take_along_axis(np.asarray(logp)[:, :-1], tokens_BxT[:, 1:, None], axis=-1)[..., 0]
