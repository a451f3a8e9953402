"""Every ablation that `memjax reproduce NAME` runs: its commands, full and small, and outputs.

An ablation is a list of steps, each one command run from the repository root with the
current Python. Every command resumes by itself (row logs of `memjax eval`, training
checkpoints), and the runner skips the steps a previous call finished, so an interrupted
`memjax reproduce NAME` picks up where it stopped. `small=True` swaps in tiny settings
(short contexts, two or three policies, two cases, a few training steps) so that each
ablation runs in minutes on a 2-core CPU; its outputs and training runs go to separate
directories, never over the real results.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import Any, Callable

RESULTS = pathlib.Path("experiments/results")
SMALL_RESULTS = RESULTS / "small"
SMALL_RUNS = pathlib.Path("runs/small")


@dataclasses.dataclass(frozen=True)
class Step:
  """One command of an ablation.

  Attributes:
    argv: the command after the Python interpreter, run from the repository root, e.g.
      ("-m", "memjax.cli", "eval", "configs/sweep.yaml", "n_cases=16").
    configs: returns label -> resolved config (a dataclass) of what the command runs,
      for the manifest; imported lazily so that listing ablations stays cheap.
  """

  argv: tuple[str, ...]
  configs: Callable[[], dict[str, Any]] = dict


@dataclasses.dataclass(frozen=True)
class Ablation:
  """A reproducible ablation.

  Attributes:
    name: what `memjax reproduce NAME` calls it.
    compares: one line saying what it compares.
    steps: (output directory, small?) -> the commands to run, in order.
    outputs: glob patterns (relative to the output directory) that a finished run has
      written; each must match at least one file.
  """

  name: str
  compares: str
  steps: Callable[[pathlib.Path, bool], list[Step]]
  outputs: tuple[str, ...]


def _eval_step(config: str, overrides: list[str], out: pathlib.Path, label: str = "eval") -> Step:
  """`memjax eval config overrides output_dir=out`, with its EvalConfig for the manifest."""
  overrides = [*overrides, f"output_dir={out}"]

  def configs():
    from memjax.config import load_config
    from memjax.eval.config import EvalConfig
    return {label: load_config(EvalConfig, config, overrides)}

  return Step(("-m", "memjax.cli", "eval", config, *overrides), configs)


def _script_step(script: str, args: list[str]) -> Step:
  """`python experiments/SCRIPT.py args`; configs from the script's `configs(argv)` if any."""

  def configs():
    import importlib.util
    import sys
    name = f"memjax_experiment_{pathlib.Path(script).stem}"
    if name not in sys.modules:  # registered first: dataclasses look their module up
      spec = importlib.util.spec_from_file_location(name, script)
      sys.modules[name] = importlib.util.module_from_spec(spec)
      try:
        spec.loader.exec_module(sys.modules[name])
      except BaseException:
        del sys.modules[name]
        raise
    module = sys.modules[name]
    return module.configs(args) if hasattr(module, "configs") else {}

  return Step((script, *args), configs)


# Tiny retrieval settings shared by the small policy x budget runs: ~300-token contexts,
# two cases, a 25% budget, perplexity over one 128-token window.
SMALL_EVAL = ["budgets=[0.25]", "context_tokens=[300]", "n_cases=2", "batch_size=2",
              "depths=[0.5]", "prefill_chunk=128", "ppl_windows=1", "ppl_window_tokens=128",
              "ppl_chunk=32"]


def _sweep(out: pathlib.Path, small: bool) -> list[Step]:
  # The committed results are the 2,000-token, 16-case part of configs/sweep.yaml.
  overrides = (["policies=[full,window,keydiff]", *SMALL_EVAL] if small
               else ["context_tokens=[2000]", "n_cases=16"])
  return [_eval_step("configs/sweep.yaml", overrides, out)]


def _budget_schedule(out: pathlib.Path, small: bool) -> list[Step]:
  args = [f"output_dir={out}"]
  if small:
    # Pyramid budgets differ in every layer, so the 30 layers compile unrolled (~2 min).
    args += ["policies=[full,h2o]", *SMALL_EVAL, "perplexity=false"]
  else:  # its uniform rows are the sweep's (same row fingerprint)
    args += ["--reuse", str(RESULTS / "sweep.rows.jsonl")]
  return [_script_step("experiments/budget_schedule.py", args)]


def _adaptive_budgets(out: pathlib.Path, small: bool) -> list[Step]:
  args = [f"output_dir={out}"]
  if small:
    args += ["policies=[h2o,keydiff]", "gates=null", *SMALL_EVAL, "perplexity=false"]
  else:  # its uniform rows are trimkv_eval's (same row fingerprint)
    args += ["--reuse", str(RESULTS / "trimkv_eval.rows.jsonl")]
  return [_script_step("experiments/adaptive_budgets.py", args)]


