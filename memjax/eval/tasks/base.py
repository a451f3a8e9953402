"""What every evaluation task provides, and how a generation task is answered and scored.

A task turns (model, config, length) into result rows, one per (policy, budget). Two kinds:

  GenerationTask: deterministic cases (a context compressed by the policy, then a question
    ending right before the answer), a default generation length and a scorer that maps
    the generated text to [0, 1]; the row holds the mean score ("accuracy") and the
    per-case scores. Subclasses only write `make_cases` and `score`.
  Task (the base): anything else, e.g. held-out perplexity.

Rows are dicts as memjax.eval.report describes them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import numpy as np

from memjax.cache.policies import Policy
from memjax.data.corpus import TokenizerLike
from memjax.data.retrieval import needle_marks
from memjax.generation.generate import generate_ids
from memjax.sharding.placement import Placement


@dataclasses.dataclass(frozen=True)
class Case:
  """One prompt of a generation task.

  Attributes:
    context: the text the policy compresses (instructions and haystack).
    question: appended after the (compressed) context, ending with the answer prefix.
    answers: reference strings the scorer looks for in the generated text.
    needles: substrings of `context` that hold the answer (for the `oracle` policy);
      empty for tasks whose answer is spread over the whole context.
  """

  context: str
  question: str
  answers: tuple[str, ...]
  needles: tuple[str, ...] = ()


class Task:
  """An evaluation task: rows for every (policy, budget) at some lengths.

  Attributes:
    name: registry name (the `task` of its rows).
    title: table heading, e.g. "single retrieval".
    description: one line for reports: what the task asks.
  """

  name: ClassVar[str]
  title: ClassVar[str]
  description: ClassVar[str]

  def lengths(self, cfg) -> list[int]:
    """Lengths (in tokens) this task runs at under EvalConfig `cfg`."""
    return list(cfg.context_tokens)

  def applies_to(self, policy: Policy) -> bool:
    """Whether `policy` can run on this task (the oracle needs needle marks)."""
    return not policy.uses_marks

  def prepare(self, lm, cfg, length: int) -> Any:
    """The inputs shared by every (policy, budget) at `length` (cases, windows)."""
    raise NotImplementedError

  def run(self, lm, cfg, prepared: Any, policy: Policy, budget: int | None,
          placement: Placement) -> dict[str, Any]:
    """The measured values of one row: `accuracy` or `perplexity`, `n`, and more, on the
    run's `placement`."""
    raise NotImplementedError


class GenerationTask(Task):
  """A task answered by greedy generation and scored per case.

  Attributes:
    max_new_tokens: default generation length (EvalConfig.max_new_tokens overrides it).
    has_needles: whether cases mark where the answer is (so the oracle can run).
  """

  max_new_tokens: ClassVar[int]
  has_needles: ClassVar[bool] = True

  def make_cases(self, n: int, length: int, tokenizer: TokenizerLike, cfg,
                 max_new_tokens: int) -> list:
    """`n` deterministic cases (`Case`-like: context, question, answers, needles) whose
    prompt plus `max_new_tokens` fits `length` tokens of `tokenizer`, from `cfg.seed`."""
    raise NotImplementedError

  def score(self, case, generated_text: str) -> float:
    """The score in [0, 1] of `generated_text` (the continuation of the question)."""
    raise NotImplementedError

  def generation_length(self, cfg) -> int:
    """Tokens to generate: the config's override, else the task's default."""
    return cfg.max_new_tokens or self.max_new_tokens

  def applies_to(self, policy: Policy) -> bool:
    return not policy.uses_marks or self.has_needles

  def prepare(self, lm, cfg, length: int) -> list:
    return self.make_cases(cfg.n_cases, length, lm.tokenizer, cfg, self.generation_length(cfg))

  def run(self, lm, cfg, prepared: list, policy: Policy, budget: int | None,
          placement: Placement) -> dict[str, Any]:
    scores = answer_cases(lm, prepared, policy, budget, cfg, placement,
                          self.generation_length(cfg), self.score)
    return dict(accuracy=float(np.mean(scores)), n=len(scores), scores=scores)


def answer_cases(lm, cases: Sequence, policy: Policy, budget: int | None, cfg,
                 placement: Placement, max_new_tokens: int, score) -> list[float]:
  """Scores of `cases` answered in batches of cfg.batch_size under one (policy, budget).

  Query-agnostic (default): the context is compressed, then the question is appended; with
  cfg.query_aware the question is part of the compressed prompt. `placement`: the run's
  (`Placement.of(cfg.mesh)`), except that the oracle, policies that compress once after
  prefill and shared pools run on one device.
  """
  scores = []
  for start in range(0, len(cases), cfg.batch_size):
    batch = cases[start:start + cfg.batch_size]
    contexts = [lm.tokenizer.encode(c.context) for c in batch]
    questions = [lm.tokenizer.encode(c.question) for c in batch]
    marks, on = None, placement
    if policy.uses_marks:  # the oracle keeps the needles' own tokens
      marks = [needle_marks(c, lm.tokenizer) for c in batch]
    if policy.uses_marks or policy.compresses_once or cfg.allocation != "uniform":
      on = Placement()  # these run on one device
    if cfg.query_aware:
      contexts, questions = [c + q for c, q in zip(contexts, questions)], None
      marks = marks and [m + [0] * (len(c) - len(m)) for m, c in zip(marks, contexts)]
    answers = generate_ids(lm.params, lm.cfg, contexts, policy=policy, budget=budget,
                           budget_schedule=cfg.budget_schedule, questions=questions,
                           allocation=cfg.allocation, floor=cfg.floor,
                           layer_group=cfg.layer_group,
                           max_new_tokens=max_new_tokens, prefill_chunk=cfg.prefill_chunk,
                           eos_id=lm.tokenizer.eos_id, marks=marks,
                           encode=lm.tokenizer.encode, placement=on)
    scores += [score(c, lm.tokenizer.decode(a)) for c, a in zip(batch, answers)]
  return scores


def string_match_all(references: Sequence[str], prediction: str) -> float:
  """RULER's `string_match_all`: the fraction of references that occur in the prediction,
  ignoring case (substrings count: "apple" occurs in "pineapples")."""
  text = prediction.lower()
  return sum(r.lower() in text for r in references) / len(references)


def string_match_part(references: Sequence[str], prediction: str) -> float:
  """RULER's `string_match_part`: 1.0 if any reference occurs in the prediction (ignoring
  case), else 0.0 (the max over references of whether each occurs)."""
  text = prediction.lower()
  return float(any(r.lower() in text for r in references))
