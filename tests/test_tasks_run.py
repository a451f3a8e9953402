"""Every registered task end to end on a tiny random model: rows, resume, report."""

import json

import pytest

from memjax.eval import report
from memjax.eval.config import EvalConfig
from memjax.eval.harness import evaluate
from memjax.eval.tasks import TASKS
from memjax.lm import LanguageModel
from memjax.train.data import ByteTokenizer
from tests.helpers import tiny_model

LENGTH = 2600  # bytes: cwe's solved example and 10 words repeated 6 times need ~2,500


class Bytes(ByteTokenizer):
  eos_id = None


@pytest.fixture(scope="module")
def lm():
  cfg, params = tiny_model(vocab_size=256, max_positions=4096)
  return LanguageModel(cfg, params, Bytes(), "tiny")


def test_every_task_runs_resumes_and_reports(lm, tmp_path, monkeypatch):
  generation = [name for name in TASKS if name != "perplexity"]
  # streaming and the oracle: one cache shape for every task, so few compilations
  cfg = EvalConfig(model="tiny", policies=["streaming", "oracle"], budgets=[0.25],
                   tasks=generation, perplexity=True, context_tokens=[LENGTH], n_cases=2,
                   batch_size=2, max_new_tokens=3, ppl_windows=1, ppl_window_tokens=128,
                   ppl_chunk=32, name="tiny", output_dir=str(tmp_path))
  log = tmp_path / "tiny.rows.jsonl"
  rows = evaluate(cfg, lm=lm, progress=False, log_path=log)
  # the oracle keeps needles' tokens: not for tasks without needles
  expected = {(t, "streaming") for t in TASKS} | {
      (t, "oracle") for t in TASKS if t not in ("cwe", "fwe", "perplexity")}
  assert {(r["task"], r["policy"]) for r in rows} == expected
  for row in rows:
    if row["task"] == "perplexity":
      assert row["perplexity"] > 1 and row["context_tokens"] == 128
    else:
      assert row["n"] == 2 and len(row["scores"]) == 2 and 0 <= row["accuracy"] <= 1
      assert row["context_tokens"] == LENGTH and row["model"] == "tiny"
    assert row["budget_tokens"] == round(0.25 * row["context_tokens"])

  def refuse(*args, **kwargs):
    raise AssertionError("a logged row was computed again")
  for task in TASKS.values():
    monkeypatch.setattr(task, "run", refuse)
  assert evaluate(cfg, lm=lm, progress=False, log_path=log) == rows
  assert len(log.read_text().splitlines()) == len(rows)

  paths = report.write_report(rows, cfg)
  assert set(paths) == {"markdown", "csv", "leaderboard"}
  text = paths["markdown"].read_text()
  assert f"## average over {len(generation)} tasks, {LENGTH}-token context" in text
  assert "- `niah_multikey_2`: word key, 7-digit value;" in text
  assert "![average score against the kept fraction](tiny_leaderboard.png)" in text
  assert paths["leaderboard"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads(log.read_text().splitlines()[0])["fingerprint"]
