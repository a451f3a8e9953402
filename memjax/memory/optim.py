"""Memory value tables in their own optimiser group (Lample et al.: Adam, own lr, no decay)."""

from __future__ import annotations

from typing import Any

import jax
import optax

Params = dict[str, Any]  # a parameter pytree (as memjax.train.partition.Params)


def is_value_table(path: str) -> bool:
  """Whether a "/"-joined param path is a memory value table (per layer or shared)."""
  parts = path.split("/")
  return parts[0] == "memory" and parts[-1] == "values"


def value_labels(params: Params) -> Params:
  """The same tree with "values" at memory value tables and "default" everywhere else."""
  def label(path, _):
    name = "/".join(str(k.key) for k in path)
    return "values" if is_value_table(name) else "default"
  return jax.tree_util.tree_map_with_path(label, params)


def with_value_group(default: optax.GradientTransformation,
                     values_lr: float) -> optax.GradientTransformation:
  """`default` for every param except the memory value tables, which get plain Adam at the
  constant `values_lr` without weight decay (and outside `default`'s clipping)."""
  return optax.multi_transform({"default": default, "values": optax.adam(values_lr)},
                               value_labels)
