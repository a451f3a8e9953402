"""Needle-in-prose retrieval tasks for the query-agnostic protocol.

A case is a stretch of real prose with one or more "secret code" sentences hidden
at sentence boundaries, plus a completion-style question that is appended only
after the context has been compressed, so that the answer is the model's next
few tokens:

  ... prose ... The secret code of Maren Holt is 48213. ... prose ...
  Question: What is the secret code of Maren Holt?
  Answer: The secret code of Maren Holt is

Kinds:
  single:     one needle.
  multikey:   several needles with different names; the question asks about one.
  multivalue: one name with several codes; the question asks for all of them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import numpy as np

from memjax.data.corpus import TokenizerLike, load_corpus
from memjax.data.sentences import ends_sentence, sentence_starts

KINDS = ("single", "multikey", "multivalue")
NEEDLES_PER_KIND = {"single": 1, "multikey": 4, "multivalue": 3}

# Names absent from the shipped corpus, each with a distinct first name.
NAMES = (
    "Maren Holt", "Tobias Wren", "Ingrid Calloway", "Dmitri Vance", "Priya Lindqvist",
    "Oskar Brandt", "Leonie Marsh", "Rafael Okafor", "Sigrid Fairley", "Matteo Quill",
    "Yasmin Rourke", "Felix Hartmann", "Nadia Corrigan", "Hugo Sandoval", "Greta Whitlock",
    "Idris Penrose", "Astrid Kowalski", "Lorenzo Baptiste", "Freya Donnelly", "Anton Mirza",
    "Camille Ostrander", "Julian Thorne", "Zara Nakamura", "Stefan Albright", "Noor Castellano",
    "Viktor Ashby", "Elena Marchetti", "Soren Blackwood", "Talia Reinholt", "Marcus Delacroix",
    "Ophelia Strand", "Bruno Kessler", "Linnea Harrow", "Cyrus Vandermeer", "Delphine Rooker",
    "Emil Sorensen", "Petra Galloway", "Theo Lindgren", "Rosalind Achebe", "Dorian Falk",
)

_NUMBER = re.compile(r"\d+")


@dataclasses.dataclass(frozen=True)
class RetrievalCase:
  """One retrieval prompt.

  Attributes:
    context: haystack prose with the needle sentence(s) inserted at sentence boundaries.
    question: appended after the (compressed) context; ends right before the answer.
    answers: expected answer string(s): one code, or every code for "multivalue".
    kind: "single", "multikey" or "multivalue".
    depth: requested relative position (0..1) of the needle asked about (the first
      needle for "multivalue"); the realised position is the nearest sentence boundary.
    context_tokens: length of `context` in tokens, measured with the case's tokenizer.
    needles: the needle sentences as inserted in `context` (for the `oracle` policy).
  """

  context: str
  question: str
  answers: tuple[str, ...]
  kind: str
  depth: float
  context_tokens: int
  needles: tuple[str, ...] = ()


def make_cases(kind: str, n: int, context_tokens: int, depths: Sequence[float],
               tokenizer: TokenizerLike, seed: int,
               haystack: str | None = None) -> list[RetrievalCase]:
  """Deterministic retrieval cases cut from prose.

  Case i puts its (asked-about) needle at depths[i % len(depths)]. Further needles
  of multi-needle kinds are spread evenly around the cycle from there: needle j of
  k sits at depth (d + j / k) mod 1. Each context starts at a random sentence or
  paragraph start, chosen by `seed`, and holds `context_tokens` tokens including
  the needles, to within a few tokens: it ends at a sentence end when that costs
  at most 1% of the length, otherwise at a word end.

  Args:
    kind: one of KINDS.
    n: number of cases.
    context_tokens: target context length in tokens, as counted by `tokenizer`.
    depths: needle depths in [0, 1] to cycle through.
    tokenizer: has `encode(str) -> list[int]`.
    seed: the same seed (and arguments) gives the same cases.
    haystack: prose to cut from; defaults to the shipped "haystack" split.

  Returns:
    `n` cases.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown retrieval task kind {kind!r}; use one of {list(KINDS)}")
  if n < 1 or context_tokens < 1:
    raise ValueError(
        f"need n >= 1 and context_tokens >= 1, got n={n}, context_tokens={context_tokens}")
  if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
    raise ValueError(f"depths must be a non-empty list of numbers in [0, 1], got {list(depths)}")
  text = load_corpus("haystack") if haystack is None else haystack
  starts = sentence_starts(text)
  chars_per_token = _chars_per_token(text, tokenizer)
  rng = np.random.default_rng([seed, KINDS.index(kind), context_tokens])
  return [_make_case(kind, context_tokens, float(depths[i % len(depths)]), tokenizer, rng,
                     text, starts, chars_per_token) for i in range(n)]


