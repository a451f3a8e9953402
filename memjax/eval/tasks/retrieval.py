"""memjax's needle-in-prose retrieval (memjax.data.retrieval) as tasks: single, multikey,
multivalue."""

from __future__ import annotations

from memjax.data import corpus, retrieval
from memjax.data.corpus import TokenizerLike
from memjax.eval.tasks.base import GenerationTask


class Retrieval(GenerationTask):
  """Secret-code needles in Jane Austen's prose, scored strictly (retrieval.score_answer)."""

  max_new_tokens = 8
  kind: str

  def make_cases(self, n: int, length: int, tokenizer: TokenizerLike, cfg,
                 max_new_tokens: int) -> list[retrieval.RetrievalCase]:
    """Contexts of `length` tokens (the question and answer come on top, as before)."""
    haystack = corpus.load_corpus("haystack", cfg.corpus) if cfg.corpus else None
    return retrieval.make_cases(self.kind, n, length, cfg.depths, tokenizer, cfg.seed,
                                haystack=haystack)

  def score(self, case: retrieval.RetrievalCase, generated_text: str) -> float:
    return retrieval.score_answer(case, generated_text)


class Single(Retrieval):
  name = kind = "single"
  title = "single retrieval"
  description = "one secret code in prose; the first number generated must be it"


class MultiKey(Retrieval):
  name = kind = "multikey"
  title = "multikey retrieval"
  description = "four people's codes in prose; the question asks for one of them"


class MultiValue(Retrieval):
  name = kind = "multivalue"
  title = "multivalue retrieval"
  description = "three codes of one person in prose; the share of them generated"
