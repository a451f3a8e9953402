"""Validation of retention gates: retrieval accuracy under a budget on training-like cases.

The cases are retrieval rows drawn exactly like the synthetic training rows (the same fact
templates, names and prose splits), from a seed that training never uses (`VALIDATION_SEED`
added to the run's seed), split into context, question prompt and expected value. They
never touch the evaluation's names, templates or haystack (memjax.data.retrieval), so a
run can be steered by them without fitting the evaluation.

  validate(lm, cases, ...)      one set of gates: accuracy at the kept fraction and the
                                fact / prose half-lives of their retention
  validate_run(run_dir, ...)    every checkpoint of a `memjax train` run not yet validated:
                                `validation.jsonl` (+ TensorBoard "validation/..."), and the
                                best step's gates exported as `best_gates.npz`

The query-agnostic protocol of the evaluation: the context is compressed alone, then the
question prompt is appended and the answer generated greedily.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from memjax.cache.policies import Policy, get_policy
from memjax.data.corpus import load_corpus
from memjax.generation.generate import generate_ids
from memjax.retention import add_gates
from memjax.retention.model import forward_gated
from memjax.train.checkpoint import load_trainable
from memjax.train.config import TrainConfig, load_train_config
from memjax.train.data import RetrievalRow, TrainData
from memjax.train.metrics import _summary_writer_class, read_jsonl

VALIDATION_SEED = 1_000_003
VALIDATION_JSONL = "validation.jsonl"
BEST_GATES = "best_gates.npz"


def validation_cases(tokenizer, cfg: TrainConfig, n: int,
                     seq_len: int | None = None) -> list[RetrievalRow]:
  """`n` retrieval rows of `seq_len` tokens (default cfg.seq_len) drawn like cfg's training
  rows (templates, prose splits) from the seed cfg.seed + VALIDATION_SEED."""
  data = TrainData(tokenizer, load_corpus(cfg.corpus_splits, cfg.corpus or None),
                   seq_len or cfg.seq_len, 1, cfg.seed + VALIDATION_SEED,
                   synthetic_fraction=1.0, recall_fraction=0.0,
                   fact_templates=cfg.fact_templates)
  return [data.retrieval_case(i) for i in range(n)]


def _split(row: RetrievalRow) -> tuple[list[int], list[int]]:
  """(context ids, question prompt ids) of a row, without the answer."""
  end = len(row.tokens) - row.answer_tokens
  start = end - row.prompt_tokens
  return row.tokens[:start].tolist(), row.tokens[start:end].tolist()


def validate(params, cfg, tokenizer, cases: Sequence[RetrievalRow], kept_fraction: float,
             policy: str | Policy = "learned", batch_size: int = 8, prefill_chunk: int = 256,
             half_lives: bool = True) -> dict[str, float]:
  """Retrieval accuracy of `policy` keeping `kept_fraction` of each context, and (for gated
  params, `half_lives`) the retention statistics of the gates.

  Args:
    params: model params; with gates for "learned" (`memjax.retention.add_gates`).
    cfg, tokenizer: the model's.
    cases: from `validation_cases`.
    kept_fraction: KV slots per layer as a fraction of each context's length.
    policy: any registered policy; "oracle" keeps the fact sentences' own tokens.

  Returns:
    "accuracy": share of cases whose greedy answer starts with the expected value;
    with half_lives: "fact_half_life", "prose_half_life" (median over layers, heads and
    tokens of ln 2 / −log β, in tokens, as the gates rate the context with ordinary
    attention) and "half_life_ratio" (fact ÷ prose).
  """
  correct = []
  for start in range(0, len(cases), batch_size):
    batch = cases[start:start + batch_size]
    contexts, questions = zip(*(_split(r) for r in batch))
    budget = max(1, round(kept_fraction * max(len(c) for c in contexts)))
    longest_answer = max(r.answer_tokens for r in batch)
    marks = ([r.fact_marks[:len(c)].astype(int).tolist() for r, c in zip(batch, contexts)]
             if get_policy(policy).uses_marks else None)
    answers = generate_ids(params, cfg, list(contexts), policy=policy, budget=budget,
                           questions=list(questions), max_new_tokens=longest_answer,
                           prefill_chunk=prefill_chunk,
                           eos_id=getattr(tokenizer, "eos_id", None),
                           marks=marks, encode=getattr(tokenizer, "encode", None))
    correct += [tokenizer.decode(a).strip().startswith(r.value) for r, a in zip(batch, answers)]
  metrics = {"accuracy": float(np.mean(correct))}
  if half_lives:
    metrics.update(half_life_stats(params, cfg, cases, batch_size))
  return metrics


def half_life_stats(params, cfg, cases: Sequence[RetrievalRow],
                    batch_size: int = 8) -> dict[str, float]:
  """Median half-lives (tokens) of fact and other tokens in the cases' contexts, and their
  ratio; see `validate`."""
  fact, prose = [], []
  run = jax.jit(lambda p, x: forward_gated(p, x, cfg, decay=False)[1])
  for start in range(0, len(cases), batch_size):
    batch = cases[start:start + batch_size]
    tokens = np.stack([r.tokens for r in batch])
    log_beta_LxBxTxH = np.asarray(run(params, tokens))
    half_life = math.log(2) / np.maximum(-log_beta_LxBxTxH, 1e-12)
    marks_BxT = np.stack([r.fact_marks for r in batch])
    fact.append(half_life[:, marks_BxT].ravel())
    prose.append(half_life[:, ~marks_BxT].ravel())
  fact_hl, prose_hl = float(np.median(np.concatenate(fact))), float(np.median(np.concatenate(prose)))
  return {"fact_half_life": fact_hl, "prose_half_life": prose_hl,
          "half_life_ratio": fact_hl / prose_hl}


def validate_run(run_dir: str | pathlib.Path, n_cases: int = 32, kept_fraction: float = 0.25,
                 seq_len: int | None = None, batch_size: int = 8, progress: bool = True,
                 steps: Sequence[int] | None = None) -> list[dict[str, Any]]:
  """Validate every checkpoint of a TRIM-KV run that `validation.jsonl` does not hold yet.

  Appends {"step", "accuracy", "fact_half_life", "prose_half_life", "half_life_ratio",
  "n", "kept_fraction", "seq_len", "n_sink"} per checkpoint (n_sink: the `learned` policy's
  protected sinks, its default) to run_dir/validation.jsonl (and
  TensorBoard "validation/<name>"), then exports the gates of the most accurate step (the
  earliest among ties) to run_dir/best_gates.npz. Rows of other settings (n_cases,
  kept_fraction, seq_len) are kept but not compared. Resumable: a rerun only validates new
  checkpoints.

  Returns:
    The rows of these settings, by step.
  """
  from memjax.train.export import export_gates
  from memjax.train.run import run_model

  run_dir = pathlib.Path(run_dir)
  cfg = load_train_config(str(run_dir / "config.yaml"))
  checkpoints = pathlib.Path(cfg.checkpoint_dir or run_dir / "checkpoints")
  settings = {"n": n_cases, "kept_fraction": kept_fraction, "seq_len": seq_len or cfg.seq_len,
              "n_sink": get_policy("learned").n_sink}
  log_path = run_dir / VALIDATION_JSONL
  # Rows written before "n_sink" was recorded were scored without sinks.
  rows = [r for r in (read_jsonl(log_path) if log_path.exists() else [])
          if all(r.get(k, 0 if k == "n_sink" else None) == v for k, v in settings.items())]
  done = {r["step"] for r in rows}
  saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  todo = [s for s in saved if s not in done and (steps is None or s in steps)]
  if todo:
    model_cfg, model_params, tokenizer = run_model(cfg)
    cases = validation_cases(tokenizer, cfg, n_cases, seq_len)
    writer = _summary_writer_class()(str(run_dir / "tensorboard"))
    for step in tqdm(todo, desc="validate checkpoints", disable=not progress):
      trainable, _ = load_trainable(checkpoints, step)
      params = add_gates(model_params, trainable["layers"]["gate"])
      row = {"step": step, **validate(params, model_cfg, tokenizer, cases, kept_fraction,
                                      batch_size=batch_size), **settings}
      with log_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
      for name in ("accuracy", "half_life_ratio", "fact_half_life", "prose_half_life"):
        writer.add_scalar(f"validation/{name}", row[name], step)
      rows.append(row)
    writer.close()
  rows.sort(key=lambda r: r["step"])
  if rows:
    best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))
    export_gates(run_dir, run_dir / BEST_GATES, best["step"])
  return rows