def score_answer(case: RetrievalCase, generated_text: str) -> float:
  """Score a model's continuation of `case.question`, strictly.

  single / multikey: 1.0 if the first number (maximal run of digits) in the text
    equals the answer, else 0.0; so "48213." scores 1 but "482130", "4821" or
    "12345 48213" score 0.
  multivalue: the fraction of the expected codes that appear as whole numbers
    anywhere in the text.

  Args:
    case: the case that was asked.
    generated_text: the decoded generated tokens (the question is not included).

  Returns:
    A score in [0, 1].
  """
  numbers = _NUMBER.findall(generated_text)
  if case.kind == "multivalue":
    found = set(numbers)
    return sum(a in found for a in case.answers) / len(case.answers)
  return float(bool(numbers) and numbers[0] == case.answers[0])


def _make_case(kind: str, context_tokens: int, depth: float, tokenizer: TokenizerLike,
               rng: np.random.Generator, text: str, starts: list[int],
               chars_per_token: float) -> RetrievalCase:
  """One case: draw needles, cut prose to length, insert the needles."""
  k = NEEDLES_PER_KIND[kind]
  codes = [str(c) for c in rng.choice(np.arange(10_000, 100_000), k, replace=False)]
  if kind == "multivalue":
    name = NAMES[rng.integers(len(NAMES))]
    needles = [f"One of the secret codes of {name} is {c}." for c in codes]
    question = (f"\nQuestion: What are the secret codes of {name}?\n"
                f"Answer: The secret codes of {name} are")
    answers = tuple(codes)
  else:
    names = [NAMES[i] for i in rng.choice(len(NAMES), k, replace=False)]
    needles = [f"The secret code of {m} is {c}." for m, c in zip(names, codes)]
    question = (f"\nQuestion: What is the secret code of {names[0]}?\n"
                f"Answer: The secret code of {names[0]} is")
    answers = (codes[0],)
  needle_depths = [(depth + j / k) % 1.0 if j else depth for j in range(k)]
  needle_tokens = [len(tokenizer.encode(" " + s)) for s in needles]
  prose = _cut_prose(text, starts, context_tokens - sum(needle_tokens), tokenizer, rng,
                     chars_per_token)
  context = _insert_needles(prose, needles, needle_depths, needle_tokens, tokenizer)
  return RetrievalCase(context=context, question=question, answers=answers, kind=kind,
                       depth=depth, context_tokens=len(tokenizer.encode(context)),
                       needles=tuple(needles))


def needle_marks(case: RetrievalCase, tokenizer: TokenizerLike, margin: int = 1) -> list[int]:
  """0/1 per token of `tokenizer.encode(case.context)`: 1 on the tokens of every needle
  sentence, widened by `margin` tokens on each side (token boundaries around an inserted
  sentence can merge with its neighbours)."""
  n = len(tokenizer.encode(case.context))
  marks = [0] * n
  for needle in case.needles:
    start = case.context.find(needle)
    if start < 0:
      raise ValueError(f"needle {needle!r} is not in the case's context")
    first = len(tokenizer.encode(case.context[:start]))
    last = len(tokenizer.encode(case.context[:start + len(needle)]))
    for i in range(max(first - margin, 0), min(last + margin, n)):
      marks[i] = 1
  return marks


