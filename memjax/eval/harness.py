"""The policy x budget evaluation: retrieval accuracy (and perplexity) under KV budgets."""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from memjax import sharding
from memjax.cache.policies import get_policy
from memjax.config import config_to_dict
from memjax.data import corpus, retrieval
from memjax.eval.config import EvalConfig
from memjax.eval.perplexity import budgeted_logprobs, perplexity
from memjax.generation.generate import generate_ids, resolve_budgets
from memjax.lm import LanguageModel


def budget_tokens(budget: float, context_tokens: int) -> int:
  """KV slots per layer: a fraction (<= 1) of the context, or an absolute token count."""
  return max(1, round(budget * context_tokens)) if budget <= 1 else int(budget)


def _settings(cfg: EvalConfig) -> list[tuple[str, float | None]]:
  """(policy, budget) pairs to run: the full cache once, every other policy at every budget."""
  return [(p, None) if p == "full" else (p, b)
          for p in cfg.policies for b in ([None] if p == "full" else cfg.budgets)]


def _answer_cases(lm: LanguageModel, cases, policy: str, budget: int | None,
                  cfg: EvalConfig, on_mesh: dict) -> list[float]:
  """Scores of `cases` answered in batches under one (policy, budget); `on_mesh`: the
  mesh and rules of `device_mesh`."""
  scores = []
  for start in range(0, len(cases), cfg.batch_size):
    batch = cases[start:start + cfg.batch_size]
    contexts = [lm.tokenizer.encode(c.context) for c in batch]
    questions = [lm.tokenizer.encode(c.question) for c in batch]
    pol = get_policy(policy)
    marks = None
    if pol.uses_marks:  # the oracle keeps the needles' own tokens
      marks = [retrieval.needle_marks(c, lm.tokenizer) for c in batch]
    if pol.uses_marks or pol.compresses_once:  # both run on one device
      on_mesh = {}
    if cfg.query_aware:
      contexts, questions = [c + q for c, q in zip(contexts, questions)], None
      marks = marks and [m + [0] * (len(c) - len(m)) for m, c in zip(marks, contexts)]
    answers = generate_ids(lm.params, lm.cfg, contexts, policy=pol, budget=budget,
                           budget_schedule=cfg.budget_schedule, questions=questions,
                           max_new_tokens=cfg.max_new_tokens, prefill_chunk=cfg.prefill_chunk,
                           eos_id=lm.tokenizer.eos_id, marks=marks,
                           encode=lm.tokenizer.encode, **on_mesh)
    scores += [retrieval.score_answer(c, lm.tokenizer.decode(a)) for c, a in zip(batch, answers)]
  return scores


class RowLog:
  """Finished result rows, appended to a JSONL file as they complete.

  A rerun of the same settings (see `fingerprint`) reuses the rows already in the file, so
  an interrupted evaluation resumes where it stopped, and a wider sweep reuses a narrower one.
  """

  def __init__(self, path: str | pathlib.Path | None, cfg: EvalConfig):
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


def fingerprint(cfg: EvalConfig) -> str:
  """Hash of the settings that change a row's value (not which rows are asked for)."""
  settings = config_to_dict(cfg)
  for field in ("policies", "gates", "budgets", "tasks", "context_tokens", "perplexity",
                "batch_size", "output_dir", "name", "mesh"):
    settings.pop(field)
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def gates_id(cfg: EvalConfig) -> str | None:
  """Which gates make cfg's "learned" rows: `<gates>@<hash of the file>`, so that rows of
  other (e.g. retrained) gates are never reused; None when cfg does not evaluate "learned"."""
  if "learned" not in cfg.policies:
    return None
  from memjax.retention.store import gate_path
  digest = hashlib.sha256(gate_path(cfg.gates, cfg.model).read_bytes()).hexdigest()[:12]
  return f"{cfg.gates}@{digest}"


def _row_key(row: dict[str, Any]) -> tuple:
  return row["task"], row["context_tokens"], row["policy"], row["budget"], row.get("gates")


def device_mesh(cfg: EvalConfig) -> dict:
  """{"mesh", "rules"} for generation and perplexity: cfg.mesh on more than one device,
  no mesh on one."""
  if jax.device_count() == 1:
    return {}
  return {"mesh": sharding.build_mesh(cfg.mesh), "rules": cfg.mesh.rules}


