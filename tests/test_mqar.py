"""Multi-query associative recall data, the sliding-window attention and the masked loss
that the associative-recall experiment (experiments/assoc_recall.py) is built from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.data.mqar import MQARBatches, MQARTask, mqar_batch
from memjax.models import llama
from memjax.retention.losses import target_ce
from tests.helpers import masked_logprobs, tiny_model


def test_every_answer_is_the_value_stored_with_the_queried_key():
  task = MQARTask(n_pairs=6, n_queries=4, n_keys=10, n_values=5)
  batch = mqar_batch(task, 32, np.random.default_rng(0))
  tokens, answers = batch["tokens"], batch["answer_mask"]
  assert tokens.shape == answers.shape == (32, task.seq_len) == (32, 20)
  for row, mask in zip(tokens, answers):
    keys, values = row[:12:2], row[1:12:2]
    assert len(set(keys)) == 6 and keys.min() >= 1 and keys.max() <= 10
    assert values.min() >= 11 and values.max() <= 15
    stored = dict(zip(keys, values))
    asked = row[12::2]
    assert len(set(asked)) == 4
    assert list(row[13::2]) == [stored[k] for k in asked]
    assert list(np.flatnonzero(mask)) == list(range(13, 20, 2))


def test_batches_resume_where_they_stopped():
  task = MQARTask(4, 2, 8, 8)
  first = MQARBatches(task, 3, seed=1)
  seen = [next(first)["tokens"] for _ in range(3)]
  resumed = MQARBatches(task, 3, seed=1)
  resumed.set_state({"position": 2})
  np.testing.assert_array_equal(next(resumed)["tokens"], seen[2])
  assert not np.array_equal(seen[0], seen[1])


def test_impossible_tasks_are_refused():
  with pytest.raises(ValueError, match="n_queries <= n_pairs <= n_keys"):
    MQARTask(n_pairs=8, n_queries=4, n_keys=5)
  with pytest.raises(ValueError, match="n_queries <= n_pairs"):
    MQARTask(n_pairs=2, n_queries=3)


@pytest.mark.parametrize("window", [1, 3, 8])
def test_sliding_window_attention_equals_a_masked_full_forward(window):
  cfg, params = tiny_model()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12), dtype=np.int32)
  logits = llama.forward(params, jnp.asarray(tokens), cfg,
                         mix=llama.sliding_window_mixer(window))
  got = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1))[:, :-1],
                           tokens[:, 1:, None], axis=-1)[..., 0]
  want = masked_logprobs(params, cfg, tokens, lambda i, j: i - j < window)
  np.testing.assert_allclose(got, want, atol=2e-5)
  if window < 12:  # a real window changes the result
    full = masked_logprobs(params, cfg, tokens, lambda i, j: np.ones_like(i, bool))
    assert np.max(np.abs(got - full)) > 1e-3


def test_sliding_window_must_see_at_least_the_token_itself():
  with pytest.raises(ValueError, match="window must be >= 1"):
    llama.sliding_window_mixer(0)


def test_masked_cross_entropy_averages_only_the_masked_positions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 5))
  mask = rng.random((2, 5)) < 0.5
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0][mask].mean()
  np.testing.assert_allclose(target_ce(logits, targets, mask), want, rtol=1e-5)


def test_assoc_recall_resumes_its_committed_rows_from_the_shared_row_log():
  """experiments/assoc_recall.py logs through memjax.eval.tasks.rowlog: the committed rows
  carry its full Setting's fingerprint, so a rerun reuses all of them; the small Setting's
  fingerprint differs, so a --small run never reuses them."""
  import importlib.util
  import pathlib
  import sys

  from memjax.eval.tasks.rowlog import RowLog
  root = pathlib.Path(__file__).resolve().parent.parent
  spec = importlib.util.spec_from_file_location("assoc_recall_under_test",
                                                root / "experiments" / "assoc_recall.py")
  script = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = script  # dataclasses look their module up
  spec.loader.exec_module(script)
  rows = root / "experiments" / "results" / "assoc_recall.rows.jsonl"
  done = RowLog(rows, script.FULL).done
  names = script.model_names(script.FULL)
  assert {key[2] for key in done} == set(names) and len(done) == len(names) == 7
  assert RowLog(rows, script.SMALL).done == {}
