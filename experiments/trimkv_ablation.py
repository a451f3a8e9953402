"""TRIM-KV objective ablations, one command each: train gates, export them, evaluate them.

    python experiments/trimkv_ablation.py NAME [NAME ...] [--small] [--out DIR] [--runs DIR]

NAME is one of ABLATIONS (or: all); with no NAME only the results files are rewritten.
Every ablation starts from configs/trimkv_smollm2.yaml, runs the shorter schedule SHORT (so
that all of them fit in one CPU session) and changes one thing; "full_objective" changes
nothing and is the baseline they are compared with. The gates are evaluated like the shipped
ones (configs/trimkv_eval.yaml: query-agnostic single needle, ~2,000 tokens, 16 cases, and
held-out perplexity) at a 25% budget. Training resumes from its checkpoints (under --runs,
default runs/trimkv_ablations) and the evaluation from its row log, so an interrupted
command picks up where it stopped. Results go to DIR (default experiments/results):
trimkv_ablations.rows.jsonl, and .md, .csv, .png with every ablation run so far and its
final training losses. `python experiments/trimkv_report.py` puts them in trimkv_smollm2.md.

The committed rows (trimkv_ablations.*) were trained from the first recipe (the config as of
commit ca250c8: fixed M, no answer weighting, no fact supervision, one fact template); the
current recipe's variants are compared by experiments/trimkv_variants.py instead.

--small trains 2 steps of 128 tokens and evaluates 2 cases of ~300 tokens: a smoke test of a
few minutes per ablation on a CPU; give it its own --out and --runs.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys

from memjax.reproduce.registry import SMALL_EVAL

TRAIN_CONFIG = "configs/trimkv_smollm2.yaml"
EVAL_CONFIG = "configs/trimkv_eval.yaml"
RUNS = pathlib.Path("runs/trimkv_ablations")
RESULTS = pathlib.Path("experiments/results")
ROWS_NAME = "trimkv_ablations"
# 40 steps of 512 tokens with a 25% budget (M = 128): ~6 min each on 2 CPU cores.
SHORT = ["steps=40", "seq_len=512", "warmup_steps=4", "save_every=10",
         "method.trim_kv.memory_M=128"]
SMALL = ["steps=2", "seq_len=128", "warmup_steps=0", "save_every=1", "log_every=1",
         "method.trim_kv.memory_M=32"]
ABLATIONS = {
    "full_objective": [],
    "no_capacity": ["method.trim_kv.capacity_weight=0"],
    "no_kl": ["method.trim_kv.kl_weight=0"],
    "no_ce": ["method.trim_kv.ce_weight=0"],
    "width_16": ["method.trim_kv.gate_hidden=16"],
    "width_256": ["method.trim_kv.gate_hidden=256"],
}
EVAL = ["policies=[learned]", "budgets=[0.25]", "perplexity=true"]


def parse(argv: list[str] | None) -> argparse.Namespace:
  return parse_names(argv, __doc__, ABLATIONS, RESULTS, RUNS)


def parse_names(argv: list[str] | None, doc: str, choices, results: pathlib.Path,
                runs: pathlib.Path, more=lambda parser: None) -> argparse.Namespace:
  """NAME ... (some of `choices`, or all), --small, --out, --runs and what `more` adds."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("names", nargs="*", help=f"some of {', '.join(choices)}, or all")
  parser.add_argument("--small", action="store_true", help="tiny settings (a smoke test)")
  parser.add_argument("--out", type=pathlib.Path, default=results, help="results directory")
  parser.add_argument("--runs", type=pathlib.Path, default=runs,
                      help="training runs (checkpoints, metrics) go to RUNS/NAME")
  more(parser)
  args = parser.parse_args(argv)
  unknown = sorted(set(args.names) - {*choices, "all"})
  if unknown:
    parser.error(f"unknown name(s) {unknown}; choose from {[*choices, 'all']}")
  args.names = list(choices) if "all" in args.names else args.names
  return args


def gates_file(runs: pathlib.Path, name: str) -> pathlib.Path:
  """Where the gates of ablation `name` are exported."""
  return runs / name / "gates.npz"


def ablation_configs(name: str, small: bool, runs: pathlib.Path):
  """(TrainConfig, EvalConfig) of ablation `name`."""
  from memjax.config import load_config
  from memjax.eval.config import EvalConfig
  from memjax.train import load_train_config

  train = load_train_config(TRAIN_CONFIG, [*SHORT, *(SMALL if small else []), *ABLATIONS[name],
                                           f"output_dir={runs / name}"])
  evaluation = load_config(EvalConfig, EVAL_CONFIG, [
      *EVAL, *(SMALL_EVAL if small else []), f"gates={gates_file(runs, name)}"])
  return train, evaluation


def configs(argv: list[str] | None) -> dict:
  """Label -> config of every ablation the command line asks for (for run manifests)."""
  args = parse(argv)
  found = {}
  for name in args.names:
    found[f"train_{name}"], found[f"eval_{name}"] = ablation_configs(name, args.small, args.runs)
  return found


