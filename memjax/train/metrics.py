"""Training metrics: JSONL and TensorBoard logs of windowed means, and a progress bar."""

from __future__ import annotations

import collections
import importlib
import json
import pathlib
import sys

import tqdm

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
  """Every `log_every` steps, the mean of each metric over those steps.

  Writes one JSON object per line to `output_dir`/metrics.jsonl ({"step": 20, "loss": ...})
  and the same scalars as TensorBoard events under `output_dir`/tensorboard/ (tag "train/<name>").
  A run started at `start_step` first drops the rows logged after it (by a killed run, or
  by an earlier run in the same directory), and tells TensorBoard to hide such events.

  Args:
    output_dir: directory for the logs (created if missing).
    log_every: steps per logged row.
    start_step: steps already taken (0 for a new run).
  """

  def __init__(self, output_dir: str | pathlib.Path, log_every: int, start_step: int = 0):
    self.log_every = log_every
    self._sums: dict[str, float] = collections.defaultdict(float)
    self._count = 0
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = output_dir / JSONL_NAME
    _truncate_after(self.jsonl_path, start_step)
    self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
    self._tensorboard = _summary_writer_class()(str(output_dir / TENSORBOARD_DIR),
                                                purge_step=start_step + 1)

  def log(self, step: int, values: dict[str, float], final: bool = False) -> None:
    """Add step `step`'s values; write the window's means if the window (or run) ends."""
    for name, value in values.items():
      self._sums[name] += value
    self._count += 1
    if step % self.log_every and not final:
      return
    means = {name: total / self._count for name, total in self._sums.items()}
    self._jsonl.write(json.dumps({"step": step, **means}) + "\n")
    self._jsonl.flush()
    for name, value in means.items():
      self._tensorboard.add_scalar(f"train/{name}", value, step)
    self._tensorboard.flush()
    self._sums.clear()
    self._count = 0

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()

  def __enter__(self) -> MetricsLogger:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class ProgressBar:
  """A tqdm bar over steps showing the latest loss, metrics and tokens/s.

  A run that does not start at step 0 is labelled "resumed at step N".
  """

  def __init__(self, start_step: int, total_steps: int, enabled: bool = True):
    label = f"resumed at step {start_step}" if start_step else "train"
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not enabled,
                          desc=label, unit="step", dynamic_ncols=True)

  def update(self, values: dict[str, float]) -> None:
    self._bar.set_postfix({name: _short(name, value) for name, value in values.items()},
                          refresh=False)
    self._bar.update(1)

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc) -> None:
    self._bar.close()


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, float]]:
  """The rows of a metrics.jsonl file."""
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch (memjax never imports torch).

  tensorboardX imports torch whenever it is installed, only to accept torch tensors, which
  costs seconds; while `sys.modules["torch"]` is None that import fails (the import system
  treats None as "not importable") and tensorboardX falls back to numpy.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None
    try:
      importlib.import_module("tensorboardX")
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter
  return SummaryWriter


def _short(name: str, value: float) -> str:
  return f"{value:.0f}" if name == "tokens_per_s" else f"{value:.4g}"


def _truncate_after(path: pathlib.Path, step: int) -> None:
  """Drop the rows of `path` logged after `step` (by a run killed after its last save)."""
  if not path.exists():
    return
  kept = [row for row in read_jsonl(path) if row["step"] <= step]
  path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
