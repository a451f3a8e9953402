"""Split-K decode attention (TPU and GPU kernels, interpret mode) against the XLA oracle
`reference.attend`, and budgeted chunks through the kernel equal to the XLA path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
from jax.experimental.pallas import tpu as pltpu

from memjax.cache.kv_cache import LayerCache
from memjax.cache.policies import get_policy
from memjax.eval.perplexity import budgeted_logprobs
from memjax.kernels import decode_attention
from tests.helpers import tiny_model
from tests.test_kernels import CHECKED, TOLERANCE, rel_err

pytestmark = pytest.mark.pallas


def cache_and_queries(seed, b, c, s, n_kv, group, dtype, d=16):
  """A cache with empty slots scattered (and, given several, one (row, head) entirely empty),
  and C queries at positions that hide some slots causally."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  pos = np.where(rng.random((b, n_kv, s)) < 0.8, np.arange(s), -1).astype(np.int32)
  if b * n_kv > 1:
    pos[-1, -1] = -1
  positions = np.sort(rng.integers(s // 3, s + 2, size=(b, c)), axis=1).astype(np.int32)
  cache = LayerCache(k=normal(b, n_kv, s, d), v=normal(b, n_kv, s, d), pos=jnp.asarray(pos),
                     stats=jnp.zeros((b, n_kv, s), jnp.float32))
  return normal(b, c, n_kv * group, d), cache, jnp.asarray(positions)


# (backend, batch, C, S, Hkv, group, dtype); blocks of 16 slots, S never a multiple.
CASES = [("tpu", 2, 3, 45, 2, 3, "float32"), ("tpu", 1, 1, 37, 1, 8, "bfloat16"),
         ("gpu", 2, 3, 45, 2, 3, "float32"), ("gpu", 2, 1, 37, 3, 1, "bfloat16")]


@pytest.mark.parametrize("backend,b,c,s,n_kv,group,dtype", CASES)
def test_output_and_slot_mass_match_the_oracle(backend, b, c, s, n_kv, group, dtype):
  q, cache, positions = cache_and_queries(s + group, b, c, s, n_kv, group, jnp.dtype(dtype))
  out, mass = decode_attention(q, cache, positions=positions, backend=backend, interpret=True,
                               block_s=16)
  f32 = lambda x: x.astype(jnp.float32)
  want_out, want_mass = decode_attention(
      f32(q), cache._replace(k=f32(cache.k), v=f32(cache.v)), positions=positions,
      backend="xla")
  assert out.dtype == q.dtype and mass.shape == (b, n_kv, c, s)
  assert rel_err(out, want_out) < TOLERANCE[dtype]
  assert rel_err(mass, want_mass) < TOLERANCE[dtype]
  # Every query that sees a slot distributes exactly its mass 1 over the slots.
  seen = np.asarray(want_mass.sum(-1)) > 0
  np.testing.assert_allclose(np.asarray(mass.sum(-1))[seen], 1.0, rtol=1e-5)
  assert np.all(np.asarray(mass.sum(-1))[~seen] == 0)


def test_tpu_kernel_writes_every_output_without_races():
  q, cache, positions = cache_and_queries(1, 2, 2, 40, 2, 3, jnp.float32)
  with pltpu.force_tpu_interpret_mode(CHECKED):
    out, mass = jax.block_until_ready(decode_attention(q, cache, positions=positions,
                                                       backend="tpu", block_s=16))
  assert tpu_interpreter.races is not None and not tpu_interpreter.races.races_found
  assert not np.isnan(np.asarray(out)).any() and not np.isnan(np.asarray(mass)).any()


def test_without_positions_every_valid_slot_is_visible():
  q, cache, _ = cache_and_queries(2, 1, 2, 20, 1, 2, jnp.float32)
  _, mass = decode_attention(q, cache, backend="gpu", interpret=True, block_s=16)
  valid = np.asarray(cache.pos >= 0)[:, :, None, :]
  assert np.all((np.asarray(mass) > 0) == np.broadcast_to(valid, mass.shape))


def test_budgeted_chunks_through_the_kernel_equal_the_xla_path():
  """h2o reads the kernel's slot mass: the same log-probs and the same kept slots."""
  cfg, params = tiny_model()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 14)).astype(np.int32)
  policy = get_policy("h2o")
  want, want_cache = budgeted_logprobs(params, cfg, tokens, policy, [6, 6], chunk=4)
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
    got, got_cache = budgeted_logprobs(params, dataclasses.replace(cfg, attention_impl="tpu"),
                                       tokens, policy, [6, 6], chunk=4)
  assert rel_err(got, want) < TOLERANCE["float32"]
  np.testing.assert_array_equal(got_cache.stacked().pos, want_cache.stacked().pos)
  assert rel_err(got_cache.stacked().stats, want_cache.stacked().stats) < TOLERANCE["float32"]


def test_without_slot_mass_the_output_is_unchanged():
  q, cache, positions = cache_and_queries(4, 1, 2, 30, 2, 2, jnp.float32)
  with_mass = decode_attention(q, cache, positions=positions, backend="gpu", interpret=True,
                               block_s=16)
  out, mass = decode_attention(q, cache, positions=positions, backend="gpu", interpret=True,
                               block_s=16, with_slot_mass=False)
  assert mass is None
  np.testing.assert_array_equal(out, with_mass[0])