def retrieval_rows(lm: LanguageModel, cfg: EvalConfig, log: RowLog, on_mesh: dict,
                   progress: bool = True) -> list[dict[str, Any]]:
  """Accuracy rows for every (context length, task, policy, budget) of the config;
  `on_mesh` from `device_mesh`."""
  rows = []
  settings = _settings(cfg)
  jobs = [(n, task) for n in cfg.context_tokens for task in cfg.tasks]
  bar = tqdm(total=len(jobs) * len(settings), desc="policy x budget", disable=not progress)
  for context_tokens, task in jobs:
    cases = None
    for policy, budget in settings:
      key = log.key(task, context_tokens, policy, budget)
      if key not in log.done:
        cases = cases or retrieval.make_cases(task, cfg.n_cases, context_tokens, cfg.depths,
                                              lm.tokenizer, cfg.seed, haystack=_haystack(cfg))
        slots = None if budget is None else budget_tokens(budget, context_tokens)
        bar.set_postfix_str(f"{task} {context_tokens} {policy} {slots or 'full'}")
        started = time.perf_counter()
        scores = _answer_cases(lm, cases, policy, slots, cfg, on_mesh)
        log.add(dict(policy=policy, budget=budget, budget_tokens=slots, task=task,
                     context_tokens=context_tokens, accuracy=float(np.mean(scores)),
                     n=len(scores), seconds=round(time.perf_counter() - started, 1)))
      rows.append(log.done[key])
      bar.update()
  bar.close()
  return rows


def perplexity_rows(lm: LanguageModel, cfg: EvalConfig, log: RowLog, on_mesh: dict,
                    progress: bool = True) -> list[dict[str, Any]]:
  """Held-out perplexity for every (policy, budget), budgets relative to the window length;
  `on_mesh` from `device_mesh`."""
  text = corpus.load_corpus("heldout", cfg.corpus or None)
  windows = corpus.heldout_windows(lm.tokenizer, cfg.ppl_windows, cfg.ppl_window_tokens,
                                   cfg.seed, text=text)
  rows = []
  for policy, budget in tqdm(_settings(cfg), desc="perplexity", disable=not progress):
    if get_policy(policy).uses_marks or get_policy(policy).compresses_once:
      continue  # the oracle marks needles of retrieval cases (prose has none); a policy that
      # compresses once after prefill has no prefill/decode split in a scored window
    key = log.key("perplexity", cfg.ppl_window_tokens, policy, budget)
    if key in log.done:
      rows.append(log.done[key])
      continue
    pol = get_policy(policy)
    slots = None if budget is None else budget_tokens(budget, cfg.ppl_window_tokens)
    per_layer = resolve_budgets(lm.cfg, pol, slots, cfg.ppl_window_tokens, cfg.budget_schedule)
    logprobs = np.concatenate([
        budgeted_logprobs(lm.params, lm.cfg, windows[i:i + cfg.batch_size], pol, per_layer,
                          cfg.ppl_chunk, **on_mesh)[0]
        for i in range(0, len(windows), cfg.batch_size)])
    rows.append(log.add(dict(policy=policy, budget=budget, budget_tokens=slots,
                             task="perplexity", context_tokens=cfg.ppl_window_tokens,
                             perplexity=perplexity(logprobs), n=int(logprobs.size))))
  return rows


def _haystack(cfg: EvalConfig) -> str | None:
  return corpus.load_corpus("haystack", cfg.corpus) if cfg.corpus else None


def evaluate(cfg: EvalConfig, lm: LanguageModel | None = None, progress: bool = True,
             log_path: str | pathlib.Path | None = None) -> list[dict[str, Any]]:
  """Run the whole evaluation of `cfg`; returns result rows (see memjax.eval.report).

  With `log_path`, finished rows are appended there as JSON lines and rows already there
  for the same settings are not computed again.
  """
  from memjax.lm import load
  log = RowLog(log_path, cfg)
  lm = lm or load(cfg.model, cfg.dtype, gates=cfg.gates)
  on_mesh = device_mesh(cfg)
  rows = retrieval_rows(lm, cfg, log, on_mesh, progress)
  if cfg.perplexity:
    rows += perplexity_rows(lm, cfg, log, on_mesh, progress)
  return rows
