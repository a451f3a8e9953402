"""Which settings make evaluation rows reusable across runs."""

import pytest

from memjax.eval.config import EvalConfig
from memjax.eval.harness import RowLog, budget_tokens, fingerprint
from memjax.sharding import MeshConfig


def test_fingerprint_ignores_which_rows_are_asked_for_but_not_how_they_are_computed():
  base = EvalConfig()
  same = EvalConfig(policies=["full", "h2o"], budgets=[0.1], context_tokens=[4000],
                    perplexity=True, batch_size=2, output_dir="/tmp/x", name="other", notes="n",
                    mesh=MeshConfig(axes={"data": 2, "fsdp": 1, "tensor": 4}))
  assert fingerprint(same) == fingerprint(base)
  for changed in (EvalConfig(n_cases=9), EvalConfig(seed=1), EvalConfig(query_aware=True),
                  EvalConfig(prefill_chunk=256), EvalConfig(budget_schedule="pyramid")):
    assert fingerprint(changed) != fingerprint(base)


def test_budget_fractions_and_token_counts():
  assert budget_tokens(0.25, 2000) == 500
  assert budget_tokens(0.125, 1000) == 125
  assert budget_tokens(300, 2000) == 300


def test_a_report_includes_the_finished_rows_of_other_configs(tmp_path):
  import json
  from memjax.eval.harness import included_rows, log_path
  other = tmp_path / "other.yaml"
  other.write_text("name: other\nmodel: gemma3-270m\npolicies: [full, h2o]\nbudgets: [0.25]\n"
                   "tasks: [single]\ncontext_tokens: [500]\n")
  mine = EvalConfig(name="mine", output_dir=str(tmp_path), include=[str(other)],
                    policies=["full"])
  other_cfg = EvalConfig(name="other", model="gemma3-270m", policies=["full", "h2o"],
                         budgets=[0.25], tasks=["single"], context_tokens=[500],
                         output_dir=str(tmp_path))
  log = RowLog(log_path(other_cfg), other_cfg)
  log.add(dict(policy="h2o", budget=0.25, budget_tokens=125, task="single",
               context_tokens=500, accuracy=0.5, n=2, model="gemma3-270m"))
  stale = dict(policy="full", budget=None, task="single", context_tokens=500, accuracy=1.0,
               n=2, model="gemma3-270m", fingerprint="not-this-config")
  with log_path(other_cfg).open("a") as f:
    f.write(json.dumps(stale) + "\n")
  rows, missing = included_rows(mine)
  assert [(r["policy"], r["accuracy"]) for r in rows] == [("h2o", 0.5)]
  assert len(missing) == 1 and "1 of 2 rows" in missing[0] and "memjax eval" in missing[0]
  with pytest.raises(FileNotFoundError):
    included_rows(EvalConfig(name="x", output_dir=str(tmp_path),
                             include=[str(tmp_path / "missing.yaml")]))
