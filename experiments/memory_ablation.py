"""One from-scratch memory-layer ablation run: train, measure held-out perplexity and key usage.

  python experiments/memory_ablation.py NAME [--steps N] [--smoke | --small] [--out DIR]
                                       [key=value ...]

NAME picks configs/memory_NAME.yaml (dense, dense2x, pkm, memory_plus). The run trains with
the "memory" method, the memory value tables in their own Adam group (constant
method.memory.values_lr, no weight decay) with `memjax.train.run` (checkpointed: run it
again to resume), then writes to DIR (default experiments/results/):

  memory_layers.rows.jsonl       one row per run (replaced when NAME runs again)
  memory_runs/NAME.curve.jsonl   training loss every log_every steps
  memory_runs/NAME.usage.npz     per-slot lookup mass on the held-out windows, per memory block
  memory_layers.md, .csv         the validation table of every row so far
  memory_curves.png, memory_usage.png

--smoke trains a few steps into a temporary directory and prints s/step (for the configs'
comments) instead of writing results. --small trains 3 steps of 2 x 64 bytes and validates
on 8 windows: a smoke test of the whole pipeline (give it its own --out and output_dir=...).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
import tempfile

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memjax.config import load_config  # noqa: E402
from memjax.data.corpus import heldout_windows  # noqa: E402
from memjax.memory import decoder, usage  # noqa: E402
from memjax.train.config import TrainConfig  # noqa: E402
from memjax.train.data import ByteTokenizer  # noqa: E402
from memjax.train.methods import memory_model_config  # noqa: E402
from memjax.train.partition import merge  # noqa: E402
from memjax.train.run import run, setup, tiny_model_config  # noqa: E402
from memjax.train.metrics import read_jsonl  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
VAL_WINDOWS, VAL_BATCH = 64, 8
SMALL = ["steps=3", "seq_len=64", "batch_size=2", "warmup_steps=0", "save_every=3",
         "log_every=1"]
SMALL_VAL_WINDOWS = 8


def train(cfg: TrainConfig, curve_path: pathlib.Path | None):
  """Train (or resume) with `memjax.train.run`; (trainable, frozen, loss_fn, mean s/step).

  The logged metrics (every log_every steps) are copied to `curve_path`.
  """
  state = run(cfg, progress=True)
  loss_fn, _, frozen, _ = setup(cfg)
  rows = read_jsonl(pathlib.Path(cfg.output_dir) / "metrics.jsonl")
  if curve_path is not None:
    curve_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  seconds = [cfg.batch_size * cfg.seq_len / r["tokens_per_s"] for r in rows[1:] or rows]
  return state.trainable, frozen, loss_fn, float(np.mean(seconds))


def validate(cfg: TrainConfig, params, loss_fn, trainable, frozen, n_windows: int = VAL_WINDOWS):
  """Held-out perplexity over `n_windows` windows of seq_len tokens, and per memory block
  the summed lookup mass per slot [n_slots]."""
  windows = heldout_windows(ByteTokenizer(), n_windows, cfg.seq_len, seed=0)
  model_cfg = memory_model_config(tiny_model_config(cfg), cfg)
  ce = jax.jit(lambda t, f, b: loss_fn(t, f, b, jax.random.PRNGKey(0))[0])
  lookups = jax.jit(lambda p, tokens: decoder.forward(p, tokens, model_cfg)[1])
  losses, masses = [], None
  for start in range(0, n_windows, VAL_BATCH):
    tokens = windows[start:start + VAL_BATCH]
    losses.append(float(ce(trainable, frozen, {"tokens": tokens})))
    if model_cfg.memory is not None and model_cfg.memory.kind != "titans":
      per_block = [usage.slot_mass(lk.slots, lk.weights, model_cfg.memory.n_slots)
                   for lk in lookups(params, tokens[:, :-1])]
      masses = per_block if masses is None else [a + b for a, b in zip(masses, per_block)]
  return math.exp(float(np.mean(losses))), [np.asarray(m) for m in masses or []]


def count_params(params) -> tuple[int, int]:
  """(all params, params read per token): value tables count fully in the first, not in
  the second (a token reads heads·topk rows); unused MLPs of replaced blocks in neither."""
  total = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  values = sum(int(np.prod(a.shape)) for path, a in jax.tree_util.tree_leaves_with_path(params)
               if path[0].key == "memory" and path[-1].key == "values")
  return total, total - values


CSV_COLUMNS = ("name", "n_layers", "params", "params_per_token", "steps", "s_per_step",
               "val_ppl", "used", "kl", "gini")


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
  """One line per run; usage columns of the first memory block (empty without one)."""
  with path.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, **(r["usage"][0] if r["usage"] else {})} for r in rows)


def write_report(rows: list[dict], out: pathlib.Path, small: bool) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  write_csv(rows, out / "memory_layers.csv")
  lines = ["# Memory layers: from-scratch ablations (byte-level, Emma train split)"
           + (" (--small smoke test, not a result)" if small else ""), "",
           "| run | layers | params | params/token | steps | s/step | val ppl | "
           "slots used | KL to uniform | Gini |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    u = r["usage"][0] if r["usage"] else None
    fmt = lambda key: f"{u[key]:.3f}" if u else "-"
    lines.append(f"| {r['name']} | {r['n_layers']} | {r['params']:,} | {r['params_per_token']:,} "
                 f"| {r['steps']} | {r['s_per_step']:.2f} | {r['val_ppl']:.3f} | {fmt('used')} "
                 f"| {fmt('kl')} | {fmt('gini')} |")
  lines += ["", "Usage columns: first memory block, over the held-out windows. s/step is the "
            "training run's own mean, on a CPU shared with other jobs; for a fair speed "
            "comparison see memory_step_time.md (`python experiments/memory_step_time.py`).",
            "![curves](memory_curves.png) ![usage](memory_usage.png)", ""]
  (out / "memory_layers.md").write_text("\n".join(lines))
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    curve = [json.loads(l) for l in (out / "memory_runs" / f"{r['name']}.curve.jsonl")
             .read_text().splitlines()]
    ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], label=r["name"])
  ax.set(xlabel="step", ylabel="train loss (nats/byte)")
  ax.legend()
  fig.savefig(out / "memory_curves.png", dpi=120, bbox_inches="tight")
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    path = out / "memory_runs" / f"{r['name']}.usage.npz"
    if r["usage"] and path.exists():
      mass = np.load(path)["block0"]
      ax.plot(np.sort(mass)[::-1] / mass.sum(), label=r["name"])
  ax.set(xlabel="slot (by mass)", ylabel="share of lookup mass", yscale="log")
  ax.legend()
  fig.savefig(out / "memory_usage.png", dpi=120, bbox_inches="tight")


def parse(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", help="dense, dense2x, pkm or memory_plus")
  parser.add_argument("--steps", type=int, help="override steps")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--smoke", action="store_true", help="a few steps, print s/step only")
  mode.add_argument("--small", action="store_true", help="tiny settings (a smoke test)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results directory")
  parser.add_argument("overrides", nargs="*", help="key=value config overrides")
  return parser.parse_intermixed_args(argv)


def load_run_config(args: argparse.Namespace, output_dir: str | None = None) -> TrainConfig:
  """The TrainConfig of `args` (configs/memory_NAME.yaml plus the flags' overrides)."""
  overrides = [*(SMALL if args.small else []), *args.overrides]
  if args.smoke:
    overrides += [f"steps={args.steps or 4}", "warmup_steps=1", "log_every=1"]
  elif args.steps:
    overrides.append(f"steps={args.steps}")
  if output_dir is not None:
    overrides.append(f"output_dir={output_dir}")
  return load_config(TrainConfig, str(ROOT / "configs" / f"memory_{args.name}.yaml"), overrides)


def configs(argv: list[str] | None) -> dict[str, TrainConfig]:
  """{"memory_NAME": its TrainConfig} for the command line `argv` (for run manifests)."""
  args = parse(argv)
  return {f"memory_{args.name}": load_run_config(args)}


def main(argv: list[str] | None = None):
  args = parse(argv)
  with tempfile.TemporaryDirectory() as tmp:
    # --smoke never resumes a real run's checkpoints
    cfg = load_run_config(args, tmp if args.smoke else None)
    runs = args.out / "memory_runs"
    runs.mkdir(parents=True, exist_ok=True)
    trainable, frozen, loss_fn, s_per_step = train(
        cfg, None if args.smoke else runs / f"{args.name}.curve.jsonl")
  print(f"{args.name}: {s_per_step:.3f} s/step (mean after the first step)")
  if args.smoke:
    return
  params = merge(trainable, frozen)
  ppl, masses = validate(cfg, params, loss_fn, trainable, frozen,
                         SMALL_VAL_WINDOWS if args.small else VAL_WINDOWS)
  np.savez(runs / f"{args.name}.usage.npz", **{f"block{i}": m for i, m in enumerate(masses)})
  total, per_token = count_params(params)
  unused = 0
  mem = cfg.method.memory.memory
  if mem.layers and mem.kind != "titans" and mem.placement == "replace_mlp":
    unused = len(mem.layers) * 3 * cfg.method.memory.d_model * cfg.method.memory.d_ff
  row = {"name": args.name, "n_layers": cfg.method.memory.n_layers, "steps": cfg.steps,
         "params": total - unused, "params_per_token": per_token - unused,
         "s_per_step": s_per_step, "val_ppl": ppl,
         "usage": [{k: float(v) for k, v in usage.usage_metrics(m).items()} for m in masses]}
  rows_path = args.out / "memory_layers.rows.jsonl"
  rows = [json.loads(l) for l in rows_path.read_text().splitlines()] if rows_path.exists() else []
  rows = [r for r in rows if r["name"] != args.name] + [row]
  rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  write_report(rows, args.out, args.small)
  print(json.dumps(row))


if __name__ == "__main__":
  main()
