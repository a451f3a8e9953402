"""Pallas flash attention (TPU Mosaic and GPU Triton kernels, interpret mode on CPU) against
the XLA oracle `decayed_attention(impl="reference")`: outputs and every gradient.

Parity runs TPU kernels under the plain TPU interpreter and GPU kernels under the HLO
interpreter; one test runs each TPU kernel under the checked interpreter (two simulated
cores, randomised order of parallel grid points, NaN-filled buffers, race detector), which
is an order of magnitude slower. Lengths are never multiples of the blocks, so padding and
partial tiles are always exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
from jax.experimental.pallas import tpu as pltpu

from memjax.kernels import flash_attention, flash_layout, flash_tpu
from memjax.retention.decayed_attention import decayed_attention

pytestmark = pytest.mark.pallas

CHECKED = pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan",
                                num_cores_or_threads=2, random_seed=7)
TOLERANCE = {"float32": 1e-3, "bfloat16": 1e-2}   # relative error: the kernels' parity bounds


def no_race_in_last_kernel():
  return tpu_interpreter.races is not None and not tpu_interpreter.races.races_found


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def inputs(seed, t, n_kv, group, dtype, segmented, d=16, b=1):
  """Random q, k, v (rounded to dtype), log β with mild, zero and very strong decay, and
  packed segment ids (or None)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  log_beta = -rng.exponential(0.3, size=(b, t, n_kv))
  log_beta[rng.random(log_beta.shape) < 0.1] = 0.0
  log_beta[rng.random(log_beta.shape) < 0.05] = -30.0
  segments = None
  if segmented:
    segments = jnp.asarray(np.cumsum(rng.random((b, t)) < 0.15, axis=1), jnp.int32)
  return (normal(b, t, n_kv * group, d), normal(b, t, n_kv, d), normal(b, t, n_kv, d),
          jnp.asarray(log_beta, jnp.float32), segments)


def oracle(q, k, v, log_beta, segments, soft_cap):
  """float32 reference on the same (possibly bf16-rounded) inputs; zero decay without β."""
  b, t, n_kv, _ = k.shape
  f32 = lambda x: x.astype(jnp.float32)
  return decayed_attention(
      f32(q), f32(k), f32(v), jnp.zeros((b, t, n_kv)) if log_beta is None else log_beta,
      jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), segment_ids=segments,
      soft_cap=soft_cap, impl="reference")


def value_and_grads(attend, q, k, v, log_beta, cotangent):
  """Output and gradients of <attend(...), cotangent> in q, k, v (and log β if given)."""
  argnums = (0, 1, 2) if log_beta is None else (0, 1, 2, 3)
  loss = lambda *a: (jnp.sum(attend(*a).astype(jnp.float32) * cotangent), attend(*a))
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(q, k, v, log_beta)
  return out, grads


# (backend, group, decay, segments, soft_cap, dtype, T); blocks are 8 x 16 (TPU), 16 x 16 (GPU).
CASES = [
    ("tpu", 3, True, True, 5.0, "float32", 37),
    ("tpu", 8, True, False, None, "bfloat16", 21),
    ("gpu", 1, False, False, None, "float32", 21),
    ("gpu", 3, True, True, 5.0, "float32", 37),
    ("gpu", 8, True, False, None, "bfloat16", 21),
]
SLOW_CASES = [
    (backend, group, decay, seg, cap, dtype, 45)
    for backend in ("tpu", "gpu") for group in (1, 3, 8) for decay in (False, True)
    for seg in (False, True) for dtype in ("float32", "bfloat16")
    for cap in ((None, 4.0) if decay and seg else (None,))]


def check_parity(backend, group, decay, segmented, soft_cap, dtype, t):
  q, k, v, log_beta, segments = inputs(group + t, t, 2 if group < 8 else 1, group,
                                       jnp.dtype(dtype), segmented)
  log_beta = log_beta if decay else None
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  blocks = dict(block_q=8, block_k=16) if backend == "tpu" else dict(block_q=16, block_k=16)
  kernel = lambda q, k, v, lb: flash_attention(q, k, v, lb, segment_ids=segments,
                                               soft_cap=soft_cap, backend=backend,
                                               interpret=True, **blocks)
  out, grads = value_and_grads(kernel, q, k, v, log_beta, cotangent)
  want_out, want_grads = value_and_grads(
      lambda q, k, v, lb: oracle(q, k, v, lb, segments, soft_cap),
      *(x.astype(jnp.float32) for x in (q, k, v)), log_beta, cotangent)
  assert out.dtype == q.dtype
  errors = [rel_err(out, want_out)] + [rel_err(g, w) for g, w in zip(grads, want_grads)]
  assert max(errors) < TOLERANCE[dtype], errors


