"""Teacher outputs cached per batch: the coarsened KL against numpy, the cache, a whole run."""

import jax
import numpy as np
import pytest

from memjax.retention.losses import token_kl, topk_kl
from memjax.train import run
from memjax.train.config import MethodConfig, TrainConfig, TrimKVConfig
from memjax.train.metrics import read_jsonl
from memjax.train.teacher import TeacherCache


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("k", [3, 11])
def test_topk_kl_is_the_kl_of_the_coarsened_distributions(k):
  rng = np.random.default_rng(0)
  teacher, student = (rng.normal(size=(2, 5, 11)) * 2 for _ in range(2))
  t, s = np_log_softmax(teacher), np_log_softmax(student)
  ids = np.argsort(-t, axis=-1)[..., :k]
  t_top, s_top = (np.take_along_axis(x, ids, -1) for x in (t, s))
  pt = np.concatenate([np.exp(t_top), 1 - np.exp(t_top).sum(-1, keepdims=True)], -1)
  ps = np.concatenate([np.exp(s_top), 1 - np.exp(s_top).sum(-1, keepdims=True)], -1)
  pt, ps = np.clip(pt, 1e-12, 1), np.clip(ps, 1e-12, 1)
  want = (pt * (np.log(pt) - np.log(ps))).sum(-1)
  got = np.asarray(topk_kl(ids.astype(np.int32), t_top.astype(np.float32),
                           student.astype(np.float32)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  full = np.asarray(token_kl(teacher.astype(np.float32), student.astype(np.float32)))
  assert (got <= full + 1e-5).all()
  if k == 11:
    np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-6)


def test_cache_computes_once_then_reads_and_refuses_other_shapes(tmp_path):
  calls = []

  def compute(tokens):
    calls.append(1)
    return (np.zeros((*tokens.shape, 2), np.int32), np.full((*tokens.shape, 2), -1.0, np.float32))

  cache = TeacherCache(tmp_path, compute, 2)
  tokens = np.ones((1, 4), np.int32)
  first = cache.get(7, tokens)
  again = TeacherCache(tmp_path, compute, 2).get(7, tokens)
  assert len(calls) == 1 and (tmp_path / "7.npz").exists()
  np.testing.assert_array_equal(first["teacher_logp"], again["teacher_logp"])
  assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"
  with pytest.raises(ValueError, match="other settings"):
    TeacherCache(tmp_path, compute, 3).get(7, tokens)


def test_a_run_with_the_full_vocabulary_cached_trains_like_the_exact_teacher(tmp_path):
  """With k = the vocabulary (256 bytes) the coarsened KL is the exact one, so the run's
  losses match a run that computes the teacher every step; a rerun reads every file."""
  def cfg(name, topk):
    return TrainConfig(model="tiny", seq_len=64, batch_size=2, steps=3, warmup_steps=0,
                       save_every=3, log_every=1, synthetic_fraction=0.0,
                       output_dir=str(tmp_path / name), method=MethodConfig(
                           name="trim_kv", trim_kv=TrimKVConfig(
                               memory_M=8, gate_hidden=8, block=32, gate_bias_init=3.0,
                               teacher_topk=topk,
                               teacher_cache_dir=str(tmp_path / "teacher"))))
  run(cfg("exact", 0))
  run(cfg("cached", 256))
  exact, cached = (read_jsonl(tmp_path / n / "metrics.jsonl") for n in ("exact", "cached"))
  for a, b in zip(exact, cached):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-4)
    np.testing.assert_allclose(b["kl"], a["kl"], rtol=0.05, atol=2e-6)  # float32 tail bucket
  assert sorted(p.name for p in (tmp_path / "teacher").glob("*.npz")) == ["0.npz", "1.npz",
                                                                          "2.npz"]
  stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "teacher").glob("*.npz")}
  run(cfg("cached_again", 256))
  assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "teacher").glob("*.npz")}
