"""The `memjax` command line: `memjax eval|train CONFIG [key=value ...]`, `generate`,
`export-gates`, `reproduce NAME [--small]`."""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys


def enable_compilation_cache() -> None:
  """Keep compiled XLA programs on disk so that a second run skips compilation."""
  import jax
  path = os.environ.get("MEMJAX_COMPILATION_CACHE",
                        str(pathlib.Path.home() / ".cache" / "memjax" / "xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _eval(args) -> None:
  from memjax.config import load_config
  from memjax.eval import report
  from memjax.eval.config import EvalConfig
  from memjax.eval.harness import evaluate, included_rows, log_path

  cfg = load_config(EvalConfig, args.config, args.overrides)
  rows = evaluate(cfg, log_path=log_path(cfg))
  others, missing = included_rows(cfg)
  for line in missing:
    print(f"memjax eval: included config not finished: {line}", file=sys.stderr)
  rows += others
  paths = report.write_report(rows, cfg)
  print()
  print(report.format_table(rows, cfg.protocol))
  print()
  for kind, path in paths.items():
    print(f"wrote {kind.split(':')[0]}: {path}")


def _generate(args) -> None:
  import memjax
  lm = memjax.load(args.model, args.dtype, gates=args.gates)
  text = lm.generate(args.prompt, policy=args.policy, budget=args.budget,
                     max_new_tokens=args.max_new_tokens, prefill_chunk=args.prefill_chunk,
                     temperature=args.temperature, question=args.question,
                     budget_schedule=args.schedule, progress=True)
  print(text)


def _train(args) -> None:
  from memjax.train import load_train_config, run

  cfg = load_train_config(args.config, args.overrides, allow_gin_imports=args.gin_imports)
  state = run(cfg, progress=True)
  print(f"trained to step {int(state.step)} of {cfg.steps}; checkpoints in "
        f"{cfg.checkpoint_path}, metrics in {cfg.output_dir}")


def _export_gates(args) -> None:
  from memjax.train.export import export_gates

  path = export_gates(args.run_dir, args.out, args.step)
  print(f"wrote gates: {path} ({path.stat().st_size / 1e6:.1f} MB); use them with "
        f"memjax.load(..., gates={str(path)!r}) or `memjax eval ... gates={path}`")


def _validate(args) -> None:
  from memjax.train.validation import BEST_GATES, validate_run

  rows = validate_run(args.run_dir, n_cases=args.cases, kept_fraction=args.kept,
                      seq_len=args.seq_len)
  for row in rows:
    print(f"step {row['step']:>6}: accuracy {100 * row['accuracy']:5.1f}%  fact/prose "
          f"half-life {row['half_life_ratio']:.2f} ({row['fact_half_life']:.0f} / "
          f"{row['prose_half_life']:.0f} tokens)")
  if rows:
    best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))
    print(f"best: step {best['step']}; its gates: {pathlib.Path(args.run_dir) / BEST_GATES}")


