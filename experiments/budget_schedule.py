"""Uniform vs pyramid per-layer KV budgets at the same mean budget (PyramidKV).

    python experiments/budget_schedule.py [key=value ...] [--config YAML] [--reuse ROWS.jsonl]

Evaluates the config (default configs/budget_schedule.yaml) once with budget_schedule=uniform
and once with pyramid (`memjax.eval.ablate`), rows in OUTPUT_DIR/NAME.rows.jsonl (resumable);
`--reuse` first copies the rows of the same settings from other row logs (the sweep's uniform
rows have the same fingerprint). Pyramid rows appear as "POLICY pyramid" next to the uniform
"POLICY", and the markdown ends with pyramid − uniform.
"""

from __future__ import annotations

import sys

from memjax.eval import ablate

CONFIG = "configs/budget_schedule.yaml"
SCHEDULES = ("uniform", "pyramid")


def configs(argv):
  return ablate.configs("budget_schedule", SCHEDULES, argv, CONFIG)


if __name__ == "__main__":
  ablate.run_ablation("budget_schedule", SCHEDULES, sys.argv[1:], CONFIG,
                      __doc__.split("\n")[0])
  sys.exit(0)
