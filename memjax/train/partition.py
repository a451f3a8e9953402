"""Split a params dict into its trainable and frozen parts by path patterns, and merge them.

A leaf's path is its dict keys joined by "/" ("layers/wq", "layers/gate/w1"). A pattern
selects the paths it matches with fnmatch ("layers/w*") and everything under them
("layers/gate" selects "layers/gate/w1"). Both parts are nested dicts holding only their own
leaves, so an optimiser built on the trainable part keeps no state for frozen weights.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

Params = dict[str, Any]


def leaf_paths(params: Params, prefix: str = "") -> list[str]:
  """The "/"-joined paths of every leaf of a nested dict, in insertion order."""
  out = []
  for key, value in params.items():
    path = f"{prefix}{key}"
    out += leaf_paths(value, path + "/") if isinstance(value, dict) else [path]
  return out


def is_selected(path: str, patterns: Sequence[str]) -> bool:
  """Whether a pattern matches `path` or one of the folders above it."""
  parts = path.split("/")
  prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
  return any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns for p in prefixes)


def partition(params: Params, patterns: Sequence[str]) -> tuple[Params, Params]:
  """(trainable, frozen): the leaves selected by `patterns`, and the others.

  Raises:
    ValueError: no leaf is selected (the message lists the paths there are).
  """
  trainable, frozen = _split(params, patterns, "")
  if not trainable:
    raise ValueError(f"no parameter matches the trainable patterns {list(patterns)}; "
                     f"parameter paths are {leaf_paths(params)}")
  return trainable, frozen


def merge(trainable: Params, frozen: Params) -> Params:
  """The full params dict again (trainable leaves win where both define a path)."""
  out = dict(frozen)
  for key, value in trainable.items():
    out[key] = merge(value, out.get(key, {})) if isinstance(value, dict) else value
  return out


def _split(params: Params, patterns: Sequence[str], prefix: str) -> tuple[Params, Params]:
  selected, other = {}, {}
  for key, value in params.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      sub_selected, sub_other = _split(value, patterns, path + "/")
      if sub_selected:
        selected[key] = sub_selected
      if sub_other:
        other[key] = sub_other
    elif is_selected(path, patterns):
      selected[key] = value
    else:
      other[key] = value
  return selected, other
