"""One EvalConfig setting varied over a few values, everything else equal: the runs, the
shared row log and the report of an ablation such as uniform vs pyramid budgets.

`run_ablation(field, values, argv, config=...)` evaluates the config once per value (the
full cache only with the first value: it neither evicts nor has a budget), appending rows to
OUTPUT_DIR/NAME.rows.jsonl, so an interrupted run resumes; `--reuse ROWS.jsonl` first copies
the rows of the same settings from other row logs. It writes NAME.md, NAME.csv and the plots,
where the rows of a later value appear as "POLICY VALUE" next to the first value's "POLICY",
and the markdown ends with a table of each later value minus the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from typing import Sequence

from memjax.config import config_to_dict, load_config
from memjax.eval import report
from memjax.eval.config import EvalConfig
from memjax.eval.harness import RowLog, evaluate


def parse(argv: list[str] | None, config: str, description: str) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("overrides", nargs="*", help="key=value EvalConfig overrides")
  parser.add_argument("--config", default=config, help="YAML of EvalConfig fields")
  parser.add_argument("--reuse", action="append", default=[],
                      help="row log (.rows.jsonl) whose rows of the same settings are reused")
  return parser.parse_args(argv)


def configs(field: str, values: Sequence[str], argv: list[str] | None, config: str,
            description: str = "") -> dict[str, EvalConfig]:
  """Value -> the EvalConfig run for it (later values without the full cache)."""
  args = parse(argv, config, description)
  first = load_config(EvalConfig, args.config, [*args.overrides, f"{field}={values[0]}"])
  budgeted = [p for p in first.policies if p != "full"]
  return {value: dataclasses.replace(first, **{field: value},
                                     policies=first.policies if value == values[0] else budgeted)
          for value in values}


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


def difference_table(rows: dict[str, list[dict]], values: Sequence[str]) -> str:
  """Markdown: per (metric, policy, budget, later value) both values and their gap."""
  value = lambda row: 100 * row["accuracy"] if "accuracy" in row else row["perplexity"]
  base_rows = {(r["task"], r["policy"], r["budget"]): r for r in rows[values[0]]}
  lines = [f"| metric | policy | budget | {values[0]} | value | value − {values[0]} |",
           "|:---|:---|---:|---:|---:|---:|"]
  for other in values[1:]:
    for row in rows[other]:
      base = base_rows.get((row["task"], row["policy"], row["budget"]))
      if base is not None:
        metric = "accuracy %" if "accuracy" in row else "perplexity"
        lines.append(f"| {metric} | {row['policy']} | {100 * row['budget']:.4g}% | "
                     f"{value(base):.2f} | {other}: {value(row):.2f} | "
                     f"{value(row) - value(base):+.2f} |")
  return "\n".join(lines)


def run_ablation(field: str, values: Sequence[str], argv: list[str] | None, config: str,
                 description: str = "") -> dict[str, pathlib.Path]:
  """Evaluate, write the report (see the module docstring); returns the written paths."""
  args = parse(argv, config, description)
  from memjax.cli import enable_compilation_cache
  enable_compilation_cache()
  by_value = configs(field, values, argv, config, description)
  first = by_value[values[0]]
  log_path = pathlib.Path(first.output_dir) / f"{first.name}.rows.jsonl"
  print(f"reused {reuse_rows(log_path, first, args.reuse)} rows from {args.reuse}")
  rows = {value: evaluate(cfg, log_path=log_path) for value, cfg in by_value.items()}
  labelled = rows[values[0]] + [dict(r, policy=f"{r['policy']} {value}")
                                for value in values[1:] for r in rows[value]]
  paths = report.write_report(labelled, dict(config_to_dict(first),
                                             **{field: " and ".join(values)}))
  table = difference_table(rows, values)
  with paths["markdown"].open("a", encoding="utf-8") as f:
    f.write(f"\n## each {field} − {values[0]}\n\nAccuracy in points, perplexity in its own "
            f"units (lower is better).\n\n{table}\n")
  print(report.format_table(labelled, first.protocol), "", table, sep="\n")
  for kind, path in paths.items():
    print(f"wrote {kind.split(':')[0]}: {path}")
  return paths
