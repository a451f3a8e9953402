"""Tables, CSV and plots of policy x budget results.

A result row is a dict with at least `policy`, `task`, `context_tokens`, `n` and
`accuracy` (0..1) or `perplexity`, plus `budget` (fraction of the context; None
for the full cache) and usually `budget_tokens`. Extra keys are kept in the CSV.
Rows are grouped into one table per (task, context length); rows of the same
cell are merged, weighting by `n`. Rows with per-case `scores` also give each cell a
standard error. Where one length has two or more accuracy tasks (e.g. the RULER suite),
an average over the tasks (with its standard error) is tabled and plotted against the kept
fraction of the cache, one panel per (model, length).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from memjax.config import config_to_dict
from memjax.eval.tasks import TASKS

FULL = "full"
CSV_COLUMNS = ("policy", "budget", "budget_tokens", "task", "context_tokens", "accuracy", "n",
               "perplexity")
PROTOCOL_NOTES = {
    "query-agnostic": "the context is compressed alone; the question is appended afterwards",
    "query-aware": "the question is part of the compressed prompt (flatters query-aware policies)",
}


@dataclasses.dataclass(frozen=True)
class Table:
  """One policy x budget table.

  Attributes:
    metric: "accuracy" or "perplexity".
    task: retrieval task kind, or "perplexity".
    context_tokens: context (or perplexity window) length in tokens.
    columns: budget keys (budget fraction, budget tokens), largest budget first.
    policies: row order, with "full" first when present.
    cells: (policy, column) -> (value, n); value is accuracy in 0..1 or perplexity.
    errors: (policy, column) -> standard error of the value, for cells whose rows all
      carry per-case `scores` (more than one case).
    model: the rows' model (None for rows that do not name one).
  """

  metric: str
  task: str
  context_tokens: int
  columns: tuple[tuple[Any, Any], ...]
  policies: tuple[str, ...]
  cells: dict[tuple[str, tuple[Any, Any]], tuple[float, int]]
  errors: dict[tuple[str, tuple[Any, Any]], float] = dataclasses.field(default_factory=dict)
  model: str | None = None

  @property
  def title(self) -> str:
    """E.g. "single retrieval, 1000-token context" (the task's registered title)."""
    if self.metric == "accuracy":
      task = TASKS[self.task].title if self.task in TASKS else self.task
      return f"{task}, {self.context_tokens}-token context"
    return f"held-out perplexity, {self.context_tokens}-token windows"


@dataclasses.dataclass(frozen=True)
class Average:
  """The mean accuracy over the tasks of one (model, length).

  Attributes:
    model: the rows' model (None for rows that do not name one).
    context_tokens: the length.
    tasks: the tasks averaged.
    columns, policies: as in Table.
    cells: (policy, column) -> (mean over tasks, standard error or None); only where
      every task has the cell. The error is sqrt(sum of the tasks' squared errors) / tasks.
  """

  model: str | None
  context_tokens: int
  tasks: tuple[str, ...]
  columns: tuple[tuple[Any, Any], ...]
  policies: tuple[str, ...]
  cells: dict[tuple[str, tuple[Any, Any]], tuple[float, float | None]]

  @property
  def title(self) -> str:
    """E.g. "average over 11 tasks, 2000-token context"."""
    return f"average over {len(self.tasks)} tasks, {self.context_tokens}-token context"


def protocol_label(query_aware: bool) -> str:
  """The protocol label of a run: "query-aware" or "query-agnostic"."""
  return "query-aware" if query_aware else "query-agnostic"


def build_tables(rows: Sequence[Mapping[str, Any]]) -> list[Table]:
  """Accuracy tables per (model, task, context length), then perplexity tables per (model,
  window length)."""
  tables = []
  for metric in ("accuracy", "perplexity"):
    groups: dict[tuple[Any, str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
      if row.get(metric) is not None:
        task = row.get("task") if metric == "accuracy" else "perplexity"
        groups.setdefault((row.get("model"), task, row["context_tokens"]), []).append(row)
    tables += [dataclasses.replace(_table(metric, task, context, group), model=model)
               for (model, task, context), group in groups.items()]
  return tables


def _table(metric: str, task: str, context_tokens: int, rows: Sequence[Mapping[str, Any]],
           columns: Sequence[tuple[Any, Any]] | None = None) -> Table:
  """Merge the rows of one group into table cells; `columns`: those of its budgeted rows
  unless given."""
  if columns is None:
    columns = _columns(rows)
  policies = list(dict.fromkeys(r["policy"] for r in rows))
  if FULL in policies:
    policies.remove(FULL)
    policies.insert(0, FULL)
  cells, errors = {}, {}
  for policy in policies:
    mine = [r for r in rows if r["policy"] == policy]
    for column in columns:
      matching = [r for r in mine if _column(r) == column]
      if policy == FULL and not matching:
        matching = mine  # the full cache has no budget: one value for every column
      if matching:
        cells[(policy, column)] = _merge(matching, metric)
        if all(r.get("scores") for r in matching):
          error = standard_error([s for r in matching for s in r["scores"]])
          if error is not None:
            errors[(policy, column)] = error
  return Table(metric, task, context_tokens, tuple(columns), tuple(policies), cells, errors)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, Any]]:
  """The budget columns of the budgeted rows, largest budget first."""
  budgeted = {_column(r) for r in rows if r["policy"] != FULL}
  return sorted(budgeted, key=_column_size, reverse=True)


def standard_error(scores: Sequence[float]) -> float | None:
  """Standard error of the mean of `scores` (sample standard deviation / sqrt(n));
  None for fewer than two."""
  if len(scores) < 2:
    return None
  return float(np.std(scores, ddof=1) / np.sqrt(len(scores)))


def build_averages(rows: Sequence[Mapping[str, Any]]) -> list[Average]:
  """One Average per (model, length) with at least two accuracy tasks."""
  groups: dict[tuple[Any, int], list[Mapping[str, Any]]] = {}
  for row in rows:
    if row.get("accuracy") is not None:
      groups.setdefault((row.get("model"), row["context_tokens"]), []).append(row)
  averages = []
  for (model, context), group in groups.items():
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for row in group:
      by_task.setdefault(row["task"], []).append(row)
    if len(by_task) < 2:
      continue
    columns = _columns(group)
    tables = [_table("accuracy", task, context, rows_of_task, columns)
              for task, rows_of_task in by_task.items()]
    policies = list(dict.fromkeys(p for t in tables for p in t.policies))
    cells = {}
    for policy in policies:
      for column in columns:
        if all((policy, column) in t.cells for t in tables):
          mean = float(np.mean([t.cells[(policy, column)][0] for t in tables]))
          errors = [t.errors.get((policy, column)) for t in tables]
          error = (None if None in errors
                   else float(np.sqrt(np.sum(np.square(errors)))) / len(tables))
          cells[(policy, column)] = (mean, error)
    averages.append(Average(model, context, tuple(t.task for t in tables), tuple(columns),
                            tuple(policies), cells))
  return averages


def _column(row: Mapping[str, Any]) -> tuple[Any, Any]:
  return (row.get("budget"), row.get("budget_tokens"))


def _column_size(column: tuple[Any, Any]) -> float:
  budget, tokens = column
  return float(tokens if tokens is not None else budget)


def _merge(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[float, int]:
  """n-weighted mean of `metric` over rows, and the total n."""
  n = sum(int(r.get("n", 1)) for r in rows)
  value = sum(float(r[metric]) * int(r.get("n", 1)) for r in rows) / max(n, 1)
  return value, n


def budget_label(column: tuple[Any, Any]) -> str:
  """Column header: "25% (256 tok)", "25%" or "256 tok"."""
  budget, tokens = column
  if budget is not None and budget <= 1:
    percent = f"{100 * budget:.4g}%"
    return f"{percent} ({tokens} tok)" if tokens is not None else percent
  return f"{tokens if tokens is not None else int(budget)} tok"


def _policy_label(policy: str) -> str:
  return "full cache" if policy == FULL else policy


def _cell_text(table: Table, policy: str, column, n_prefix: str) -> str:
  """Accuracy in percent with its n ("87.5 (n=8)"), perplexity ("12.34"), or "–" if missing."""
  if (policy, column) not in table.cells:
    return "–"
  value, n = table.cells[(policy, column)]
  if table.metric == "perplexity":
    return f"{value:.2f}"
  return f"{100 * value:.1f} ({n_prefix}{n})"


def _grid(table: Table, n_prefix: str) -> list[list[str]]:
  """Header row then one row per policy, as strings."""
  grid = [["policy"] + [budget_label(c) for c in table.columns]]
  for policy in table.policies:
    cells = [_cell_text(table, policy, c, n_prefix) for c in table.columns]
    grid.append([_policy_label(policy)] + cells)
  return grid


def _unit(table: Table) -> str:
  return "accuracy % (cases)" if table.metric == "accuracy" else "perplexity (lower is better)"


def _average_grid(average: Average) -> list[list[str]]:
  """Header row then one row per policy: "mean ± standard error" in percent, or "–"."""
  grid = [["policy"] + [budget_label(c) for c in average.columns]]
  for policy in average.policies:
    cells = []
    for column in average.columns:
      mean, error = average.cells.get((policy, column), (None, None))
      cells.append("–" if mean is None else f"{100 * mean:.1f}"
                   + ("" if error is None else f" ± {100 * error:.1f}"))
    grid.append([_policy_label(policy)] + cells)
  return grid


AVERAGE_UNIT = "mean accuracy % over the tasks ± standard error"


def _models(rows: Sequence[Mapping[str, Any]]) -> list[Any]:
  return list(dict.fromkeys(row.get("model") for row in rows))


def _blocks(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[list[str]]]]:
  """(title, unit, grid) of every table: the averages first, then one per task; titles
  name the model when the rows come from more than one."""
  named = len(_models(rows)) > 1
  title = lambda t: f"{t.model}: {t.title}" if named else t.title
  blocks = [(title(a), AVERAGE_UNIT, _average_grid(a)) for a in build_averages(rows)]
  for table in build_tables(rows):
    blocks.append((title(table), _unit(table), _grid(table, n_prefix="n=")))
  return blocks


def format_table(rows: Sequence[Mapping[str, Any]], protocol: str) -> str:
  """Plain-text tables for the terminal: budgets across, policies down."""
  blocks = []
  for title, unit, grid in _blocks(rows):
    grid = [[cell.replace("(n=", "(") for cell in line] for line in grid]
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    lines = [f"{title} [{protocol}]: {unit}"]
    for line in grid:
      lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths))))
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def markdown_report(rows: Sequence[Mapping[str, Any]], config: Any) -> str:
  """A markdown page: header with model, protocol and config, then one table per group.

  Args:
    rows: result rows (see the module docstring).
    config: the run's config (a dataclass such as EvalConfig, or its dict); its
      `name`, `model`, `query_aware` and `notes` entries label the page.
  """
  cfg = config_to_dict(config)
  protocol = protocol_label(bool(cfg.get("query_aware", False)))
  others = [m for m in _models(rows) if m not in (None, cfg.get("model"))]
  lines = [f"# {cfg.get('name', 'results')}", "",
           f"- model: `{cfg.get('model', '?')}`" + (
               f"; beside it the rows of `{'`, `'.join(others)}` (from the configs in "
               f"`include`)" if others else ""),
           f"- protocol: **{protocol}**: {PROTOCOL_NOTES[protocol]}",
           "- columns: KV budget per layer, as a fraction of the context (tokens kept)"]
  if cfg.get("notes"):
    lines += ["", str(cfg["notes"]).strip()]
  lines += ["", "Config:", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False,
                                                      default_flow_style=None).rstrip(), "```"]
  averages = build_averages(rows)
  if averages:
    tasks = list(dict.fromkeys(t for a in averages for t in a.tasks))
    lines += ["", "Tasks:", ""] + [f"- `{t}`: {TASKS[t].description if t in TASKS else t}"
                                   for t in tasks]
    lines += ["", f"![average score against the kept fraction]({cfg.get('name', 'results')}"
              "_leaderboard.png)"]
  for title, unit, grid in _blocks(rows):
    lines += ["", f"## {title}", "", f"Cells: {unit}.", ""]
    lines.append("| " + " | ".join(grid[0]) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(grid[0]) - 1)) + "|")
    lines += ["| " + " | ".join(line) + " |" for line in grid[1:]]
  return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | pathlib.Path) -> None:
  """All rows as CSV: the standard columns first, then any extra keys (sorted)."""
  extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS) + extra, restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if v is None else v for k, v in row.items()})


