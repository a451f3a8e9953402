"""The shared row log of every task: finished rows appended to a JSONL file, reused on rerun.

A row is keyed by (task, length, policy, budget, gates of "learned") and stamped with the
`fingerprint` of the settings that change its value, so an interrupted evaluation resumes
where it stopped and a wider sweep reuses a narrower one. The settings are an EvalConfig
(`memjax eval`) or any dataclass config of an experiment (e.g. experiments/assoc_recall.py,
whose "policy" is the model trained).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

from memjax.config import config_to_dict

# EvalConfig fields that say which rows are asked for, or where they go, not their values.
EVAL_SELECTION_FIELDS = ("policies", "gates", "budgets", "tasks", "context_tokens", "perplexity",
                         "batch_size", "output_dir", "name", "notes", "include", "mesh")


class RowLog:
  """Finished result rows, appended to a JSONL file as they complete.

  A rerun of the same settings (see `fingerprint`) reuses the rows already in the file, so
  an interrupted evaluation resumes where it stopped, and a wider sweep reuses a narrower one.
  """

  def __init__(self, path: str | pathlib.Path | None, cfg: Any):
    self.path = None if path is None else pathlib.Path(path)
    self.fingerprint = fingerprint(cfg)
    self.gates = gates_id(cfg)
    self.done: dict[tuple, dict[str, Any]] = {}
    if self.path is not None and self.path.exists():
      for line in self.path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("fingerprint") == self.fingerprint:
          self.done[_row_key(row)] = row

  def key(self, task: str, context_tokens: int, policy: str, budget: float | None) -> tuple:
    """The key of a row: which gates made it matters for "learned" only."""
    return task, context_tokens, policy, budget, self.gates if policy == "learned" else None

  def add(self, row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row, fingerprint=self.fingerprint)
    if row["policy"] == "learned":
      row["gates"] = self.gates
    self.done[_row_key(row)] = row
    if self.path is not None:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with self.path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row


# EvalConfig fields added after rows were first logged: at these defaults they are left out of
# the fingerprint, so the rows logged before them are still found.
LATER_FIELDS = {"allocation": "uniform", "floor": 0.2, "layer_group": None}


def fingerprint(cfg: Any) -> str:
  """Hash of the settings that change a row's value: every field of the dataclass `cfg`,
  less, for an EvalConfig, those that only say which rows are asked for."""
  from memjax.eval.config import EvalConfig
  settings = config_to_dict(cfg)
  if isinstance(cfg, EvalConfig):
    for field in EVAL_SELECTION_FIELDS:
      settings.pop(field)
    for field, default in LATER_FIELDS.items():
      if settings.get(field) == default:
        settings.pop(field)
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def gates_id(cfg: Any) -> str | None:
  """Which gates make cfg's "learned" rows: `<gates>@<hash of the file>`, so that rows of
  other (e.g. retrained) gates are never reused; None when cfg does not evaluate "learned"."""
  if "learned" not in getattr(cfg, "policies", ()):
    return None
  from memjax.retention.store import gate_path
  digest = hashlib.sha256(gate_path(cfg.gates, cfg.model).read_bytes()).hexdigest()[:12]
  return f"{cfg.gates}@{digest}"


def _row_key(row: dict[str, Any]) -> tuple:
  return row["task"], row["context_tokens"], row["policy"], row["budget"], row.get("gates")