def _reproduce(args) -> None:
  from memjax import reproduce

  if args.list or args.name is None:
    width = max(map(len, reproduce.ABLATIONS))
    for name, ablation in reproduce.ABLATIONS.items():
      print(f"{name.ljust(width)}  {ablation.compares}")
    return
  try:
    record = reproduce.reproduce(args.name, small=args.small, out=args.out, redo=args.redo)
  except reproduce.ReproduceError as err:
    raise SystemExit(f"memjax reproduce: error: {err}") from err
  out = pathlib.Path(record["out_dir"])
  print(f"{args.name}: wrote {', '.join(record['outputs'])} in {out}; manifest: "
        f"{reproduce.manifest_path(args.name, out)}")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="memjax", description="Memory-bounded attention in JAX.")
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--debug", action="store_true",
                      help="show the full traceback of an error instead of one message")
  sub = p.add_subparsers(dest="command", required=True)
  add_command = functools.partial(sub.add_parser, parents=[common])

  ev = add_command("eval", help="policy x budget evaluation from a YAML config")
  ev.add_argument("config", help="YAML file with EvalConfig fields (see configs/)")
  ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. n_cases=16")
  ev.set_defaults(run=_eval)

  tr = add_command("train", help="train (or resume training) from a YAML or gin config")
  tr.add_argument("config", help="YAML or .gin file with TrainConfig fields")
  tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 lr=1e-4")
  tr.add_argument("--gin-imports", action="store_true",
                  help="let a .gin config's `import` lines run (they import Python modules, "
                       "running their code); refused without this flag")
  tr.set_defaults(run=_train)

  ex = add_command("export-gates", help="write a TRIM-KV run's trained gates to an .npz")
  ex.add_argument("run_dir", help="output_dir of a `memjax train` run with method trim_kv")
  ex.add_argument("--out", required=True, help="gate file to write (.npz)")
  ex.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  ex.set_defaults(run=_export_gates)

  va = add_command("validate", help="score every checkpoint of a TRIM-KV run on training-like "
                   "retrieval cases; export the best one's gates")
  va.add_argument("run_dir", help="output_dir of a `memjax train` run with method trim_kv")
  va.add_argument("--cases", type=int, default=32, help="validation cases")
  va.add_argument("--kept", type=float, default=0.25, help="kept fraction of each context")
  va.add_argument("--seq-len", type=int, default=None,
                  help="tokens per case (default: the run's seq_len)")
  va.set_defaults(run=_validate)

  gen = add_command("generate", help="generate text under a KV budget")
  gen.add_argument("prompt")
  gen.add_argument("--model", default="smollm2-135m")
  gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  gen.add_argument("--policy", default="full")
  gen.add_argument("--gates", default=None,
                   help='retention gates for --policy learned: "trimkv" (shipped) or an .npz')
  gen.add_argument("--budget", type=int, default=None, help="KV slots per layer")
  gen.add_argument("--schedule", default="uniform", choices=["uniform", "pyramid"])
  gen.add_argument("--question", default=None, help="appended after compression")
  gen.add_argument("--max-new-tokens", type=int, default=32)
  gen.add_argument("--prefill-chunk", type=int, default=512)
  gen.add_argument("--temperature", type=float, default=0.0)
  gen.set_defaults(run=_generate)

  rp = add_command("reproduce", help="run one ablation of experiments/ end to end (resumable)")
  rp.add_argument("name", nargs="?", help="ablation name (see --list)")
  rp.add_argument("--list", action="store_true", help="list the ablations and exit")
  rp.add_argument("--small", action="store_true",
                  help="tiny settings (minutes on a CPU) into experiments/results/small/")
  rp.add_argument("--out", default=None, help="output directory (default experiments/results, "
                  "or experiments/results/small with --small)")
  rp.add_argument("--redo", action="store_true", help="rerun steps a previous call finished")
  rp.set_defaults(run=_reproduce)
  return p


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  """`parser().parse_args(argv)`, except that key=value overrides may also follow options,
  as in `memjax train c.yaml --debug steps=3` (argparse alone stops at the option)."""
  p = parser()
  args, rest = p.parse_known_args(argv)
  if rest and hasattr(args, "overrides") and all("=" in a and not a.startswith("-")
                                                 for a in rest):
    args.overrides += rest
  elif rest:
    p.error(f"unrecognized arguments: {' '.join(rest)}")
  return args


# What a user can fix: configs and arguments (ValueError, including ConfigError and YAML or
# gin syntax), paths and permissions (OSError, including CheckpointError).
USER_ERRORS = (ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
  """Run one command; 0 on success, 2 on a user error, which is printed as one message
  naming the file or argument (with `--debug`: raised, with its traceback)."""
  args = _parse_args(argv)
  enable_compilation_cache()
  try:
    args.run(args)
  except USER_ERRORS as err:
    if args.debug:
      raise
    print(f"memjax {args.command}: error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
