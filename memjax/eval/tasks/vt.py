"""RULER's variable tracking (vt): follow a chain of assignments hidden in noise.

One chain of 4 hops, "VAR QPWHZ = 48213", "VAR KDLEA = VAR QPWHZ", ... (5 variables of 5
capital letters, a 5-digit value), its lines inserted in order at random lines of the
repeated noise paragraph. The prompt starts with one solved example (3-letter variables,
noise fitted to 500 tokens), as RULER's does:

  <example, its answer>
  Memorize and track the chain(s) of variable assignment hidden in the following text.

  <noise with the chain>
  Question: Find all variables that are assigned the value 48213 in the text above. Answer:
  According to the chain(s) of variable assignment in the text above, 5 variables are
  assigned the value 48213, they are:

Scored by string_match_all over the 5 variable names; 30 tokens generated.
"""

from __future__ import annotations

import string

import numpy as np

from memjax.data.corpus import TokenizerLike
from memjax.eval.tasks import ruler
from memjax.eval.tasks.base import Case

HOPS = 4
EXAMPLE_TOKENS = 500


class VariableTracking(ruler.RulerTask):
  """RULER vt: 1 chain, 4 hops, noise haystack, one solved example first."""

  name = "vt"
  title = "vt"
  description = "variable tracking: the 5 variables a 4-hop chain of assignments gives a value"
  max_new_tokens = 30

  def case(self, rng: np.random.Generator, length: int, tokenizer: TokenizerLike, cfg,
           max_new_tokens: int) -> Case:
    example, variables = _prompt(rng, 3, "")
    context, question = ruler.fit(example, EXAMPLE_TOKENS, 0, tokenizer, EXAMPLE_TOKENS // 8)
    solved = context + question + " " + " ".join(variables) + "\n"
    build, variables = _prompt(rng, 5, solved + "\n")
    context, question = ruler.fit(build, length, max_new_tokens, tokenizer, length // 8)
    chain_lines = tuple(line for line in context.split("\n") if line.startswith("VAR "))
    return Case(context, question, tuple(variables), chain_lines[-len(variables):])


def _prompt(rng: np.random.Generator, letters: int, before: str):
  """(build(size) -> (context, question) with `size` noise lines, the chain's variables)."""
  names: list[str] = []
  while len(names) < HOPS + 1:
    name = "".join(rng.choice(list(string.ascii_uppercase), letters))
    if name not in names:
      names.append(name)
  value = ruler.random_number(rng, 5)
  chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
  fractions = list(rng.random(len(chain)))
  question = (f"\nQuestion: Find all variables that are assigned the value {value} in the text "
              f"above. Answer: According to the chain(s) of variable assignment in the text "
              f"above, {len(names)} variables are assigned the value {value}, they are: ")

  def build(size: int) -> tuple[str, str]:
    lines = ruler.insert([ruler.NOISE] * size, chain, fractions)
    return (before + "Memorize and track the chain(s) of variable assignment hidden in the "
            "following text.\n\n" + "\n".join(lines)), question

  return build, names
