"""Per-layer budget allocation: how many KV slots each layer gets for a given mean."""

from __future__ import annotations

from typing import Literal

import numpy as np

Schedule = Literal["uniform", "pyramid"]


def layer_budgets(mean_budget: int, n_layers: int, schedule: Schedule = "uniform",
                  pyramid_spread: float = 0.5) -> list[int]:
  """Slots per layer, summing to n_layers * mean_budget.

  Args:
    mean_budget: average slots per layer (tokens).
    n_layers: number of layers L.
    schedule: "uniform" (every layer gets the mean) or "pyramid" (PyramidKV, arXiv
      2406.02069: budgets fall linearly with depth, from (1 + spread) x mean in the first
      layer to (1 - spread) x mean in the last).
    pyramid_spread: relative spread of the pyramid, in [0, 1).

  Returns:
    A list of L positive budgets.
  """
  if mean_budget < 1:
    raise ValueError(f"budget must be at least 1 token per layer, got {mean_budget}")
  if schedule == "uniform":
    return [mean_budget] * n_layers
  if schedule != "pyramid":
    raise ValueError(f"unknown budget schedule {schedule!r}; use 'uniform' or 'pyramid'")
  if not 0 <= pyramid_spread < 1:
    raise ValueError(f"pyramid_spread must be in [0, 1), got {pyramid_spread}")
  ideal = mean_budget * np.linspace(1 + pyramid_spread, 1 - pyramid_spread, n_layers)
  budgets = np.maximum(np.floor(ideal).astype(int), 1)
  shortfall = n_layers * mean_budget - budgets.sum()
  # Hand the rounding remainder to the layers that lost the most to rounding.
  for layer in np.argsort(budgets - ideal)[:shortfall]:
    budgets[layer] += 1
  return budgets.tolist()
