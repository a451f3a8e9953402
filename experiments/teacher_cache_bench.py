"""Sequences per hour of TRIM-KV training with the teacher run every step against cached.

    python experiments/teacher_cache_bench.py [--steps N] [--seq-len T] [--topk K]

Builds the TRIM-KV loss of configs/trimkv_smollm2.yaml twice (method.trim_kv.teacher_topk 0
and K), compiles one gradient step of each, and then times them alternately on the same
batches, in one process, so that the ratio is fair on a noisy machine. The cached variant's
teacher outputs are computed beforehand (what a first run, or `memjax train` on first
sight of a batch, pays once per row); that cost is reported too. Writes
experiments/results/teacher_cache.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

OUT = pathlib.Path("experiments/results/teacher_cache.md")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
  parser.add_argument("--seq-len", type=int, default=1024)
  parser.add_argument("--topk", type=int, default=64)
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)

  import jax
  import numpy as np
  from memjax.cli import enable_compilation_cache
  from memjax.models import llama
  from memjax.train import load_train_config
  from memjax.train.run import setup_run
  from memjax.train.teacher import teacher_topk

  enable_compilation_cache()
  cfg = load_train_config("configs/trimkv_smollm2.yaml", [f"seq_len={args.seq_len}"])
  parts = setup_run(cfg)
  cached_cfg = dataclasses.replace(cfg, method=dataclasses.replace(
      cfg.method, trim_kv=dataclasses.replace(cfg.method.trim_kv, teacher_topk=args.topk)))
  cached_loss = setup_run(cached_cfg).loss_fn
  grad = lambda loss_fn: jax.jit(jax.grad(lambda t, f, b: loss_fn(t, f, b, None)[0]))
  exact_step, cached_step = grad(parts.loss_fn), grad(cached_loss)
  teacher = jax.jit(lambda p, x: teacher_topk(p, x, parts.model_cfg, args.topk))
  frozen = llama.cast_params(parts.frozen, parts.model_cfg)

  batches = [parts.data.batch(i) for i in range(args.steps + 1)]
  started = time.perf_counter()
  teacher_outputs = []
  for batch in batches:
    ids, logp = jax.block_until_ready(teacher(frozen, batch["tokens"]))
    teacher_outputs.append({"teacher_ids": np.asarray(ids), "teacher_logp": np.asarray(logp)})
  teacher_s = (time.perf_counter() - started) / len(batches)  # includes one compile

  times = {"exact": [], "cached": []}
  for i, batch in enumerate(batches):  # batch 0 compiles both steps and is not timed
    for name, step, extra in (("exact", exact_step, {}), ("cached", cached_step,
                                                          teacher_outputs[i])):
      tick = time.perf_counter()
      jax.block_until_ready(step(parts.trainable, parts.frozen, {**batch, **extra}))
      if i:
        times[name].append(time.perf_counter() - tick)
  exact, cached = (statistics.median(times[n]) for n in ("exact", "cached"))
  rows = batches[0]["tokens"].shape[0]
  lines = [
      "# TRIM-KV step time: teacher every step against cached top-k teacher outputs", "",
      f"`python experiments/teacher_cache_bench.py --steps {args.steps} --seq-len "
      f"{args.seq_len} --topk {args.topk}`: SmolLM2-135M, float32, {rows} x {args.seq_len} "
      f"tokens per step, {jax.device_count()} {jax.default_backend()} device(s); median of "
      f"{args.steps} alternating steps after one compile each, in one process.", "",
      "| variant | s / step | sequences / hour | ratio |", "|---|---:|---:|---:|",
      f"| teacher every step | {exact:.2f} | {3600 * rows / exact:.0f} | 1.00 |",
      f"| cached top-{args.topk} | {cached:.2f} | {3600 * rows / cached:.0f} | "
      f"{exact / cached:.2f} |", "",
      f"Computing the teacher's top-{args.topk} once per batch costs {teacher_s:.2f} s (mean "
      "over the batches, one compile included); it pays off from the second use of a row "
      "(the variants of the fast loop, a resumed run, another epoch).", ""]
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text("\n".join(lines), encoding="utf-8")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
