"""`memjax reproduce`: the registry, errors, manifests, and resuming after a failure."""

import csv
import json
import pathlib

import pytest

from memjax import cli
from memjax.reproduce import (ABLATIONS, Ablation, ReproduceError, Step, get_ablation,
                              manifest_path, registry, reproduce)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL_OUT = ROOT / registry.SMALL_RESULTS


def test_every_experiment_is_registered():
  assert set(ABLATIONS) == {"sweep", "budget_schedule", "adaptive_budgets", "trimkv_ablations",
                            "memory_layers", "assoc_recall", "ruler"}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_small_settings_write_apart_from_the_real_results(name):
  """Small steps name only the small output directory and runs/small/; their scripts and
  config files exist; and they differ from the full steps."""
  ablation = ABLATIONS[name]
  small = ablation.steps(SMALL_OUT, True)
  assert small and small != ablation.steps(ROOT / registry.RESULTS, False)
  for step in small:
    words = " ".join(step.argv)
    assert "--small" in words or "n_cases=2" in words
    real_results = words.replace(str(SMALL_OUT), "")
    assert str(registry.RESULTS) not in real_results, words
    assert "runs/" not in words or str(registry.SMALL_RUNS) in words, words
    for path in [w for w in step.argv if w.endswith((".py", ".yaml"))]:
      assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("name", ["sweep", "budget_schedule", "trimkv_ablations",
                                  "memory_layers", "ruler"])
def test_manifests_get_the_resolved_configs(name):
  configs = {}
  for step in ABLATIONS[name].steps(SMALL_OUT, True):
    configs.update(step.configs())
  assert configs
  assert all(cfg.seed == 0 for cfg in configs.values())
  if name in ("sweep", "budget_schedule", "ruler"):
    assert all(cfg.output_dir == str(SMALL_OUT) for cfg in configs.values())
  else:  # training runs
    from memjax.train import TrainConfig
    runs = [cfg.output_dir for cfg in configs.values() if isinstance(cfg, TrainConfig)]
    assert runs and all(run.startswith(str(registry.SMALL_RUNS)) for run in runs)
  if name == "budget_schedule":
    assert {cfg.budget_schedule for cfg in configs.values()} == {"uniform", "pyramid"}


def test_unknown_name_names_the_nearest(capsys):
  with pytest.raises(ValueError, match="did you mean 'memory_layers'"):
    get_ablation("memory_layer")
  assert cli.main(["reproduce", "trimkv"]) == 2
  assert "did you mean 'trimkv_ablations'" in capsys.readouterr().err


def test_list_shows_every_ablation_and_what_it_compares(capsys):
  assert cli.main(["reproduce", "--list"]) == 0
  listing = capsys.readouterr().out
  for name, ablation in ABLATIONS.items():
    assert f"{name}" in listing and ablation.compares in listing


def _writer(out: pathlib.Path, name: str, fail_unless: pathlib.Path | None = None) -> Step:
  """A step that appends "ran" to out/name.txt; it exits with code 3 while `fail_unless`
  (if given) does not exist."""
  code = "import os, sys\n"
  if fail_unless is not None:
    code += f"if not os.path.exists({str(fail_unless)!r}): sys.exit(3)\n"
  code += f"with open({str(out / (name + '.txt'))!r}, 'a') as f: f.write('ran\\n')\n"
  return Step(("-c", code))


def test_failed_step_stops_the_run_and_a_rerun_resumes_there(tmp_path, monkeypatch):
  flag = tmp_path / "fixed"
  fake = Ablation("fake", "two steps", lambda out, small: [_writer(out, "first"),
                                                          _writer(out, "second", flag)],
                  ("first.txt", "second.txt"))
  monkeypatch.setitem(registry.ABLATIONS, "fake", fake)
  with pytest.raises(ReproduceError, match="exit code 3"):
    reproduce("fake", out=tmp_path, log=lambda _: None)
  failed = json.loads(manifest_path("fake", tmp_path).read_text())
  assert [s["status"] for s in failed["steps"]] == ["finished", "failed (exit code 3)"]
  assert failed["finished"] is None

  flag.touch()
  done = reproduce("fake", out=tmp_path, log=lambda _: None)
  assert (tmp_path / "first.txt").read_text() == "ran\n"   # not run again
  assert (tmp_path / "second.txt").read_text() == "ran\n"
  assert "skipped_at" in done["steps"][0] and "skipped_at" not in done["steps"][1]
  assert done["outputs"] == ["first.txt", "second.txt"] and done["finished"]

  reproduce("fake", out=tmp_path, redo=True, log=lambda _: None)
  assert (tmp_path / "first.txt").read_text() == "ran\nran\n"


