"""The fast experiment loop for TRIM-KV gates: train a variant briefly, score it on validation.

    python experiments/trimkv_variants.py NAME [NAME ...] [--small] [--out DIR] [--runs DIR]

NAME is one of VARIANTS (or: all); with no NAME only the table is rewritten. Each variant
trains from configs/trimkv_smollm2.yaml (the current recipe) on the short schedule SHORT,
changing one switch, then `memjax.train.validation.validate_run` scores every checkpoint:
retrieval accuracy of `learned` at a 25% budget on 32 training-like cases of 1,024 tokens
(drawn from a seed training never uses; never the evaluation's names, templates or
haystack) and the fact / prose half-life ratio. One row per variant (its best checkpoint)
goes to DIR/trimkv_variants.md and .csv, beside the oracle bound and the heuristics on the
same cases (`--bounds`). Training resumes from its checkpoints under --runs (default
runs/trimkv_variants) and validation from each run's validation.jsonl.

--small trains 2 steps of 128 tokens and validates 2 cases of 192 tokens (a smoke test).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from trimkv_ablation import parse_names  # noqa: E402

TRAIN_CONFIG = "configs/trimkv_smollm2.yaml"
RUNS = pathlib.Path("runs/trimkv_variants")
RESULTS = pathlib.Path("experiments/results")
NAME = "trimkv_variants"
# 60 steps of 512 tokens, a 25% capacity budget: ~7 min of 2 idle CPU cores per variant.
SHORT = ["steps=60", "seq_len=512", "warmup_steps=4", "save_every=20", "keep=5",
         "method.trim_kv.memory_M=64"]
SMALL = ["steps=2", "seq_len=128", "warmup_steps=0", "save_every=1", "log_every=1",
         "method.trim_kv.memory_M=32"]
VALIDATION = {"n_cases": 32, "seq_len": 1024, "kept_fraction": 0.25}
SMALL_VALIDATION = {"n_cases": 2, "seq_len": 192, "kept_fraction": 0.25}
VARIANTS = {
    "recipe": [],
    "no_answer_weight": ["method.trim_kv.answer_weight=0"],
    "answer_weight_4": ["method.trim_kv.answer_weight=4"],
    "fixed_M": ["method.trim_kv.memory_ratio=0", "method.trim_kv.memory_M=128"],
    "one_template_one_domain": ["fact_templates=1", "corpus_splits=[train]"],
    "width_512": ["method.trim_kv.gate_hidden=512"],
    "bias_10_lr_1e-2": ["method.trim_kv.gate_bias_init=10", "lr=1e-2"],
}
BOUNDS = ["full", "oracle", "keydiff", "streaming", "h2o", "snapkv", "tova", "window"]


def parse(argv: list[str] | None) -> argparse.Namespace:
  return parse_names(argv, __doc__, VARIANTS, RESULTS, RUNS, lambda parser: parser.add_argument(
      "--bounds", action="store_true",
      help="also score full cache, the oracle and the heuristics on the cases"))


def variant_config(name: str, small: bool, runs: pathlib.Path):
  """The TrainConfig of variant `name`."""
  from memjax.train import load_train_config
  return load_train_config(TRAIN_CONFIG, [*SHORT, *(SMALL if small else []), *VARIANTS[name],
                                          f"output_dir={runs / name}"])


def configs(argv: list[str] | None) -> dict:
  """Label -> config of every variant the command line asks for (for run manifests)."""
  args = parse(argv)
  return {f"train_{name}": variant_config(name, args.small, args.runs) for name in args.names}


def run_variant(name: str, small: bool, runs: pathlib.Path) -> list[dict]:
  """Train (or resume) variant `name`, then validate its checkpoints; their rows."""
  from memjax.train import run
  from memjax.train.validation import validate_run

  run(variant_config(name, small, runs), progress=True)
  return validate_run(runs / name, **(SMALL_VALIDATION if small else VALIDATION))


def bounds(small: bool, out: pathlib.Path) -> list[dict]:
  """Full cache, oracle and heuristics on the same validation cases (resumable rows)."""
  from memjax.lm import load
  from memjax.train import load_train_config
  from memjax.train.validation import validate, validation_cases

  path = out / f"{NAME}_bounds.jsonl"
  settings = SMALL_VALIDATION if small else VALIDATION
  rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  rows = [r for r in rows if all(r.get(k) == v for k, v in settings.items())]
  todo = [p for p in BOUNDS if p not in {r["policy"] for r in rows}]
  if todo:
    cfg = load_train_config(TRAIN_CONFIG)
    lm = load(cfg.model)
    cases = validation_cases(lm.tokenizer, cfg, settings["n_cases"], settings["seq_len"])
    for policy in todo:
      kept = 1.0 if policy == "full" else settings["kept_fraction"]
      row = {"policy": policy, **validate(lm.params, lm.cfg, lm.tokenizer, cases, kept,
                                          policy=policy, half_lives=False), **settings}
      with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
      rows.append(row)
  return rows


def summarise(runs: pathlib.Path, small: bool) -> list[dict]:
  """One row per variant that has validation rows: its best checkpoint and final losses."""
  from memjax.train.metrics import read_jsonl

  settings = SMALL_VALIDATION if small else VALIDATION
  summary = []
  for name, change in VARIANTS.items():
    path = runs / name / "validation.jsonl"
    rows = [r for r in (read_jsonl(path) if path.exists() else [])
            if r["n"] == settings["n_cases"] and r["seq_len"] == settings["seq_len"]]
    if not rows:
      continue
    best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))
    last = read_jsonl(runs / name / "metrics.jsonl")[-1]
    summary.append({"variant": name, "change": " ".join(change) or "none (the recipe)",
                    "best_step": best["step"], "accuracy": 100 * best["accuracy"],
                    "last_accuracy": 100 * rows[-1]["accuracy"],
                    "half_life_ratio": best["half_life_ratio"],
                    "fact_half_life": best["fact_half_life"],
                    "prose_half_life": best["prose_half_life"],
                    **{f"final_{k}": last.get(k) for k in ("ce", "kl", "capacity", "answer_kl")}})
  return summary


def write_results(out: pathlib.Path, runs: pathlib.Path, small: bool,
                  bound_rows: list[dict]) -> None:
  """trimkv_variants.md and .csv in `out`."""
  summary = summarise(runs, small)
  settings = SMALL_VALIDATION if small else VALIDATION
  lines = [f"# TRIM-KV variants on SmolLM2-135M{' (--small smoke test)' if small else ''}", "",
           f"Each variant trains from {TRAIN_CONFIG} with `{' '.join(SHORT + (SMALL if small else []))}`"
           " plus its change; `learned` is scored at a "
           f"{100 * settings['kept_fraction']:.0f}% budget on {settings['n_cases']} "
           f"training-like validation cases of {settings['seq_len']} tokens (query-agnostic), "
           "at its best checkpoint. `python experiments/trimkv_variants.py NAME`.", ""]
  if bound_rows:
    lines += ["Bounds on the same cases:", "", "| policy | accuracy (%) |", "|---|---:|"]
    lines += [f"| {r['policy']} | {100 * r['accuracy']:.1f} |" for r in bound_rows]
    lines.append("")
  lines += ["| variant | change | accuracy (%) | at step | last ckpt (%) | fact/prose half-life "
            "| fact, prose half-life (tokens) | final KL | final answer KL | final capacity |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  fmt = lambda v: "–" if v is None else f"{v:.4g}"
  for s in summary:
    lines.append(f"| {s['variant']} | {s['change']} | {s['accuracy']:.1f} | {s['best_step']} | "
                 f"{s['last_accuracy']:.1f} | {s['half_life_ratio']:.2f} | "
                 f"{s['fact_half_life']:.0f}, {s['prose_half_life']:.0f} | "
                 f"{fmt(s['final_kl'])} | {fmt(s['final_answer_kl'])} | {fmt(s['final_capacity'])} |")
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{NAME}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
  if summary:
    with (out / f"{NAME}.csv").open("w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=list(summary[0]))
      writer.writeheader()
      writer.writerows(summary)


def main(argv: list[str] | None = None) -> int:
  args = parse(argv)
  from memjax.cli import enable_compilation_cache
  enable_compilation_cache()
  args.out.mkdir(parents=True, exist_ok=True)
  bound_rows = bounds(args.small, args.out) if args.bounds else []
  for name in args.names:
    run_variant(name, args.small, args.runs)
  write_results(args.out, args.runs, args.small, bound_rows)
  print(f"wrote {args.out / NAME}.md and .csv")
  return 0


if __name__ == "__main__":
  sys.exit(main())
