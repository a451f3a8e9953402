"""TRIM-KV objective ablations, one command each: train gates, export them, evaluate them.

    python experiments/trimkv_ablation.py NAME [NAME ...]     (or: all)

NAME is one of ABLATIONS. Every ablation starts from configs/trimkv_smollm2.yaml, runs the
shorter schedule SHORT (so that all of them fit in one CPU session) and changes one thing;
"full_objective" changes nothing and is the baseline they are compared with. The gates are
evaluated like the shipped ones (configs/trimkv_eval.yaml: query-agnostic single needle,
~2,000 tokens, 16 cases, and held-out perplexity) at a 25% budget. Training resumes from its checkpoints and the
evaluation from its row log, so an interrupted command picks up where it stopped. Results
go to experiments/results/trimkv_ablations.rows.jsonl; `python experiments/trimkv_report.py`
puts them in experiments/results/trimkv_smollm2.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

TRAIN_CONFIG = "configs/trimkv_smollm2.yaml"
EVAL_CONFIG = "configs/trimkv_eval.yaml"
RUNS = pathlib.Path("runs/trimkv_ablations")
ROWS = pathlib.Path("experiments/results/trimkv_ablations.rows.jsonl")
# 40 steps of 512 tokens with a 25% budget (M = 128): ~6 min each on 2 CPU cores.
SHORT = ["steps=40", "seq_len=512", "warmup_steps=4", "save_every=10",
         "method.trim_kv.memory_M=128"]
ABLATIONS = {
    "full_objective": [],
    "no_capacity": ["method.trim_kv.capacity_weight=0"],
    "no_kl": ["method.trim_kv.kl_weight=0"],
    "no_ce": ["method.trim_kv.ce_weight=0"],
    "width_16": ["method.trim_kv.gate_hidden=16"],
    "width_256": ["method.trim_kv.gate_hidden=256"],
}
EVAL = ["policies=[learned]", "budgets=[0.25]", "perplexity=true"]


def gates_file(name: str) -> pathlib.Path:
  """Where the gates of ablation `name` are exported."""
  return RUNS / name / "gates.npz"


def run_ablation(name: str) -> None:
  """Train (or resume) ablation `name`, export its gates and evaluate them."""
  from memjax.config import load_config
  from memjax.eval.config import EvalConfig
  from memjax.eval.harness import evaluate
  from memjax.train import load_train_config, run
  from memjax.train.export import export_gates

  overrides = [*SHORT, *ABLATIONS[name], f"output_dir={RUNS / name}"]
  run(load_train_config(TRAIN_CONFIG, overrides), progress=True)
  export_gates(RUNS / name, gates_file(name))
  cfg = load_config(EvalConfig, EVAL_CONFIG, [*EVAL, f"gates={gates_file(name)}"])
  accuracy, perplexity = evaluate(cfg, log_path=ROWS)
  print(f"{name}: learned at 25% answers {100 * accuracy['accuracy']:.1f}% of "
        f"{accuracy['n']} cases; held-out perplexity {perplexity['perplexity']:.2f}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="+", choices=[*ABLATIONS, "all"])
  args = parser.parse_args(argv)
  from memjax.cli import enable_compilation_cache
  enable_compilation_cache()
  for name in ABLATIONS if "all" in args.names else args.names:
    run_ablation(name)
  return 0


if __name__ == "__main__":
  sys.exit(main())