def test_missing_output_is_an_error(tmp_path, monkeypatch):
  fake = Ablation("fake", "one step", lambda out, small: [_writer(out, "first")],
                  ("first.txt", "plot_*.png"))
  monkeypatch.setitem(registry.ABLATIONS, "fake", fake)
  with pytest.raises(ReproduceError, match=r"wrote no .*plot_\*\.png"):
    reproduce("fake", out=tmp_path, log=lambda _: None)


def test_small_sweep_end_to_end_with_manifest_then_resumes(tmp_path, smollm2_path):
  record = reproduce("sweep", small=True, out=tmp_path, log=lambda _: None)
  assert record["outputs"] == ["sweep.md", "sweep.csv", "sweep_single_300.png"]
  with open(tmp_path / "sweep.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert {(r["task"], r["policy"]) for r in rows} == {
      (task, policy) for task in ("single", "perplexity")
      for policy in ("full", "window", "keydiff")}
  assert all(float(r["perplexity"]) > 1 for r in rows if r["task"] == "perplexity")

  saved = json.loads(manifest_path("sweep", tmp_path).read_text())
  assert saved == json.loads(json.dumps(record))
  assert saved["small"] and saved["out_dir"] == str(tmp_path)
  assert saved["device"]["platform"] == "cpu" and saved["device"]["count"] >= 1
  assert {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
          "memjax"} <= set(saved["versions"])
  assert saved["versions"]["jax"] and len(saved["git"]["commit"]) == 40
  assert saved["seeds"] == {"eval": 0}
  assert saved["configs"]["eval"]["n_cases"] == 2
  assert saved["steps"][0]["status"] == "finished" and saved["steps"][0]["seconds"] > 0

  log_lines = (tmp_path / "sweep.rows.jsonl").read_text()
  report_time = (tmp_path / "sweep.md").stat().st_mtime_ns
  again = reproduce("sweep", small=True, out=tmp_path, log=lambda _: None)
  assert "skipped_at" in again["steps"][0]
  assert (tmp_path / "sweep.rows.jsonl").read_text() == log_lines
  assert (tmp_path / "sweep.md").stat().st_mtime_ns == report_time


def test_full_settings_match_the_committed_rows():
  """`memjax reproduce` of the sweep, the uniform half of budget_schedule and the TRIM-KV
  ablations computes rows with the fingerprint of the committed results, so it resumes them."""
  from memjax.eval.config import EvalConfig
  from memjax.eval.harness import fingerprint
  logs = [ROOT / registry.RESULTS / f"{name}.rows.jsonl" for name in ("sweep", "trimkv_ablations")]
  committed = {json.loads(line)["fingerprint"] for log in logs
               for line in log.read_text().splitlines()}
  assert len(committed) == 1
  for name in ("sweep", "budget_schedule", "trimkv_ablations"):
    for step in ABLATIONS[name].steps(ROOT / registry.RESULTS, False):
      for label, cfg in step.configs().items():
        if isinstance(cfg, EvalConfig) and label != "pyramid":
          assert fingerprint(cfg) in committed, (name, label)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["budget_schedule", "trimkv_ablations", "memory_layers",
                                  "assoc_recall", "ruler"])
def test_every_small_ablation_runs_end_to_end(name, tmp_path, smollm2_path):
  record = reproduce(name, small=True, out=tmp_path, log=lambda _: None)
  assert record["finished"] and record["outputs"]
  assert all(step["status"] == "finished" for step in record["steps"])
  assert json.loads(manifest_path(name, tmp_path).read_text())["outputs"] == record["outputs"]
