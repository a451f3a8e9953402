"""RULER's frequent words extraction (fwe): the 3 most frequent words of a coded text.

A vocabulary of length // 50 random 6-letter "coded words" is ranked; the word of rank k
appears floor(N k^-2 / zeta(2)) times (Zipf with alpha 2), in random order, and rank 1 is
the noise "..." (so the answer is ranks 2 to 4):

  Read the following coded text and track the frequency of each coded word. Find the three
  most frequently appeared coded words. ... qzkfwe ... ... lmoapx ...
  Question: Do not provide any explanation. Please ignore the dots '....'. What are the
  three most frequently appeared words in the above coded text? Answer: According to the
  coded text above, the three most frequently appeared words are:

N is the largest that fits. Scored by string_match_all over the 3 words; 50 tokens generated.
"""

from __future__ import annotations

import functools
import string

import numpy as np

from memjax.data.corpus import TokenizerLike
from memjax.eval.tasks import ruler
from memjax.eval.tasks.base import Case

ALPHA = 2.0
WORD_LETTERS = 6
ANSWERS = 3
INTRO = ("Read the following coded text and track the frequency of each coded word. Find the "
         "three most frequently appeared coded words. ")
QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are "
            "the three most frequently appeared words in the above coded text? Answer: According "
            "to the coded text above, the three most frequently appeared words are:")


def zipf_counts(n_words: int, vocabulary_size: int, alpha: float = ALPHA) -> np.ndarray:
  """floor(n_words k^-alpha / zeta(alpha)) for ranks k = 1 .. vocabulary_size."""
  ranks = np.arange(1, vocabulary_size + 1, dtype=np.float64)
  return np.floor(n_words * ranks ** -alpha / _zeta(alpha)).astype(int)


@functools.cache
def _zeta(alpha: float) -> float:
  """Riemann zeta(alpha) = sum of k^-alpha over k >= 1 (to 1e-6 for alpha 2)."""
  return float(np.sum(np.arange(1, 10 ** 6, dtype=np.float64) ** -alpha))


class FrequentWords(ruler.RulerTask):
  """RULER fwe with alpha 2, 6-letter coded words, a vocabulary of length // 50."""

  name = "fwe"
  title = "fwe"
  description = "frequent words extraction: the 3 most frequent of Zipf-distributed coded words"
  max_new_tokens = 50
  has_needles = False

  def case(self, rng: np.random.Generator, length: int, tokenizer: TokenizerLike, cfg,
           max_new_tokens: int) -> Case:
    size = max(length // 50, ANSWERS + 2)
    vocabulary: list[str] = []
    while len(vocabulary) < size:
      word = "".join(rng.choice(list(string.ascii_lowercase), WORD_LETTERS))
      if word not in vocabulary:
        vocabulary.append(word)
    vocabulary[0] = "..."
    seed = int(rng.integers(2 ** 31))

    def build(n_words: int) -> tuple[str, str]:
      items = [w for w, c in zip(vocabulary, zipf_counts(n_words, size)) for _ in range(c)]
      order = np.random.default_rng([seed, n_words]).permutation(len(items))
      return INTRO + " ".join(items[i] for i in order), QUESTION

    context, question = ruler.fit(build, length, max_new_tokens, tokenizer, 2 * length)
    return Case(context, question, tuple(vocabulary[1:1 + ANSWERS]))