def _chars_per_token(text: str, tokenizer: TokenizerLike) -> float:
  """Average characters per token over a sample of `text` (to size cuts)."""
  sample = text[:20_000]
  return len(sample) / max(len(tokenizer.encode(sample)), 1)


def _cut_prose(text: str, starts: list[int], n_tokens: int, tokenizer: TokenizerLike,
               rng: np.random.Generator, chars_per_token: float) -> str:
  """About `n_tokens` tokens of `text` from a random sentence start, ending at a word end."""
  if n_tokens < 1:
    raise ValueError("context_tokens is too small to hold the needle sentences; raise it")
  span = int(n_tokens * chars_per_token * 1.5) + 200
  candidates = [s for s in starts if s + span <= len(text)]
  if not candidates:
    raise ValueError(
        f"the haystack ({len(text)} characters) is too short for contexts of {n_tokens} tokens; "
        "use shorter contexts or a longer corpus")
  start = candidates[rng.integers(len(candidates))]
  region = text[start:start + span]
  word_ends = [m.end() for m in re.finditer(r"\S+", region)]
  n_words = last_fitting(word_ends, lambda end: len(tokenizer.encode(region[:end])) <= n_tokens)
  if n_words == 0:
    raise ValueError(f"could not fit a single word of the haystack into {n_tokens} tokens")
  if n_words == len(word_ends):
    raise ValueError(
        f"the haystack from offset {start} holds fewer than {n_tokens} tokens; use a longer corpus")
  prose = region[:word_ends[n_words - 1]]
  if ends_sentence(prose):
    return prose
  shorter = prose[:sentence_starts(prose)[-1]].rstrip()
  if shorter and len(tokenizer.encode(shorter)) >= 0.99 * n_tokens:
    return shorter
  return prose


def _insert_needles(prose: str, needles: list[str], depths: list[float], needle_tokens: list[int],
                    tokenizer: TokenizerLike) -> str:
  """Insert each needle at the sentence boundary nearest its depth in the final context.

  A depth d is the needle's token offset divided by the context length (prose plus
  needles). Needles are placed in order of depth; the offset each one aims for in
  the prose discounts the needles placed before it.
  """
  prose_tokens = len(tokenizer.encode(prose))
  total = prose_tokens + sum(needle_tokens)
  boundaries = sentence_starts(prose)
  if ends_sentence(prose):
    boundaries.append(len(prose))
  # Token offset of boundary i: one encode of a prefix, only for the boundaries searched.
  offset = functools.cache(lambda i: len(tokenizer.encode(prose[:boundaries[i]])))
  placed, before = [], 0
  for j in sorted(range(len(needles)), key=lambda j: depths[j]):
    target = min(max(depths[j] * total - before, 0.0), prose_tokens)
    n_before = max(last_fitting(range(len(boundaries)), lambda i: offset(i) <= target), 1)
    best = n_before - 1
    if n_before < len(boundaries) and offset(n_before) - target < target - offset(best):
      best = n_before
    placed.append((boundaries[best], needles[j]))
    before += needle_tokens[j]
  pieces, last = [], 0
  for position, needle in sorted(placed, key=lambda p: p[0]):
    pieces.append(prose[last:position])
    pieces.append(needle + " " if position < len(prose) else " " + needle)
    last = position
  pieces.append(prose[last:])
  return "".join(pieces).strip()


def last_fitting(items: Sequence, fits) -> int:
  """How many leading `items` satisfy the monotone predicate `fits` (binary search)."""
  lo, hi = 0, len(items)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(items[mid - 1]):
      lo = mid
    else:
      hi = mid - 1
  return lo
