"""RULER's eight needle-in-a-haystack tasks (niah_single_1 ... niah_multiquery).

A needle is "One of the special magic {values} for {key} is: {value}." with word keys
(two words joined by a hyphen), UUID keys, 7-digit numbers or UUIDs as values. The haystack
is the noise paragraph repeated (one per line), essay sentences, or other needles (one per
line). Needles go at depths drawn from a 40-point grid of 0..100% (essay: at sentence
boundaries) or at uniformly random lines (noise, needles). The prompt:

  Some special magic numbers are hidden within the following text. Make sure to memorize
  it. I will quiz you about the numbers afterwards.
  <haystack with needles>
  What are all the special magic numbers for tender-carriage mentioned in the provided
  text? The special magic numbers for tender-carriage mentioned in the provided text are

with the singular ("A special magic number is hidden ... What is the special magic number
...") when one value of one key is asked. The context is everything before the question
line. Scored by string_match_all over the asked values; 128 tokens generated.
"""

from __future__ import annotations

from memjax.data.corpus import TokenizerLike
from memjax.eval.tasks import ruler
from memjax.eval.tasks.base import Case


class NIAH(ruler.RulerTask):
  """One RULER needle-in-a-haystack configuration.

  Args:
    name: the RULER task name.
    haystack: "repeat" (noise), "essay" or "needle".
    key_type, value_type: "words", "numbers" or "uuids".
    keys: needles with different keys (the asked ones and distractors).
    values: values (needles) per key.
    queries: keys asked about (at most `keys`).
    description: one line for reports.
  """

  max_new_tokens = 128

  def __init__(self, name: str, haystack: str, key_type: str, value_type: str, keys: int = 1,
               values: int = 1, queries: int = 1, description: str = ""):
    self.name, self.title, self.description = name, name, description
    self.haystack, self.key_type, self.value_type = haystack, key_type, value_type
    self.keys, self.values, self.queries = max(keys, queries), values, queries

  def needle(self, key: str, value: str) -> str:
    """The needle sentence of (key, value)."""
    return f"One of the special magic {self.value_type} for {key} is: {value}."

  def _draw(self, rng, kind: str, taken: set[str]) -> str:
    """A random key or value of `kind` not in `taken` (which it joins)."""
    while (item := ruler.RANDOM[kind](rng)) in taken:
      pass
    taken.add(item)
    return item

  def case(self, rng, length: int, tokenizer: TokenizerLike, cfg, max_new_tokens: int) -> Case:
    taken: set[str] = set()
    keys = [self._draw(rng, self.key_type, taken) for _ in range(self.keys)]
    values = [[self._draw(rng, self.value_type, taken) for _ in range(self.values)]
              for _ in keys]
    needles = [self.needle(k, v) for k, vs in zip(keys, values) for v in vs]
    needles = [needles[i] for i in rng.permutation(len(needles))]
    if self.haystack == "essay":
      fractions = [d / 100 for d in rng.choice(ruler.DEPTHS, len(needles), replace=False)]
      units, most = ruler.essay_sentences(cfg, rng, length), None
    else:
      fractions = list(rng.random(len(needles)))
      most = length // 8  # lines of >= 8 tokens each cannot all fit
      units = ([ruler.NOISE] * most if self.haystack == "repeat" else
               [self.needle(self._draw(rng, self.key_type, taken),
                            self._draw(rng, self.value_type, taken)) for _ in range(most)])
    asked = sorted(rng.choice(len(keys), self.queries, replace=False))
    query = (", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]]
             if len(asked) > 1 else keys[asked[0]])
    answers = tuple(v for i in asked for v in values[i])
    one = len(answers) == 1
    kind = self.value_type[:-1] if one else self.value_type
    preamble = (f"{'A' if one else 'Some'} special magic {kind} {'is' if one else 'are'} hidden "
                f"within the following text. Make sure to memorize it. I will quiz you about "
                f"the {kind} afterwards.\n")
    question = (f"\nWhat {'is' if one else 'are all'} the special magic {kind} for {query} "
                f"mentioned in the provided text? The special magic {kind} for {query} "
                f"mentioned in the provided text {'is' if one else 'are'}")
    joiner = " " if self.haystack == "essay" else "\n"

    def build(size: int) -> tuple[str, str]:
      return preamble + joiner.join(ruler.insert(units[:size], needles, fractions)), question

    context, question = ruler.fit(build, length, max_new_tokens, tokenizer, most or len(units))
    return Case(context, question, answers, tuple(needles))


TASKS = (
    NIAH("niah_single_1", "repeat", "words", "numbers",
         description="one word key, 7-digit value, in the repeated noise paragraph"),
    NIAH("niah_single_2", "essay", "words", "numbers",
         description="one word key, 7-digit value, in essay prose"),
    NIAH("niah_single_3", "essay", "words", "uuids",
         description="one word key, UUID value, in essay prose"),
    NIAH("niah_multikey_1", "essay", "words", "numbers", keys=4,
         description="4 needles with different word keys in essay prose; one is asked"),
    NIAH("niah_multikey_2", "needle", "words", "numbers",
         description="word key, 7-digit value; the haystack is other keys' needles"),
    NIAH("niah_multikey_3", "needle", "uuids", "uuids",
         description="UUID key, UUID value; the haystack is other keys' needles"),
    NIAH("niah_multivalue", "essay", "words", "numbers", values=4,
         description="4 values of one word key in essay prose; all are asked"),
    NIAH("niah_multiquery", "essay", "words", "numbers", keys=4, queries=4,
         description="4 word keys in essay prose; all 4 are asked at once"),
)
