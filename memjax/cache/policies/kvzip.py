"""`kvzip`: query-agnostic scores by context reconstruction (Kim et al. 2025, "KVzip:
Query-Agnostic KV Cache Compression with Context Reconstruction",
https://arxiv.org/abs/2505.23416).

After the whole context has been prefilled, the model is asked to repeat it: an instruction
("Repeat the previous context exactly."), then the context itself, teacher-forced, in passes
of `chunk_size` tokens (a later pass starts from the instruction "Repeat the part of the
previous context exactly, starting with" and the last `tail` tokens of the previous pass).
A cached token's score is the largest attention any query of these passes pays it; the
tokens that reconstruction leans on are the ones a future question will need. The first
`n_sink` tokens are always kept.

This is a prefill-then-compress method (`compresses_once`): `generate` holds the whole
context while it prefills and scores it, keeps the top S slots per layer and KV head once,
then appends the question and the generated tokens on top of them (as kvpress does), so the
cache peaks at the full context during prefill and holds S + question + new tokens after.
The reconstruction passes cost about one more prefill of the context (each pass attends over
the whole cached context). The reconstruction tokens never enter the cache.

Differences from kvpress 0.5.5's `KVzipPress` (default settings): memjax averages the
attention over the query heads of a KV head's group before taking the maximum (kvpress takes
the maximum over them); a pass attends over the whole cached context (kvpress: the sinks and
the part being repeated); the budget is S slots in every layer and KV head (kvpress's default
ranks all layers' and heads' scores together, so layers get different budgets); no chat
template wraps the instruction (the tokens after it are `suffix`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from memjax.cache.policies.base import Candidates, Policy, group_mean, is_sink, protect


@dataclasses.dataclass(frozen=True)
class KVzip(Policy):
  """Score = the largest attention a reconstruction query pays the slot; sinks kept.

  Attributes:
    n_sink: first tokens of the sequence always kept (kvpress: 4).
    chunk_size: context tokens repeated per reconstruction pass (kvpress: 2048).
    tail: tokens of the previous pass that open the next one (kvpress: 8).
    first_instruction, next_instruction, suffix: the reconstruction prompt's text (a pass
      is instruction [+ tail of the previous pass] + suffix + the context part).
  """

  name = "kvzip"
  needs_attention = True
  compresses_once = True
  n_sink: int = 4
  chunk_size: int = 2048
  tail: int = 8
  first_instruction: str = "\n\nRepeat the previous context exactly."
  next_instruction: str = "\n\nRepeat the part of the previous context exactly, starting with"
  suffix: str = "\n"

  def protected_slots(self, capacity: int) -> int:
    return self.n_sink

  def observe(self, stats, probs, query_valid):
    mass_BxHkvxCxN = group_mean(probs) * query_valid[:, None, :, None]
    return jnp.maximum(stats, jnp.max(mass_BxHkvxCxN, axis=2))

  def score(self, c: Candidates):
    return protect(c.stats, is_sink(c, self.n_sink))

  def reconstruction_rows(self, context: list[int], encode) -> list[list[int]]:
    """The token ids of each reconstruction pass over `context` (`encode`: text -> ids)."""
    passes = []
    for start in range(0, len(context), self.chunk_size):
      part = context[start:start + self.chunk_size]
      head = (encode(self.first_instruction) if start == 0 else
              encode(self.next_instruction) + context[max(0, start - self.tail):start])
      passes.append(head + encode(self.suffix) + part)
    return passes
