"""Uniform vs pyramid per-layer KV budgets at the same mean budget (PyramidKV).

    python experiments/budget_schedule.py [key=value ...] [--config YAML] [--reuse ROWS.jsonl]

Evaluates the config (default configs/budget_schedule.yaml) once with budget_schedule=uniform
and once with pyramid (the full cache only once: it has no budget), appending rows to
OUTPUT_DIR/NAME.rows.jsonl, so an interrupted run resumes. `--reuse` first copies the rows of
the same settings from other row logs (the sweep's uniform rows have the same fingerprint).
Writes NAME.md, NAME.csv and NAME_single_CONTEXT.png, where pyramid rows appear as
"POLICY pyramid" next to the uniform "POLICY", and the markdown ends with pyramid − uniform.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from memjax.config import config_to_dict, load_config
from memjax.eval import report
from memjax.eval.config import EvalConfig
from memjax.eval.harness import RowLog, evaluate

CONFIG = "configs/budget_schedule.yaml"
SCHEDULES = ("uniform", "pyramid")


def parse(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("overrides", nargs="*", help="key=value EvalConfig overrides")
  parser.add_argument("--config", default=CONFIG, help="YAML of EvalConfig fields")
  parser.add_argument("--reuse", action="append", default=[],
                      help="row log (.rows.jsonl) whose rows of the same settings are reused")
  return parser.parse_args(argv)


def configs(argv: list[str] | None) -> dict[str, EvalConfig]:
  """Schedule -> the EvalConfig run for it (pyramid without the full cache)."""
  args = parse(argv)
  uniform = load_config(EvalConfig, args.config, [*args.overrides, "budget_schedule=uniform"])
  budgeted = [p for p in uniform.policies if p != "full"]
  return {schedule: dataclasses.replace(uniform, budget_schedule=schedule,
                                        policies=uniform.policies if schedule == "uniform"
                                        else budgeted)
          for schedule in SCHEDULES}


def reuse_rows(log_path: pathlib.Path, cfg: EvalConfig, sources: list[str]) -> int:
  """Append to `log_path` the rows of `sources` with cfg's fingerprint that it lacks; how many."""
  have = RowLog(log_path, cfg).done
  new = [row for source in sources for key, row in RowLog(source, cfg).done.items()
         if key not in have]
  if new:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as f:
      f.writelines(json.dumps(row) + "\n" for row in new)
  return len(new)


def difference_table(rows_by_schedule: dict[str, list[dict]]) -> str:
  """Markdown: per (metric, policy, budget) the uniform and pyramid values and their gap."""
  value = lambda row: 100 * row["accuracy"] if "accuracy" in row else row["perplexity"]
  uniform = {(r["task"], r["policy"], r["budget"]): r for r in rows_by_schedule["uniform"]}
  lines = ["| metric | policy | budget | uniform | pyramid | pyramid − uniform |",
           "|:---|:---|---:|---:|---:|---:|"]
  for row in rows_by_schedule["pyramid"]:
    base = uniform.get((row["task"], row["policy"], row["budget"]))
    if base is not None:
      metric = "accuracy %" if "accuracy" in row else "perplexity"
      lines.append(f"| {metric} | {row['policy']} | {100 * row['budget']:.4g}% | "
                   f"{value(base):.2f} | {value(row):.2f} | {value(row) - value(base):+.2f} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  args = parse(argv)
  from memjax.cli import enable_compilation_cache
  enable_compilation_cache()
  by_schedule = configs(argv)
  uniform = by_schedule["uniform"]
  log_path = pathlib.Path(uniform.output_dir) / f"{uniform.name}.rows.jsonl"
  print(f"reused {reuse_rows(log_path, uniform, args.reuse)} rows from {args.reuse}")
  rows = {schedule: evaluate(cfg, log_path=log_path) for schedule, cfg in by_schedule.items()}
  labelled = rows["uniform"] + [dict(r, policy=f"{r['policy']} pyramid") for r in rows["pyramid"]]
  paths = report.write_report(labelled, dict(config_to_dict(uniform),
                                             budget_schedule="uniform and pyramid"))
  table = difference_table(rows)
  with paths["markdown"].open("a", encoding="utf-8") as f:
    f.write(f"\n## pyramid − uniform\n\nAccuracy in points, perplexity in its own units "
            f"(lower is better).\n\n{table}\n")
  print(report.format_table(labelled, uniform.protocol), "", table, sep="\n")
  for kind, path in paths.items():
    print(f"wrote {kind.split(':')[0]}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
