"""Checks of arguments at memjax's public boundary, with errors that say what to do.

Each check returns the value it accepted (token ids as lists of Python ints, numbers as
Python ints or floats), so that callers go on with exactly what was checked. Wrong types
raise TypeError, values out of range ValueError.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


def integer(name: str, value: Any, minimum: int, hint: str = "") -> int:
  """`value` as an int, if it is an integer (not a bool, float or string) >= `minimum`.

  Args:
    name: the argument's name, for the message.
    value: what the caller passed.
    minimum: the smallest valid value.
    hint: what the argument means, e.g. "KV slots per layer", for the message.
  """
  what = f"{name} ({hint})" if hint else name
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{what} must be an int, got {value!r} ({type(value).__name__})")
  if value < minimum:
    raise ValueError(f"{what} must be >= {minimum}, got {value}")
  return int(value)


def optional_integer(name: str, value: Any, minimum: int, hint: str = "") -> int | None:
  """None, or `value` checked by `integer`."""
  return None if value is None else integer(name, value, minimum, hint)


def non_negative(name: str, value: Any, hint: str = "") -> float:
  """`value` as a float, if it is a finite real number >= 0 (not a bool or string)."""
  what = f"{name} ({hint})" if hint else name
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"{what} must be a finite number >= 0, got {value}")
  return float(value)


def token_ids(ids: Any, vocab_size: int, what: str = "token ids") -> list[int]:
  """One row of token ids [T] as Python ints, each an integer in [0, vocab_size).

  Args:
    ids: a sequence of integers (list, tuple or 1-D integer array); may be empty.
    vocab_size: V, the number of ids the model or tokenizer knows.
    what: names the row in messages, e.g. "prompt 2".

  Raises:
    TypeError: `ids` is not a flat sequence of integers.
    ValueError: an id is negative or >= vocab_size (the message names it and V).
  """
  if not is_sequence(ids):
    raise TypeError(f"{what}: expected a sequence of token ids, got {ids!r} "
                    f"({type(ids).__name__})")
  items = list(ids)
  for position, item in enumerate(items):
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
      raise TypeError(f"{what}: position {position} holds {item!r} ({type(item).__name__}), "
                      "not an integer token id")
    if not 0 <= item < vocab_size:
      raise ValueError(f"{what}: token id {item} at position {position} is outside the "
                       f"vocabulary of {vocab_size} ids (valid ids are 0 to {vocab_size - 1})")
  return [int(i) for i in items]


def token_rows(rows: Any, vocab_size: int, what: str = "row") -> list[list[int]]:
  """A batch of B rows of token ids (lengths may differ), each checked by `token_ids`.

  Args:
    rows: a sequence of rows (lists, tuples or arrays of ids), or a 2-D integer array.
    vocab_size: V, the number of ids the model knows.
    what: messages call row b f"{what} {b}", e.g. "prompt 0".

  Raises:
    TypeError: `rows` is not a sequence of rows, or a row is not a sequence of integers.
    ValueError: an id lies outside [0, vocab_size) (the message names the row and the id).
  """
  if not is_sequence(rows):
    raise TypeError(f"{what}s: expected a batch (list) of rows of token ids, got {rows!r} "
                    f"({type(rows).__name__})")
  return [token_ids(row, vocab_size, f"{what} {b}") for b, row in enumerate(rows)]


def is_sequence(x: Any) -> bool:
  """Whether `x` is a list, tuple, 1-D-or-more array or other iterable that is not text."""
  if isinstance(x, np.ndarray):
    return x.ndim >= 1
  return isinstance(x, Iterable) and not isinstance(x, (str, bytes))
