"""RULER's common words extraction (cwe): name the 10 words a numbered list repeats most.

The list "1. kettle 2. gravel 3. kettle ..." holds 10 common words, each repeated 30 times,
and as many other words as fit, each 3 times (below 4,096 tokens: 6 times and once), in
random order. One solved example comes first (40 words: 10 repeated 10 times, the others 3
times; below 4,096 tokens: 20 words, 3 times and once), as RULER's does:

  Below is a numbered list of words. In these words, some appear more often than others.
  Memorize the ones that appear most often.
  <list>
  Question: What are the 10 most common words in the above list? Answer: The top 10 words
  that appear most often in the list are:

Scored by string_match_all over the 10 common words; 120 tokens generated.
"""

from __future__ import annotations

import numpy as np

from memjax.data.corpus import TokenizerLike
from memjax.eval.tasks import ruler
from memjax.eval.tasks.base import Case

COMMON = 10
INTRO = ("Below is a numbered list of words. In these words, some appear more often than others. "
         "Memorize the ones that appear most often.\n")
QUESTION = (f"\nQuestion: What are the {COMMON} most common words in the above list? Answer: "
            f"The top {COMMON} words that appear most often in the list are:")


def numbered(items) -> str:
  """"1. a 2. b ..."."""
  return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))


def shuffled(rng: np.random.Generator, chosen: list[str], common_repeats: int,
             other_repeats: int) -> list[str]:
  """The list: the first COMMON of `chosen` `common_repeats` times each, the others
  `other_repeats` times each, in random order."""
  items = chosen[:COMMON] * common_repeats + chosen[COMMON:] * other_repeats
  return [items[i] for i in rng.permutation(len(items))]


class CommonWords(ruler.RulerTask):
  """RULER cwe with num_cw 10, freq_cw 30, freq_ucw 3 (6 and 1 below 4,096 tokens)."""

  name = "cwe"
  title = "cwe"
  description = "common words extraction: the 10 most repeated words of a numbered list"
  max_new_tokens = 120
  has_needles = False

  def case(self, rng: np.random.Generator, length: int, tokenizer: TokenizerLike, cfg,
           max_new_tokens: int) -> Case:
    short = length < 4096
    vocabulary = ruler.words()
    order = [vocabulary[i] for i in rng.permutation(len(vocabulary))]
    example, order = order[:20 if short else 40], order[40:]
    solved = (INTRO + numbered(shuffled(rng, example, *((3, 1) if short else (10, 3))))
              + QUESTION + " " + numbered(example[:COMMON]) + "\n")
    repeats = (6, 1) if short else (30, 3)
    seed = int(rng.integers(2 ** 31))

    def build(size: int) -> tuple[str, str]:
      items = shuffled(np.random.default_rng([seed, size]), order[:COMMON + size], *repeats)
      return solved + INTRO + numbered(items), QUESTION

    context, question = ruler.fit(build, length, max_new_tokens, tokenizer, length // 2)
    return Case(context, question, tuple(order[:COMMON]))
