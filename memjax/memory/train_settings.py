"""Settings of the "memory" training method: a decoder trained from scratch with memory.

`MemoryMethodSettings` is meant to be the `memory` field of
`memjax.train.config.MethodConfig`; until that field exists, `MemoryTrainConfig` (a
TrainConfig whose method section has it) loads configs/memory_*.yaml.
"""

from __future__ import annotations

import dataclasses

from memjax.models.config import MemoryConfig
from memjax.train.config import MethodConfig, TrainConfig


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


@dataclasses.dataclass(frozen=True)
class MemoryMethodConfig(MethodConfig):
  """MethodConfig plus the "memory" method's settings."""

  memory: MemoryMethodSettings = dataclasses.field(default_factory=MemoryMethodSettings)


@dataclasses.dataclass(frozen=True)
class MemoryTrainConfig(TrainConfig):
  """TrainConfig whose method section carries `memory` settings."""

  method: MemoryMethodConfig = dataclasses.field(default_factory=MemoryMethodConfig)