def _trimkv(out: pathlib.Path, small: bool) -> list[Step]:
  names = ["full_objective", "no_capacity"] if small else ["all"]
  runs = ["--small", "--runs", str(SMALL_RUNS / "trimkv_ablations")] if small else []
  return [_script_step("experiments/trimkv_ablation.py", [*names, "--out", str(out), *runs])]


MEMORY_RUNS = ("dense", "dense2x", "pkm", "memory_plus")


def _memory(out: pathlib.Path, small: bool) -> list[Step]:
  steps = []
  for name in MEMORY_RUNS:
    runs = ["--small", f"output_dir={SMALL_RUNS / f'memory_{name}'}"] if small else []
    steps.append(_script_step("experiments/memory_ablation.py",
                              [name, "--out", str(out), *runs]))
  return steps


def _assoc_recall(out: pathlib.Path, small: bool) -> list[Step]:
  return [_script_step("experiments/assoc_recall.py",
                       [*(["--small"] if small else []), "--out", str(out)])]


def _ruler(out: pathlib.Path, small: bool) -> list[Step]:
  # Small: 1,000 tokens (vt's solved example alone takes 500), two cases, two cheap policies
  # (compactor took up to 7 minutes a cell here).
  # The Gemma 3 panel (its rows shown in ruler.md through `include`) runs first, and not in
  # the small version.
  if small:
    return [_eval_step("configs/ruler.yaml", [
        "policies=[full,streaming]", "budgets=[0.25]", "context_tokens=[1000]", "n_cases=2",
        "batch_size=2", "prefill_chunk=128", "include=[]"], out)]
  return [_eval_step("configs/ruler_gemma3.yaml", [], out),
          _eval_step("configs/ruler.yaml", [], out)]


ABLATIONS = {a.name: a for a in [
    Ablation("sweep", "every eviction policy x budget (50/25/12.5%) on SmolLM2-135M: "
             "needle retrieval and held-out perplexity", _sweep,
             ("sweep.md", "sweep.csv", "sweep_single_*.png")),
    Ablation("budget_schedule", "uniform vs pyramid per-layer budgets (same mean) for "
             "h2o, snapkv, keydiff at 25/12.5% on SmolLM2-135M", _budget_schedule,
             ("budget_schedule.md", "budget_schedule.csv", "budget_schedule_single_*.png")),
    Ablation("adaptive_budgets", "uniform vs per-head (AdaKV-style) vs cross-layer allocation "
             "of the slots for snapkv, keydiff, h2o, tova, learned at 25/12.5%",
             _adaptive_budgets, ("adaptive_budgets.md", "adaptive_budgets.csv",
                                 "adaptive_budgets_single_*.png", "adaptive_budgets_slots.png",
                                 "adaptive_budgets_layer_slots.png")),
    Ablation("trimkv_ablations", "TRIM-KV objective ablations (no capacity / KL / CE loss, "
             "gate width): learned retrieval and perplexity at 25%", _trimkv,
             ("trimkv_ablations.md", "trimkv_ablations.csv", "trimkv_ablations.png")),
    Ablation("memory_layers", "from-scratch byte models: dense, 2x deeper dense, PKM, "
             "Memory+: held-out perplexity and key usage", _memory,
             ("memory_layers.md", "memory_layers.csv", "memory_curves.png", "memory_usage.png")),
    Ablation("assoc_recall", "associative recall: sliding window vs neural memory vs full "
             "attention", _assoc_recall, ("assoc_recall.md", "assoc_recall.csv",
                                           "assoc_recall.png")),
    Ablation("ruler", "RULER's 11 synthetic tasks on SmolLM2-135M at 2k tokens (every policy at "
             "50/25/12.5% kept) and Gemma 3 270M at 4k (25/12.5%): average score with "
             "standard errors", _ruler,
             ("ruler.md", "ruler.csv", "ruler_leaderboard.png")),
]}


def get_ablation(name: str) -> Ablation:
  """The ablation called `name`.

  Raises:
    ValueError: unknown name; the message names the nearest one and lists them all.
  """
  if name not in ABLATIONS:
    nearest = difflib.get_close_matches(name, list(ABLATIONS), n=1, cutoff=0.0)[0]
    raise ValueError(f"unknown ablation {name!r}; did you mean {nearest!r}? "
                     f"(`memjax reproduce --list` shows all: {', '.join(ABLATIONS)})")
  return ABLATIONS[name]
