"""The policy x budget evaluation: every task of a config under every KV budget."""

from __future__ import annotations

import pathlib
import time
from typing import Any

from tqdm.auto import tqdm

from memjax.cache.policies import get_policy
from memjax.eval.config import EvalConfig
from memjax.eval.tasks import get_task
from memjax.eval.tasks.rowlog import RowLog, fingerprint, gates_id
from memjax.lm import LanguageModel
from memjax.sharding.placement import Placement

__all__ = ["RowLog", "budget_tokens", "evaluate", "fingerprint", "gates_id", "task_rows"]


def budget_tokens(budget: float, context_tokens: int) -> int:
  """KV slots per layer: a fraction (<= 1) of the context, or an absolute token count."""
  return max(1, round(budget * context_tokens)) if budget <= 1 else int(budget)


def _settings(cfg: EvalConfig) -> list[tuple[str, float | None]]:
  """(policy, budget) pairs to run: the full cache once, every other policy at every budget."""
  return [(p, None) if p == "full" else (p, b)
          for p in cfg.policies for b in ([None] if p == "full" else cfg.budgets)]


def _jobs(cfg: EvalConfig) -> list[tuple[Any, int, str, float | None]]:
  """(task, length, policy, budget) of every row of the config, in order; policies a task
  cannot run (the oracle on a task without needles) are left out."""
  tasks = [get_task(t) for t in cfg.run_tasks]
  return [(task, length, policy, budget) for task in tasks for length in task.lengths(cfg)
          for policy, budget in _settings(cfg) if task.applies_to(get_policy(policy))]


def task_rows(lm: LanguageModel, cfg: EvalConfig, log: RowLog, placement: Placement,
              progress: bool = True) -> list[dict[str, Any]]:
  """Rows for every (task, length, policy, budget) of the config, in that order; rows
  already in `log` are reused, new ones are added to it. `placement`: the run's,
  `Placement.of(cfg.mesh)`.

  A task's inputs (cases, windows) are built once per length, and only if a row is missing.
  """
  jobs = _jobs(cfg)
  rows, prepared = [], {}
  for task, length, policy, budget in tqdm(jobs, desc="task x policy x budget",
                                           disable=not progress):
    key = log.key(task.name, length, policy, budget)
    if key not in log.done:
      if (task.name, length) not in prepared:
        prepared = {(task.name, length): task.prepare(lm, cfg, length)}  # one at a time
      slots = None if budget is None else budget_tokens(budget, length)
      started = time.perf_counter()
      values = task.run(lm, cfg, prepared[(task.name, length)], get_policy(policy), slots,
                        placement)
      log.add(dict(policy=policy, budget=budget, budget_tokens=slots, task=task.name,
                   context_tokens=length, **values, model=cfg.model,
                   seconds=round(time.perf_counter() - started, 1)))
    rows.append(log.done[key])
  return rows


def log_path(cfg: EvalConfig) -> pathlib.Path:
  """Where a run of `cfg` logs its rows: OUTPUT_DIR/NAME.rows.jsonl."""
  return pathlib.Path(cfg.output_dir) / f"{cfg.name}.rows.jsonl"


def included_rows(cfg: EvalConfig) -> tuple[list[dict[str, Any]], list[str]]:
  """The finished rows of every config in `cfg.include` (read from its row log in
  cfg.output_dir, in its own row order), and a line for each one that has missing rows."""
  from memjax.config import load_config
  rows, missing = [], []
  for path in cfg.include:
    other = load_config(EvalConfig, path, [f"output_dir={cfg.output_dir}"])
    log = RowLog(log_path(other), other)
    jobs = _jobs(other)
    done = [log.done[k] for k in (log.key(t.name, n, p, b) for t, n, p, b in jobs)
            if k in log.done]
    rows += done
    if len(done) < len(jobs):
      missing.append(f"{path}: {len(done)} of {len(jobs)} rows in {log_path(other)} "
                     f"(run `memjax eval {path}` to finish it)")
  return rows, missing


def evaluate(cfg: EvalConfig, lm: LanguageModel | None = None, progress: bool = True,
             log_path: str | pathlib.Path | None = None) -> list[dict[str, Any]]:
  """Run the whole evaluation of `cfg`; returns result rows (see memjax.eval.report).

  With `log_path`, finished rows are appended there as JSON lines and rows already there
  for the same settings are not computed again.
  """
  from memjax.lm import load
  log = RowLog(log_path, cfg)
  lm = lm or load(cfg.model, cfg.dtype, gates=cfg.gates)
  return task_rows(lm, cfg, log, Placement.of(cfg.mesh), progress)
