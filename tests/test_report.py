"""Policy x budget tables (markdown, terminal), CSV and plot of evaluation results."""

import csv

import pytest

from memjax.eval.config import EvalConfig
from memjax.eval.report import (build_averages, build_tables, format_table,
                                markdown_report, policy_styles, write_report)

BUDGETS = [0.5, 0.25, 0.125]
POLICIES = ["window", "streaming", "h2o", "random"]


@pytest.fixture
def rows():
  out = [dict(policy="full", budget=None, budget_tokens=None, task="single", context_tokens=1000,
              accuracy=0.875, n=8)]
  for i, policy in enumerate(POLICIES):
    for j, budget in enumerate(BUDGETS):
      out.append(dict(policy=policy, budget=budget, budget_tokens=int(budget * 1000), task="single",
                      context_tokens=1000, accuracy=(8 - i - j) / 8, n=8, seconds=1.5))
  out.append(dict(policy="full", budget=None, task="perplexity", context_tokens=256,
                  perplexity=12.5, n=4))
  out.append(dict(policy="h2o", budget=0.25, budget_tokens=64, task="perplexity",
                  context_tokens=256, perplexity=15.25, n=4))
  return out


def test_markdown_has_header_and_every_policy_and_budget(rows):
  cfg = EvalConfig(policies=["full"] + POLICIES, budgets=BUDGETS, name="demo")
  text = markdown_report(rows, cfg)
  assert text.startswith("# demo\n") and "**query-agnostic**" in text
  assert "budgets: [0.5, 0.25, 0.125]" in text  # the config is recorded
  table = text.split("## single retrieval, 1000-token context")[1].split("##")[0]
  lines = [l for l in table.splitlines() if l.startswith("|")]
  assert lines[0] == "| policy | 50% (500 tok) | 25% (250 tok) | 12.5% (125 tok) |"
  assert lines[2] == "| full cache | 87.5 (n=8) | 87.5 (n=8) | 87.5 (n=8) |"
  assert [l.split(" | ")[0][2:] for l in lines[3:]] == POLICIES
  assert "| h2o | 75.0 (n=8) | 62.5 (n=8) | 50.0 (n=8) |" in lines
  assert "held-out perplexity, 256-token windows" in text and "15.25" in text


def test_cells_merge_rows_weighted_by_n():
  rows = [dict(policy="h2o", budget=0.5, budget_tokens=50, task="single", context_tokens=100,
               accuracy=a, n=n) for a, n in [(1.0, 2), (0.5, 6)]]
  (table,) = build_tables(rows)
  assert table.cells[("h2o", (0.5, 50))] == (pytest.approx(0.625), 8)


def test_terminal_table_is_aligned(rows):
  text = format_table(rows, "query-aware")
  block = text.split("\n\n")[0].splitlines()
  assert block[0].startswith("single retrieval, 1000-token context [query-aware]")
  assert block[2].startswith("full cache") and "87.5 (8)" in block[2]
  assert len({len(line) for line in block[1:]}) == 1


def test_write_report_files(rows, tmp_path):
  cfg = EvalConfig(query_aware=True, name="run1", output_dir=str(tmp_path / "ignored"))
  paths = write_report(rows, cfg, tmp_path / "out")
  assert set(paths) == {"markdown", "csv", "plot:single:1000"}
  assert "**query-aware**" in paths["markdown"].read_text()
  with open(paths["csv"]) as f:
    written = list(csv.DictReader(f))
  assert len(written) == len(rows)
  assert list(written[0])[:8] == ["policy", "budget", "budget_tokens", "task", "context_tokens",
                                  "accuracy", "n", "perplexity"]
  assert written[0]["budget"] == "" and written[1]["seconds"] == "1.5"
  png = paths["plot:single:1000"].read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def _suite_rows():
  """Two tasks at one length: h2o at 25% scores [1, 0] and [1, 1], full [1, 1] and [0, 1]."""
  rows = []
  for task, h2o, full in (("niah_single_1", [1.0, 0.0], [1.0, 1.0]),
                          ("vt", [1.0, 1.0], [0.0, 1.0])):
    rows.append(dict(policy="full", budget=None, budget_tokens=None, task=task,
                     context_tokens=2000, accuracy=sum(full) / 2, n=2, scores=full, model="m"))
    rows.append(dict(policy="h2o", budget=0.25, budget_tokens=500, task=task,
                     context_tokens=2000, accuracy=sum(h2o) / 2, n=2, scores=h2o, model="m"))
  return rows


