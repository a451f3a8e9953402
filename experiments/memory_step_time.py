"""Train-step time of the memory-layer ablation models, measured side by side in one process.

  python experiments/memory_step_time.py [--rounds N] [--steps-per-round K]

The s/step column of memory_layers.md comes from the training runs themselves, which shared
the CPU with other jobs; this benchmark compiles the train step of every
configs/memory_NAME.yaml model (dense, dense2x, pkm, memory_plus) and then times them in
interleaved rounds (K steps of each model per round, N rounds), so that load changes hit all
models alike. Reports the median s/step and the ratio to dense in
experiments/results/memory_step_time.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memjax.train import TrainConfig, init_state, load_train_config, make_optimizer  # noqa: E402
from memjax.train.run import setup_run  # noqa: E402
from memjax.train.trainer import make_train_step  # noqa: E402

NAMES = ("dense", "dense2x", "pkm", "memory_plus")
RESULTS = ROOT / "experiments" / "results"


def compiled_step(cfg: TrainConfig):
  """(step(state) -> state, initial state) of cfg's model on one fixed batch, compiled."""
  parts = setup_run(cfg)
  optimizer, schedule = make_optimizer(cfg)
  state = init_state(parts.trainable, optimizer, cfg.seed)
  train_step = make_train_step(parts.loss_fn, optimizer, cfg.grad_accum, schedule)
  batch = parts.data.batch(0)
  step = lambda s: train_step(s, parts.frozen, batch)[0]
  state = jax.block_until_ready(step(state))  # compile and warm up
  return step, state


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps-per-round", type=int, default=3)
  args = parser.parse_args(argv)
  cfgs = {name: load_train_config(str(ROOT / "configs" / f"memory_{name}.yaml"), [])
          for name in NAMES}
  steps, states = {}, {}
  for name in NAMES:
    print(f"compiling {name}", flush=True)
    steps[name], states[name] = compiled_step(cfgs[name])
  seconds = {name: [] for name in NAMES}
  for round_index in range(args.rounds):
    for name in NAMES:
      tick = time.perf_counter()
      for _ in range(args.steps_per_round):
        states[name] = steps[name](states[name])
      jax.block_until_ready(states[name])
      seconds[name].append((time.perf_counter() - tick) / args.steps_per_round)
    print(f"round {round_index + 1}/{args.rounds}: "
          + ", ".join(f"{n} {seconds[n][-1]:.3f}s" for n in NAMES), flush=True)
  median = {name: float(np.median(s)) for name, s in seconds.items()}
  cfg = cfgs["dense"]
  lines = ["# Memory layers: train-step time, side by side", "",
           f"One process, {jax.device_count()} {jax.devices()[0].platform} device(s); batch "
           f"{cfg.batch_size} x {cfg.seq_len} bytes; median of {args.rounds} interleaved "
           f"rounds of {args.steps_per_round} steps per model.", "",
           "| model | s/step | tokens/s | time vs dense |", "|---|---:|---:|---:|"]
  for name in NAMES:
    tokens = cfgs[name].batch_size * cfgs[name].seq_len
    lines.append(f"| {name} | {median[name]:.3f} | {tokens / median[name]:,.0f} | "
                 f"{median[name] / median['dense']:.2f}x |")
  (RESULTS / "memory_step_time.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