@pytest.mark.parametrize("backend,group,decay,segmented,soft_cap,dtype,t", CASES)
def test_forward_and_gradients_match_the_oracle(backend, group, decay, segmented, soft_cap,
                                                dtype, t):
  check_parity(backend, group, decay, segmented, soft_cap, dtype, t)


@pytest.mark.slow
@pytest.mark.parametrize("backend,group,decay,segmented,soft_cap,dtype,t", SLOW_CASES)
def test_full_matrix_matches_the_oracle(backend, group, decay, segmented, soft_cap, dtype, t):
  check_parity(backend, group, decay, segmented, soft_cap, dtype, t)


def test_tpu_kernels_write_every_output_without_races():
  """Each TPU kernel alone (the detector's state covers one kernel): two simulated cores,
  NaN-filled buffers. Padding blocks (T = 11 in blocks of 8 and 32) included."""
  q, k, v, log_beta, segments = inputs(3, 11, 2, 3, jnp.float32, True, b=2)
  cfg = flash_layout.FlashConfig(causal=True, soft_cap=None, scale=16 ** -0.5, kv_len=11,
                                 block_q=8, block_k=32, interpret=True)
  args = flash_layout.to_kernel(q, k, v, log_beta, segments, 32)
  with pltpu.force_tpu_interpret_mode(CHECKED):
    out, lse = jax.block_until_ready(flash_tpu.forward(cfg, *args))
    assert no_race_in_last_kernel()
    do = jnp.where(jnp.arange(32)[:, None] < 11, jnp.ones_like(out), 0.0)
    delta = jnp.sum(do * out, axis=-1, keepdims=True)
    grads_kv = jax.block_until_ready(flash_tpu.backward_dkv(cfg, *args, do, lse, delta))
    assert no_race_in_last_kernel()
    dq = jax.block_until_ready(flash_tpu.backward_dq(cfg, *args, do, lse, delta))
    assert no_race_in_last_kernel()
  for x in (out, lse, dq, *grads_kv):
    assert not np.isnan(np.asarray(x)).any()


def test_non_causal_attention_sees_every_key_of_its_segment():
  q, k, v, _, segments = inputs(5, 19, 1, 3, jnp.float32, True)
  got = flash_attention(q, k, v, causal=False, segment_ids=segments, backend="gpu",
                        interpret=True, block_q=16, block_k=16)
  want = flash_attention(q, k, v, causal=False, segment_ids=segments, backend="xla")
  assert rel_err(got, want) < TOLERANCE["float32"]
  assert rel_err(got, oracle(q, k, v, None, segments, None)) > 0.05


def test_xla_backend_is_the_blockwise_decayed_attention():
  q, k, v, log_beta, segments = inputs(6, 40, 2, 2, jnp.float32, True)
  got = flash_attention(q, k, v, log_beta, segment_ids=segments, soft_cap=3.0, backend="xla")
  assert rel_err(got, oracle(q, k, v, log_beta, segments, 3.0)) < 1e-5


def test_decay_without_causality_is_refused():
  q, k, v, log_beta, _ = inputs(7, 8, 1, 1, jnp.float32, False)
  with pytest.raises(ValueError, match="causal"):
    flash_attention(q, k, v, log_beta, causal=False)


def test_decayed_attention_routes_to_the_kernel_by_backend():
  q, k, v, log_beta, segments = inputs(8, 13, 1, 2, jnp.float32, True)
  positions = jnp.broadcast_to(jnp.arange(13, dtype=jnp.int32), (1, 13))
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
    got = decayed_attention(q, k, v, log_beta, positions, segment_ids=segments, backend="tpu")
  assert rel_err(got, oracle(q, k, v, log_beta, segments, None)) < TOLERANCE["float32"]