def test_average_over_tasks_with_standard_error():
  (average,) = build_averages(_suite_rows())
  assert average.tasks == ("niah_single_1", "vt") and average.model == "m"
  # h2o: task means 0.5 and 1.0; standard errors std([1, 0]) / sqrt(2) = 0.5 and 0
  # -> average 0.75 with sqrt(0.5^2 + 0^2) / 2 = 0.25
  assert average.cells[("h2o", (0.25, 500))] == (pytest.approx(0.75), pytest.approx(0.25))
  assert average.cells[("full", (0.25, 500))] == (pytest.approx(0.75), pytest.approx(0.25))
  assert build_averages(_suite_rows()[:2]) == []  # one task: nothing to average
  text = markdown_report(_suite_rows(), EvalConfig(name="suite", notes="A partial slice."))
  assert "\n\nA partial slice.\n\nConfig:" in text
  assert "## average over 2 tasks, 2000-token context" in text
  assert "| h2o | 75.0 ± 25.0 |" in text and "## niah_single_1, 2000-token context" in text
  assert "![average score against the kept fraction](suite_leaderboard.png)" in text


def test_average_needs_every_task(tmp_path):
  rows = _suite_rows()[:-1]  # h2o has no vt row
  (average,) = build_averages(rows)
  assert ("h2o", (0.25, 500)) not in average.cells and ("full", (0.25, 500)) in average.cells
  paths = write_report(_suite_rows(), EvalConfig(name="suite"), tmp_path)
  assert set(paths) == {"markdown", "csv", "leaderboard"}  # no per-task plots
  assert paths["leaderboard"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_panels_share_one_style_per_policy(tmp_path):
  """A policy only one panel has (`learned` on SmolLM2, not Gemma) still gets one style for
  both panels, apart from every other policy's; the full cache gets none (it is the dashed
  reference line)."""
  first = _suite_rows() + [dict(r, policy="learned") for r in _suite_rows() if r["budget"]]
  second = [dict(r, model="other", context_tokens=4000) for r in _suite_rows()]
  averages = build_averages(first + second)
  assert [a.model for a in averages] == ["m", "other"]
  assert "learned" not in averages[1].policies
  styles = policy_styles([a.policies for a in averages])
  assert set(styles) == {"h2o", "learned"}
  assert styles["h2o"] != styles["learned"]
  paths = write_report(first + second, EvalConfig(name="two"), tmp_path)
  assert paths["leaderboard"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_of_two_models_stay_apart_and_are_named(rows):
  other = [dict(r, model="gemma3-270m", accuracy=0.0 if r.get("accuracy") is not None else None)
           for r in rows if r["task"] == "single"]
  mine = [dict(r, model="smollm2-135m") for r in rows]
  tables = [t for t in build_tables(mine + other) if t.metric == "accuracy"]
  assert [(t.model, t.task) for t in tables] == [("smollm2-135m", "single"),
                                                ("gemma3-270m", "single")]
  assert tables[1].cells[("h2o", (0.25, 250))] == (0.0, 8)
  assert tables[0].cells[("h2o", (0.25, 250))] == (5 / 8, 8)
  text = markdown_report(mine + other, EvalConfig(policies=["full"] + POLICIES, name="two"))
  assert "## gemma3-270m: single retrieval, 1000-token context" in text
  assert "## smollm2-135m: single retrieval, 1000-token context" in text
  assert "beside it the rows of `gemma3-270m`" in text
