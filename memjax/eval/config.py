"""Settings of a policy x budget evaluation run."""

from __future__ import annotations

import dataclasses
from typing import Literal

from memjax.cache import allocation as allocation_lib
from memjax.eval.report import protocol_label
from memjax.eval.tasks import TASKS, unknown_task_message
from memjax.sharding.config import MeshConfig

ALL_POLICIES = [
    "full", "window", "streaming", "h2o", "tova", "snapkv", "keydiff", "knorm", "random"]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate, under which KV budgets, and where to write the results.

  Attributes:
    model: model name known to memjax.io (e.g. "smollm2-135m").
    dtype: compute dtype.
    policies: eviction policies to compare; "full" gives the full-cache row, "learned"
      needs `gates`.
    gates: TRIM-KV retention gates for "learned": "trimkv" (shipped for smollm2-135m) or
      an .npz from `memjax export-gates`.
    budgets: KV budgets per layer: a fraction of the context if <= 1 (0.25 keeps a
      quarter of the tokens), else an absolute number of tokens (whole number).
    allocation: "uniform" (every KV head keeps its own budget), "heads" (a layer's slots
      are one pool its KV heads share) or "layers" (the global layers' slots are one pool
      per KV head, for groups of `layer_group` layers, None: all), for every evicting
      policy (`memjax.cache.allocation`); floor: the fraction of its share each member of
      a pool keeps at least.
    budget_schedule: "uniform" (same budget in every layer) or "pyramid" (shrinking
      with depth, same mean).
    tasks: task names (memjax.eval.tasks.TASKS): memjax's retrieval ("single",
      "multikey", "multivalue"), the RULER tasks (memjax.eval.tasks.RULER_TASKS), and
      "perplexity".
    context_tokens: lengths in tokens to test: the context of a retrieval case (question
      and answer come on top), the whole prompt plus generated tokens of a RULER case.
    depths: needle depths in [0, 1] of the retrieval tasks; cases cycle through them.
    n_cases: cases per (task, context length).
    batch_size: cases run together.
    prefill_chunk: tokens per prefill step (peak memory is budget + chunk).
    max_new_tokens: greedy tokens generated for each answer; None (the default): each
      task's own (8 for retrieval, RULER's 128 / 30 / 120 / 50 for niah / vt / cwe / fwe).
    query_aware: if True the question is part of the compressed prompt (flatters
      query-aware policies); if False (the default protocol) the context is
      compressed alone and the question comes after.
    perplexity: also measure held-out perplexity under each budget (the task
      "perplexity", at ppl_window_tokens).
    ppl_windows: number of held-out windows.
    ppl_window_tokens: tokens per held-out window.
    ppl_chunk: tokens read per step when scoring a window; eviction happens between
      steps, so a chunk no larger than the smallest budget makes every budget bite.
    seed: seeds cases, windows and the random policy.
    corpus: local text files to use instead of the shipped corpus (empty: shipped).
    output_dir: directory for tables, CSV and plots.
    name: file stem of this run's outputs.
    notes: a paragraph the report prints under its header (e.g. "partial slice: ...");
      not part of the row fingerprint.
    include: other eval configs (YAML paths) whose finished rows this run's report shows
      beside its own, e.g. the same suite on a second model: read from their row logs in
      this run's output_dir, never computed here (`memjax eval` each of them first).
    mesh: on more than one device, generation and perplexity run on this mesh (batch rows
      over data/fsdp, cache KV heads over tensor; `memjax.sharding`); one device ignores it.
      Results do not depend on it (it is not part of the row fingerprint).
  """

  model: str = "smollm2-135m"
  dtype: Literal["float32", "bfloat16"] = "float32"
  policies: list[str] = dataclasses.field(default_factory=lambda: list(ALL_POLICIES))
  gates: str | None = None
  budgets: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.25, 0.125])
  budget_schedule: Literal["uniform", "pyramid"] = "uniform"
  allocation: allocation_lib.Allocation = "uniform"
  floor: float = allocation_lib.DEFAULT_FLOOR
  layer_group: int | None = None
  tasks: list[str] = dataclasses.field(default_factory=lambda: ["single"])
  context_tokens: list[int] = dataclasses.field(default_factory=lambda: [1000])
  depths: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
  n_cases: int = 8
  batch_size: int = 8
  prefill_chunk: int = 512
  max_new_tokens: int | None = None
  query_aware: bool = False
  perplexity: bool = False
  ppl_windows: int = 4
  ppl_window_tokens: int = 1024
  ppl_chunk: int = 64
  seed: int = 0
  corpus: list[str] = dataclasses.field(default_factory=list)
  output_dir: str = "experiments/results"
  name: str = "policy_budget"
  notes: str = ""
  include: list[str] = dataclasses.field(default_factory=list)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

  def __post_init__(self):
    for field in ("policies", "budgets", "tasks", "context_tokens", "depths"):
      if not getattr(self, field):
        raise ValueError(f"{field} must not be empty")
    if "learned" in self.policies and self.gates is None:
      raise ValueError("policy 'learned' needs retention gates: set gates=trimkv (shipped) or "
                       "gates=FILE.npz (from `memjax export-gates RUN_DIR`)")
    if len(set(self.policies)) != len(self.policies):
      raise ValueError(f"policies lists a name twice: {self.policies}")
    for budget in self.budgets:
      if budget <= 0 or (budget > 1 and budget != int(budget)):
        raise ValueError(f"budget {budget} must be a fraction in (0, 1] or a whole number "
                         "of tokens > 1")
    if any(t not in TASKS for t in self.tasks):
      raise ValueError(unknown_task_message(self.tasks))
    if len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"tasks lists a name twice: {self.tasks}")
    if any(n < 1 for n in self.context_tokens):
      raise ValueError(f"context_tokens must be positive, got {self.context_tokens}")
    if any(not 0.0 <= d <= 1.0 for d in self.depths):
      raise ValueError(f"depths must lie in [0, 1], got {self.depths}")
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1 (or null: each task's own), got "
                       f"{self.max_new_tokens}")
    for field in ("n_cases", "batch_size", "prefill_chunk", "ppl_windows", "ppl_chunk"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    self.pooling.checked()
    if self.ppl_window_tokens < 2:
      raise ValueError(f"ppl_window_tokens must be >= 2, got {self.ppl_window_tokens}")

  @property
  def pooling(self) -> allocation_lib.Pooling:
    """The run's slot sharing (`memjax.cache.allocation.Pooling`)."""
    return allocation_lib.Pooling(self.allocation, self.floor, self.layer_group)

  @property
  def run_tasks(self) -> list[str]:
    """The tasks to run: `tasks`, then "perplexity" if `perplexity` asks for it."""
    extra = ["perplexity"] if self.perplexity and "perplexity" not in self.tasks else []
    return list(self.tasks) + extra

  @property
  def protocol(self) -> str:
    """The label every table and plot carries: "query-aware" or "query-agnostic"."""
    return protocol_label(self.query_aware)
