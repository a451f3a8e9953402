"""Held-out perplexity under a budget, as a task (rows at the window length)."""

from __future__ import annotations

from typing import Any

import numpy as np

from memjax.cache.policies import Policy
from memjax.data import corpus
from memjax.eval.perplexity import budgeted_logprobs, perplexity
from memjax.eval.tasks.base import Task
from memjax.generation.generate import resolve_budgets
from memjax.sharding.placement import Placement


class Perplexity(Task):
  """Perplexity of cfg.ppl_windows held-out windows of cfg.ppl_window_tokens tokens, read
  cfg.ppl_chunk tokens at a time through the budgeted cache."""

  name = "perplexity"
  title = "held-out perplexity"
  description = "perplexity of held-out prose read through the budgeted cache"

  def lengths(self, cfg) -> list[int]:
    return [cfg.ppl_window_tokens]

  def applies_to(self, policy: Policy) -> bool:
    """Not the oracle (prose has no needles to mark), nor a policy that compresses once
    after prefill (a scored window has no prefill/decode split)."""
    return not (policy.uses_marks or policy.compresses_once)

  def prepare(self, lm, cfg, length: int) -> np.ndarray:
    text = corpus.load_corpus("heldout", cfg.corpus or None)
    return corpus.heldout_windows(lm.tokenizer, cfg.ppl_windows, length, cfg.seed, text=text)

  def run(self, lm, cfg, prepared: np.ndarray, policy: Policy, budget: int | None,
          placement: Placement) -> dict[str, Any]:
    per_layer = resolve_budgets(lm.cfg, policy, budget, prepared.shape[1], cfg.budget_schedule)
    logprobs = np.concatenate([
        budgeted_logprobs(lm.params, lm.cfg, prepared[i:i + cfg.batch_size], policy, per_layer,
                          cfg.ppl_chunk, pooling=cfg.pooling,
                          placement=placement if cfg.allocation == "uniform" else Placement())[0]
        for i in range(0, len(prepared), cfg.batch_size)])
    return dict(perplexity=perplexity(logprobs), n=int(logprobs.size))
