"""Titans neural memory: chunked parallel form against a token-by-token loop, and decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.memory import titans
from memjax.models.config import MemoryConfig

pytestmark = pytest.mark.memory

B, T, D = 2, 21, 16


def setup(chunk: int, dtype=jnp.float64):
  mem = MemoryConfig(kind="titans", layers=(0,), heads=2, titans_hidden=8, titans_chunk=chunk,
                     titans_lr_max=0.1)
  kp, kx = jax.random.split(jax.random.PRNGKey(0))
  p = jax.tree.map(lambda a: a.astype(dtype), titans.init_params(mem, D, kp))
  # Larger gate weights than at init, so α, η, θ really vary from token to token.
  p["w_gates"] = p["w_gates"] * 100
  return mem, p, jax.random.normal(kx, (B, T, D), dtype)


@jax.jit
def surprise_grad(w, k, v):
  loss = lambda w: jnp.sum((jax.nn.silu(k @ w["w1"]) @ w["w2"] - v) ** 2)
  return jax.grad(loss)(w)


def sequential_reference(p, h_BxTxD, mem, grad_at_chunk_start: bool):
  """The update rule written out token by token (no scans, no shared code paths)."""
  q, k, v, alpha, eta, theta = (np.asarray(x) for x in titans.project(p, h_BxTxD, mem))
  b, t, heads, _ = q.shape
  out = np.zeros(q.shape)
  for i in range(b):
    for h in range(heads):
      w = {"w1": np.asarray(p["w1"][h]), "w2": np.asarray(p["w2"][h])}
      s = jax.tree.map(np.zeros_like, w)
      for j in range(t):
        if not grad_at_chunk_start or j % mem.titans_chunk == 0:
          w_grad = w
        g = jax.tree.map(np.asarray, surprise_grad(w_grad, k[i, j, h], v[i, j, h]))
        s = {n: eta[i, j, h] * s[n] - theta[i, j, h] * g[n] for n in w}
        w = {n: (1 - alpha[i, j, h]) * w[n] + s[n] for n in w}
        out[i, j, h] = np.asarray(jax.nn.silu(q[i, j, h] @ w["w1"]) @ w["w2"])
  return out.reshape(b, t, -1) @ np.asarray(p["wo"])


def rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("chunk", [1, 4, 8])
def test_parallel_equals_sequential(chunk):
  """Given gradients at chunk-start weights, the chunked scan equals the loop (float64); with
  chunk 1 it is exact online gradient descent with momentum and forgetting."""
  with jax.enable_x64(True):
    mem, p, h = setup(chunk)
    out, _ = jax.jit(titans.forward, static_argnums=2)(p, h, mem)
    ref = sequential_reference(p, h, mem, grad_at_chunk_start=True)
    assert rel(out, ref) < 1e-10
    if chunk > 1:  # the chunked approximation is a different rule from exact online GD
      assert rel(out, sequential_reference(p, h, mem, grad_at_chunk_start=False)) > 1e-6


@pytest.mark.parametrize("prefill", [8, 11])
def test_decode_with_state_equals_parallel(prefill):
  """Prefill in parallel, then decode token by token carrying the constant-size state."""
  mem, p, h = setup(chunk=4, dtype=jnp.float32)
  forward = jax.jit(titans.forward, static_argnums=2)
  full, _ = forward(p, h, mem)
  out, state = forward(p, h[:, :prefill], mem)
  sizes = jax.tree.map(jnp.shape, state)
  step = jax.jit(titans.decode_step, static_argnums=3)
  outs = [out]
  for j in range(prefill, T):
    y, state = step(p, h[:, j], state, mem)
    assert jax.tree.map(jnp.shape, state) == sizes
    outs.append(y[:, None])
  assert int(state.pos) == T
  assert rel(jnp.concatenate(outs, axis=1), full) < 1e-5


def test_default_memory_stays_finite_over_a_long_sequence_at_initialisation():
  # Regression: with titans_lr_max=0.1 the memory weights blew up to -inf within 256 tokens.
  mem = MemoryConfig(kind="titans", layers=(1,), heads=4, titans_hidden=64)
  p = titans.init_params(mem, 128, jax.random.PRNGKey(0))
  h = jax.random.normal(jax.random.PRNGKey(1), (2, 256, 128))
  out, state = jax.jit(lambda p, h: titans.forward(p, h, mem))(p, h)
  assert np.all(np.isfinite(out))
  assert float(jnp.max(jnp.abs(state.weights["w2"]))) < 10 * float(jnp.max(jnp.abs(p["w2"])))
