"""What the RULER tasks share: haystacks, random keys and values, fitting cases to a length.

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context
Language Models?") builds every prompt to a target length in tokens of the model's own
tokenizer: the prompt plus the tokens to generate fit the length, with the largest haystack
that does. Its haystacks are the "noise" paragraph repeated, Paul Graham's essays (here:
memjax's shipped prose, Jane Austen's Persuasion, or the config's `corpus`), or needles
themselves. Its random words come from the wonderwords lists; here they are the lowercase
words of the shipped training novel (Emma), which no haystack uses.
"""

from __future__ import annotations

import functools
import re
import uuid
import zlib
from typing import Callable, Sequence

import numpy as np

from memjax.data import corpus
from memjax.data.corpus import TokenizerLike
from memjax.data.retrieval import last_fitting
from memjax.data.sentences import sentence_starts
from memjax.eval.tasks.base import Case, GenerationTask, string_match_all

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Needle depths in percent (RULER draws each needle's depth from this grid, without repeats).
DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, num=40)))


def case_rng(seed: int, task: str, length: int, index: int) -> np.random.Generator:
  """The random stream of case `index` of `task` at `length` (stable across runs)."""
  return np.random.default_rng([seed, zlib.crc32(task.encode()), length, index])


@functools.cache
def words() -> tuple[str, ...]:
  """Distinct lowercase words of 4 to 10 letters of the shipped "train" novel, sorted."""
  text = corpus.load_corpus("train")
  return tuple(sorted(set(re.findall(r"(?<![\w'-])[a-z]{4,10}(?![\w'-])", text))))


def random_word_pair(rng: np.random.Generator) -> str:
  """Two random words joined by a hyphen ("tender-carriage"), like RULER's adjective-noun keys."""
  vocabulary = words()
  first, second = rng.choice(len(vocabulary), 2, replace=False)
  return f"{vocabulary[first]}-{vocabulary[second]}"


def random_number(rng: np.random.Generator, digits: int = 7) -> str:
  """A random number of exactly `digits` digits."""
  return str(rng.integers(10 ** (digits - 1), 10 ** digits))


def random_uuid(rng: np.random.Generator) -> str:
  """A random version-4 UUID, e.g. "1b4e28ba-2fa1-41d2-883f-0016d3cca427"."""
  return str(uuid.UUID(bytes=rng.bytes(16), version=4))


RANDOM = {"words": random_word_pair, "numbers": random_number, "uuids": random_uuid}


@functools.cache
def _essay_sentences(text: str) -> tuple[str, ...]:
  flat = re.sub(r"\s+", " ", text).strip()
  starts = sentence_starts(flat) + [len(flat)]
  return tuple(flat[a:b].strip() for a, b in zip(starts, starts[1:]))


def essay_sentences(cfg, rng: np.random.Generator, length: int) -> tuple[str, ...]:
  """Consecutive sentences of the essay haystack (cfg.corpus, else the shipped "haystack"
  split) from a random sentence, enough for `length` tokens; whitespace collapsed as RULER
  does (no paragraph breaks)."""
  sentences = _essay_sentences(corpus.load_corpus("haystack", cfg.corpus or None))
  needed = length // 4  # more sentences than `length` tokens can hold (>= 4 tokens each)
  if len(sentences) < needed:
    raise ValueError(f"the essay haystack has {len(sentences)} sentences, too few for "
                     f"{length}-token cases; give a longer corpus or shorter context_tokens")
  start = int(rng.integers(len(sentences) - needed + 1))
  return sentences[start:start + needed]


def insert(units: Sequence[str], needles: Sequence[str], fractions: Sequence[float]) -> list[str]:
  """`units` with `needles` inserted, in their order, at the sorted positions
  int(fraction * len(units)) (before the unit there; several may share a position)."""
  positions = sorted(int(f * len(units)) for f in fractions)
  out, last = [], 0
  for position, needle in zip(positions, needles):
    out += list(units[last:position]) + [needle]
    last = position
  return out + list(units[last:])


def fit(build: Callable[[int], tuple[str, str]], length: int, max_new_tokens: int,
        tokenizer: TokenizerLike, most: int) -> tuple[str, str]:
  """The (context, question) of build(size) for the largest size in [1, most] whose tokens,
  context and question each encoded as generation will encode them, plus `max_new_tokens`
  fit in `length` (binary search: token counts grow with the size).

  Raises:
    ValueError: not even size 1 fits, or size `most` still fits (`most` too small).
  """
  def tokens(size: int) -> int:
    context, question = build(size)
    return len(tokenizer.encode(context)) + len(tokenizer.encode(question)) + max_new_tokens

  sizes = range(1, most + 1)
  size = last_fitting(sizes, lambda s: tokens(s) <= length)
  if size == 0:
    raise ValueError(f"{length} tokens cannot hold this task's prompt and {max_new_tokens} "
                     "generated tokens; raise context_tokens")
  if size == most:
    raise ValueError(f"a haystack of {most} units still fits {length} tokens; this task "
                     "cannot fill the length (its haystack is too short)")
  return build(size)


class RulerTask(GenerationTask):
  """A RULER task: case i drawn from `case_rng(seed, name, length, i)` by `case`, scored by
  string_match_all over its answers."""

  def make_cases(self, n: int, length: int, tokenizer: TokenizerLike, cfg,
                 max_new_tokens: int) -> list[Case]:
    return [self.case(case_rng(cfg.seed, self.name, length, i), length, tokenizer, cfg,
                      max_new_tokens) for i in range(n)]

  def case(self, rng: np.random.Generator, length: int, tokenizer: TokenizerLike, cfg,
           max_new_tokens: int) -> Case:
    """One case whose prompt plus `max_new_tokens` fits `length` tokens."""
    raise NotImplementedError

  def score(self, case: Case, generated_text: str) -> float:
    return string_match_all(case.answers, generated_text)
