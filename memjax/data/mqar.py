"""Multi-query associative recall (MQAR): key-value pairs, then the keys asked again.

A row is n_pairs (key, value) pairs followed by n_queries of those keys, each followed by
its value:

  k_1 v_1 k_2 v_2 ... k_n v_n | q_1 a_1 q_2 a_2 ... q_m a_m

Keys in a row are distinct; values may repeat; the queried keys are a random subset in
random order, so the distance from a pair to its query varies from row to row. The model
must predict every a_j from the prefix ending at q_j: the state it carries across the row
has to hold the pairs. Token ids: 0 is unused (padding), keys are 1..n_keys, values
n_keys + 1 .. n_keys + n_values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class MQARTask:
  """Shapes of the task.

  Attributes:
    n_pairs: key-value pairs per row.
    n_queries: keys asked per row (at most n_pairs).
    n_keys: size of the key vocabulary (at least n_pairs).
    n_values: size of the value vocabulary.
  """

  n_pairs: int = 16
  n_queries: int = 16
  n_keys: int = 64
  n_values: int = 64

  def __post_init__(self):
    if not 1 <= self.n_queries <= self.n_pairs <= self.n_keys:
      raise ValueError(f"need 1 <= n_queries <= n_pairs <= n_keys, got n_queries="
                       f"{self.n_queries}, n_pairs={self.n_pairs}, n_keys={self.n_keys}")
    if self.n_values < 1:
      raise ValueError(f"n_values must be >= 1, got {self.n_values}")

  @property
  def seq_len(self) -> int:
    """Tokens per row: 2 (n_pairs + n_queries)."""
    return 2 * (self.n_pairs + self.n_queries)

  @property
  def vocab_size(self) -> int:
    """1 + n_keys + n_values (id 0 unused)."""
    return 1 + self.n_keys + self.n_values


def mqar_batch(task: MQARTask, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One batch of rows.

  Returns:
    "tokens": int32 [B, T] (T = task.seq_len).
    "answer_mask": bool [B, T], True at the answers a_j (the tokens to predict, each from
      the prefix before it).
  """
  n, m = task.n_pairs, task.n_queries
  keys_BxN = np.argsort(rng.random((batch, task.n_keys)), axis=1)[:, :n] + 1
  values_BxN = rng.integers(0, task.n_values, (batch, n)) + task.n_keys + 1
  asked_BxM = np.argsort(rng.random((batch, n)), axis=1)[:, :m]
  pairs = np.stack([keys_BxN, values_BxN], axis=2).reshape(batch, 2 * n)
  queries = np.stack([np.take_along_axis(keys_BxN, asked_BxM, axis=1),
                      np.take_along_axis(values_BxN, asked_BxM, axis=1)], axis=2)
  tokens = np.concatenate([pairs, queries.reshape(batch, 2 * m)], axis=1).astype(np.int32)
  answer_mask = np.zeros(tokens.shape, bool)
  answer_mask[:, 2 * n + 1::2] = True
  return {"tokens": tokens, "answer_mask": answer_mask}


class MQARBatches:
  """Resumable stream of `mqar_batch`es: batch i is drawn from (seed, i), so a restored
  position replays exactly the batches an uninterrupted run would have seen."""

  def __init__(self, task: MQARTask, batch: int, seed: int):
    self.task, self.batch, self.seed, self.position = task, batch, seed, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((self.seed, self.position))
    self.position += 1
    return mqar_batch(self.task, self.batch, rng)

  def get_state(self) -> dict[str, Any]:
    return {"position": self.position}

  def set_state(self, state: dict[str, Any]) -> None:
    self.position = int(state["position"])
