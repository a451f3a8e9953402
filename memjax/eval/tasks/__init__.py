"""Evaluation tasks, one file per family, registered by name.

A task family is one file: its case generator, its scorer and its default generation
length (a `GenerationTask`), or its own `prepare`/`run` (a `Task`, like perplexity). Add its
instances to `TASKS` below; `memjax eval` then runs it under every (policy, budget) of a
config, logs its rows (memjax.eval.tasks.rowlog) and reports them (memjax.eval.report).
"""

from __future__ import annotations

import difflib

from memjax.eval.tasks import niah
from memjax.eval.tasks.base import Case, GenerationTask, Task, string_match_all, string_match_part
from memjax.eval.tasks.cwe import CommonWords
from memjax.eval.tasks.fwe import FrequentWords
from memjax.eval.tasks.perplexity import Perplexity
from memjax.eval.tasks.retrieval import MultiKey, MultiValue, Single
from memjax.eval.tasks.vt import VariableTracking

TASKS: dict[str, Task] = {task.name: task for task in (
    Single(), MultiKey(), MultiValue(), Perplexity(), *niah.TASKS, VariableTracking(),
    CommonWords(), FrequentWords())}

# The synthetic RULER tasks reimplemented here (RULER's QA tasks need SQuAD and HotpotQA).
RULER_TASKS = tuple(t.name for t in niah.TASKS) + ("vt", "cwe", "fwe")


def get_task(name: str) -> Task:
  """The task registered as `name`.

  Raises:
    ValueError: unknown name; the message suggests the nearest and lists them all.
  """
  if name not in TASKS:
    raise ValueError(unknown_task_message([name]))
  return TASKS[name]


def unknown_task_message(names: list[str]) -> str:
  """Why `names` (some unknown) are refused, with the nearest known name of each."""
  unknown = [n for n in names if n not in TASKS]
  hints = ", ".join(f"{n!r} (did you mean {_nearest(n)!r}?)" for n in unknown)
  return f"unknown task(s) {hints}; registered tasks: {', '.join(TASKS)}"


def _nearest(name: str) -> str:
  return difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.0)[0]


__all__ = ["Case", "GenerationTask", "RULER_TASKS", "TASKS", "Task", "get_task",
           "string_match_all", "string_match_part", "unknown_task_message"]
