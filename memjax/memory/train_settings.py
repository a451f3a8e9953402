"""Settings of the "memory" training method (the `method.memory` section of a TrainConfig):
a decoder trained from scratch with memory layers."""

from __future__ import annotations

import dataclasses

from memjax.models.config import MemoryConfig


@dataclasses.dataclass(frozen=True)
class MemoryMethodSettings:
  """Shapes of the from-scratch decoder (vocabulary and positions come from the "tiny"
  model of the run), its memory layers, and the value tables' own learning rate.

  Attributes:
    d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ff: decoder shapes (ModelConfig).
    memory: the memory layers; empty `memory.layers` trains a plain dense decoder.
    values_lr: constant Adam learning rate of the value tables (no weight decay).
  """

  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 4
  head_dim: int = 32
  d_ff: int = 512
  memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)
  values_lr: float = 1e-3

  def __post_init__(self):
    if self.values_lr <= 0:
      raise ValueError(f"values_lr must be > 0, got {self.values_lr}")