def plot_accuracy(table: Table, path: str | pathlib.Path, *, model: str, protocol: str) -> None:
  """PNG of accuracy (%) vs KV budget, one line per policy, full cache as a dashed line.

  The x axis is the budget in tokens (log scale) when every column has a token
  count, else the budget fraction; tick labels show both.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = sorted(table.columns, key=_column_size)
  xs = [_column_size(c) for c in columns]
  fig, ax = plt.subplots(figsize=(8, 4.8))
  for policy, style in policy_styles([table.policies]).items():
    points = [(x, 100 * table.cells[(policy, c)][0]) for x, c in zip(xs, columns)
              if (policy, c) in table.cells]
    if not points:
      continue
    ax.plot(*zip(*points), label=policy, linewidth=1.6, markersize=6, **style)
  if FULL in table.policies and columns:
    full = 100 * table.cells[(FULL, columns[-1])][0]
    ax.axhline(full, color="black", linestyle="--", linewidth=1.2,
               label=f"full cache ({full:.0f}%)")
  ax.set_xscale("log", base=2)
  ax.set_xticks(xs, [budget_label(c).replace(" (", "\n(") for c in columns])
  ax.minorticks_off()
  ax.set_ylim(-3, 103)
  ax.set_xlabel("KV budget per layer")
  ax.set_ylabel("accuracy (%)")
  ax.grid(True, alpha=0.3)
  ax.set_title(f"{model}: {table.title} ({protocol})")
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def policy_styles(groups: Sequence[Sequence[str]]) -> dict[str, dict[str, Any]]:
  """matplotlib style (color, marker, linestyle) of every budgeted policy in `groups` (the
  policies of each panel or table), one per policy whatever group it is in: a policy missing
  from one panel (e.g. `learned` where no gates are trained) does not shift the others'
  colours. Past the tenth policy colours repeat, so those lines are dashed."""
  policies = list(dict.fromkeys(p for group in groups for p in group if p != FULL))
  markers = "osD^vP*Xh<>"
  return {p: dict(color=f"C{i % 10}", marker=markers[i % len(markers)],
                  linestyle="-" if i < 10 else "--") for i, p in enumerate(policies)}


def plot_leaderboard(averages: Sequence[Average], path: str | pathlib.Path, *, model: str,
                     protocol: str) -> None:
  """PNG of the average score (%) against the kept fraction of the cache, one line per
  policy (error bars: standard errors), the full cache dashed, one panel per (model, length).

  A policy has one style in every panel (`policy_styles`) and one legend entry; its
  points are shifted sideways by a few percent of the fraction so that equal scores (and a
  panel with one fraction) stay readable. `model` names panels whose rows do not carry one.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(averages), figsize=(5.5 * len(averages), 4.6), squeeze=False,
                           sharey=True)
  styles = policy_styles([a.policies for a in averages])
  dodge = {p: 2 ** (0.025 * (i - (len(styles) - 1) / 2)) for i, p in enumerate(styles)}
  for ax, average in zip(axes[0], averages):
    fractions = sorted((c for c in average.columns if c[0] is not None and c[0] <= 1),
                       key=_column_size)
    for policy in (p for p in average.policies if p != FULL):
      points = [(c[0] * dodge[policy], *average.cells[(policy, c)]) for c in fractions
                if (policy, c) in average.cells]
      if not points:
        continue
      xs, means, errors = zip(*points)
      ax.errorbar(xs, [100 * m for m in means],
                  yerr=[0 if e is None else 100 * e for e in errors], capsize=3,
                  label=policy, linewidth=1.4, markersize=5, **styles[policy])
    full = [average.cells[(FULL, c)][0] for c in average.columns if (FULL, c) in average.cells]
    if full:
      ax.axhline(100 * full[0], color="black", linestyle="--", linewidth=1.2, label="full cache")
    ax.set_xscale("log", base=2)
    ax.set_xticks([c[0] for c in fractions], [f"{100 * c[0]:.4g}%" for c in fractions])
    if fractions:
      ax.set_xlim(fractions[0][0] / 1.4, fractions[-1][0] * 1.4)
    ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel("kept fraction of the cache")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{average.model or model}, {average.context_tokens} tokens, "
                 f"{len(average.tasks)} tasks" + (f"\nfull cache {100 * full[0]:.0f}%"
                                                   if full else ""))
  axes[0][0].set_ylabel("average score over the tasks (%)")
  fig.suptitle(f"average score against the kept fraction ({protocol})", y=1.05)
  legend = {}
  for ax in axes[0]:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  order = ["full cache"] + list(styles)
  labels = [label for label in order if label in legend]
  axes[0][-1].legend([legend[label] for label in labels], labels, loc="center left",
                     bbox_to_anchor=(1.01, 0.5), frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def write_report(rows: Sequence[Mapping[str, Any]], config: Any,
                 out_dir: str | pathlib.Path | None = None) -> dict[str, pathlib.Path]:
  """Write `{name}.md`, `{name}.csv`, and either `{name}_leaderboard.png` (rows with an
  average over tasks) or one `{name}_{task}_{context}.png` per accuracy table.

  Args:
    rows: result rows.
    config: the run's config (EvalConfig or its dict): `name`, `model`,
      `query_aware` and, unless `out_dir` is given, `output_dir`.
    out_dir: directory to write to (created if missing).

  Returns:
    Paths written, keyed "markdown", "csv", and "leaderboard" or "plot:{task}:{context}".
  """
  cfg = config_to_dict(config)
  out = pathlib.Path(out_dir if out_dir is not None else cfg.get("output_dir", "."))
  out.mkdir(parents=True, exist_ok=True)
  name = cfg.get("name", "results")
  protocol = protocol_label(bool(cfg.get("query_aware", False)))
  paths = {"markdown": out / f"{name}.md", "csv": out / f"{name}.csv"}
  paths["markdown"].write_text(markdown_report(rows, cfg), encoding="utf-8")
  write_csv(rows, paths["csv"])
  averages = build_averages(rows)
  if averages:
    paths["leaderboard"] = out / f"{name}_leaderboard.png"
    plot_leaderboard(averages, paths["leaderboard"], model=cfg.get("model", "?"),
                     protocol=protocol)
    return paths
  for table in build_tables(rows):
    if table.metric == "accuracy":
      path = out / f"{name}_{table.task}_{table.context_tokens}.png"
      plot_accuracy(table, path, model=cfg.get("model", "?"), protocol=protocol)
      paths[f"plot:{table.task}:{table.context_tokens}"] = path
  return paths