def run_ablation(name: str, small: bool, out: pathlib.Path, runs: pathlib.Path) -> None:
  """Train (or resume) ablation `name`, export its gates and evaluate them.

  The gates are exported again only when a checkpoint is newer than the file: a new file
  has a new hash, and the row log would no longer recognise the rows of the old one.
  """
  from memjax.eval.harness import evaluate
  from memjax.train import run
  from memjax.train.export import export_gates

  train_cfg, eval_cfg = ablation_configs(name, small, runs)
  run(train_cfg, progress=True)
  gates = gates_file(runs, name)
  newest = max(p.stat().st_mtime for p in train_cfg.checkpoint_path.rglob("*"))
  if not gates.exists() or gates.stat().st_mtime < newest:
    export_gates(runs / name, gates)
  accuracy, perplexity = evaluate(eval_cfg, log_path=out / f"{ROWS_NAME}.rows.jsonl")
  print(f"{name}: learned at 25% answers {100 * accuracy['accuracy']:.1f}% of "
        f"{accuracy['n']} cases; held-out perplexity {perplexity['perplexity']:.2f}")


def summarise(rows_path: pathlib.Path, runs: pathlib.Path,
              metrics: dict[str, list[dict]]) -> list[dict]:
  """One dict per ablation: its change, retrieval and perplexity at 25% (None if not run),
  and its final training losses from `metrics` (name -> logged rows)."""
  from memjax.train.metrics import read_jsonl

  rows = read_jsonl(rows_path) if rows_path.exists() else []
  by_gates = {(row["gates"].split("@")[0], row["task"]): row for row in rows}
  summary = []
  for name, change in ABLATIONS.items():
    retrieval = by_gates.get((str(gates_file(runs, name)), "single"))
    ppl = by_gates.get((str(gates_file(runs, name)), "perplexity"))
    last = metrics.get(name, [{}])[-1]
    summary.append({
        "ablation": name, "change": " ".join(change) or "none (baseline)",
        "retrieval_25": None if retrieval is None else 100 * retrieval["accuracy"],
        "n_cases": None if retrieval is None else retrieval["n"],
        "perplexity_25": None if ppl is None else ppl["perplexity"],
        **{f"final_{k}": last.get(k) for k in ("ce", "kl", "capacity")}})
  return summary


def markdown_table(summary: list[dict]) -> str:
  """The ablation table: retrieval and perplexity at 25%, final losses ("not run" if absent)."""
  lines = ["| ablation | change | retrieval @ 25% (%) | perplexity @ 25% | final CE | "
           "final KL | final capacity |", "|---|---|---:|---:|---:|---:|---:|"]
  for s in summary:
    cells = [f"{s['retrieval_25']:.1f}" if s["retrieval_25"] is not None else "not run",
             f"{s['perplexity_25']:.2f}" if s["perplexity_25"] is not None else "not run",
             *[f"{s[k]:.4g}" if s[k] is not None else "–"
               for k in ("final_ce", "final_kl", "final_capacity")]]
    lines.append(f"| {s['ablation']} | {s['change']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(summary: list[dict], path: pathlib.Path) -> None:
  """Bars of retrieval (%) and perplexity at 25% for every ablation that ran."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ran = [s for s in summary if s["retrieval_25"] is not None]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  names = [s["ablation"] for s in ran]
  axes[0].bar(names, [s["retrieval_25"] for s in ran], color="C0")
  axes[0].set(title="needle retrieval (%)", ylim=(0, 100))
  axes[1].bar(names, [s["perplexity_25"] or 0 for s in ran], color="C1")
  axes[1].set(title="held-out perplexity (lower is better)")
  for ax in axes:
    ax.tick_params(axis="x", rotation=30)
  fig.suptitle("TRIM-KV objective ablations: learned policy at a 25% KV budget")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(out: pathlib.Path, runs: pathlib.Path, small: bool) -> None:
  """trimkv_ablations.md, .csv and .png in `out` from its row log and the runs' metrics."""
  from memjax.train.metrics import read_jsonl

  metrics = {name: read_jsonl(runs / name / "metrics.jsonl") for name in ABLATIONS
             if (runs / name / "metrics.jsonl").exists()}
  summary = summarise(out / f"{ROWS_NAME}.rows.jsonl", runs, metrics)
  with (out / f"{ROWS_NAME}.csv").open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(summary[0]))
    writer.writeheader()
    writer.writerows(summary)
  plot(summary, out / f"{ROWS_NAME}.png")
  schedule = " ".join(SHORT + (SMALL if small else []))
  (out / f"{ROWS_NAME}.md").write_text("\n".join([
      "# TRIM-KV objective ablations on SmolLM2-135M" + (" (--small smoke test)" if small else ""),
      "", f"Each trains gates from {TRAIN_CONFIG} with `{schedule}` plus the change, then "
      f"evaluates `learned` at a 25% budget like {EVAL_CONFIG} (query-agnostic). "
      "`python experiments/trimkv_ablation.py NAME`.", "", markdown_table(summary), "",
      f"![ablations]({ROWS_NAME}.png)", ""]), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
  args = parse(argv)
  from memjax.cli import enable_compilation_cache
  enable_compilation_cache()
  args.out.mkdir(parents=True, exist_ok=True)
  for name in args.names:
    run_ablation(name, args.small, args.out, args.runs)
  write_results(args.out, args.runs, args.small)
  print(f"wrote {args.out / ROWS_NAME}.md, .csv and .png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
