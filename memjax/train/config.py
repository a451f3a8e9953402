"""Settings of a training run, read from YAML or gin plus `key=value` overrides."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal, Sequence

from memjax.config import ConfigError, load_config
from memjax.memory.train_settings import MemoryMethodSettings
from memjax.sharding.config import MeshConfig


@dataclasses.dataclass(frozen=True)
class TrimKVConfig:
  """TRIM-KV retention-gate training ("Cache What Lasts", arXiv 2512.03324).

  The loss is (ce_weight · CE + kl_weight · KL) / (ce_weight + kl_weight)
  + capacity_weight · capacity (see memjax.retention.losses).

  Attributes:
    memory_M: KV slots per (layer, KV head) that the capacity loss aims for (M).
    gate_hidden: hidden width of each layer's gate MLP.
    gate_bias_init: initial per-head output bias; β = sigmoid(bias) starts near 1, so the
      gated model starts equal to the frozen one.
    ce_weight: weight of the next-token cross-entropy.
    kl_weight: weight of the forward KL(teacher || student) to the frozen model.
    capacity_weight: λ, weight of the capacity loss.
    attention: decayed-attention implementation, "blockwise" or "reference" (T×T logits).
    block: tile size of blockwise attention and of the capacity sums.
    answer_weight: the distillation term adds answer_weight × the same CE/KL averaged over
      the answer span of synthetic rows (the batch's "answer" mask), so the few tokens that
      need a fact from far back are not drowned by the ~1,000 others; 0: plain mean.
    memory_ratio: if > 0, the capacity budget grows with the position, M_t = max(memory_M,
      ratio · (t + 1)) (the kept fraction the evaluation uses, memory_M its floor) instead of
      the fixed memory_M.
    fact_weight: weight of a direct supervision of the gates on the synthetic rows' fact
      tokens (the batch's "fact" mask): the mean of −log β · T over them, the log of how
      much a fact fades across a row. 0: pure distillation, as in the paper.
    teacher_topk: if > 0, the frozen teacher's top-k next-token log-probabilities are
      computed once per batch index and kept on disk (memjax.train.teacher), so steps run
      only the student and the KL is taken over those k tokens plus the rest; 0 runs the
      teacher in every step (the exact KL).
    teacher_cache_dir: where those outputs live; default `output_dir`/teacher_top<k>. Runs
      with the same model, data settings and seed can share one directory.
  """

  memory_M: int = 512
  gate_hidden: int = 512
  gate_bias_init: float = 12.0
  ce_weight: float = 1.0
  kl_weight: float = 1.0
  capacity_weight: float = 1.0
  attention: Literal["blockwise", "reference"] = "blockwise"
  block: int = 128
  answer_weight: float = 0.0
  memory_ratio: float = 0.0
  fact_weight: float = 0.0
  teacher_topk: int = 0
  teacher_cache_dir: str | None = None

  def __post_init__(self):
    if self.teacher_topk < 0:
      raise ValueError(f"teacher_topk must be >= 0 (0: run the teacher), got {self.teacher_topk}")
    for field in ("memory_M", "gate_hidden", "block"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    if min(self.ce_weight, self.kl_weight, self.capacity_weight, self.answer_weight,
           self.fact_weight) < 0:
      raise ValueError("loss weights must be >= 0")
    if not 0 <= self.memory_ratio < 1:
      raise ValueError(f"memory_ratio must lie in [0, 1) (0: use memory_M), got "
                       f"{self.memory_ratio}")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """What is trained and with which loss.

  Attributes:
    name: a method of `memjax.train.methods.METHODS`, e.g. "next_token".
    trainable: parameter path patterns that train, e.g. ["layers/gate"] or ["layers/w*"]:
      a pattern selects the paths it matches (fnmatch, "/" between keys) and everything
      under them. Empty: the method's own default. Everything else stays frozen and has
      no optimiser state.
    trim_kv: hyper-parameters of the "trim_kv" method.
    memory: decoder shapes, memory layers and value learning rate of the "memory" method.
  """

  name: str = "next_token"
  trainable: list[str] = dataclasses.field(default_factory=list)
  trim_kv: TrimKVConfig = dataclasses.field(default_factory=TrimKVConfig)
  memory: MemoryMethodSettings = dataclasses.field(default_factory=MemoryMethodSettings)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run.

  Attributes:
    model: "tiny" (a random 2-layer model on UTF-8 bytes, for tests) or a model name / path
      that `memjax.io.load_checkpoint` knows.
    dtype: storage dtype of the frozen parameters. Trainable ones are kept in float32.
    compute_dtype: dtype of the forward and backward passes.
    remat: recompute each layer's activations in the backward pass (less memory).
    attention_impl: the model's attention ("auto": Pallas kernels on TPU/GPU, XLA on CPU;
      "xla", "tpu" or "gpu"); on a mesh the kernels run per device block (shard_map).
    seed: seeds the model's random init, the method's init, the data and the step RNG.
    steps: optimiser steps in the whole run (a resumed run continues up to it).
    seq_len: tokens per training sequence.
    batch_size: sequences per optimiser step.
    grad_accum: micro-batches per step; batch_size / grad_accum sequences go through the
      model at once, and their gradients are averaged.
    lr: peak learning rate, reached after the linear warm-up.
    warmup_steps: steps of linear warm-up from 0.
    end_lr: learning rate at the last step, reached by cosine decay.
    weight_decay: AdamW decoupled weight decay.
    b1, b2: AdamW moment decay rates.
    clip_norm: clip gradients to this global norm; None disables clipping.
    synthetic_fraction: share of sequences that are synthetic retrieval/recall tasks; the
      rest are packed prose.
    recall_fraction: share of the synthetic sequences that are recall (rest: retrieval).
    fact_templates: how many of the retrieval fact templates (memjax.train.data.TEMPLATES:
      numbers, codes, places, phrases) the synthetic rows draw from; 1 is the original one.
    corpus_splits: shipped texts to train on (memjax.data.corpus.SPLIT_FILES), e.g.
      [train, train_technical] for novels and technical prose.
    corpus: local text files to train on instead of the shipped splits.
    output_dir: metrics.jsonl, TensorBoard events and config.yaml go here.
    checkpoint_dir: checkpoints; None means `output_dir`/checkpoints.
    save_every: save a checkpoint every this many steps (and at the last step).
    keep: newest checkpoints kept.
    log_every: log the mean metrics of this many steps at a time.
    method: what trains, and the loss's hyper-parameters.
    mesh: the device mesh, logical axis rules and multi-process settings (the default uses
      every device for data parallelism).
  """

  model: str = "tiny"
  dtype: Literal["float32", "bfloat16"] = "float32"
  compute_dtype: Literal["float32", "bfloat16"] = "float32"
  remat: bool = False
  attention_impl: Literal["auto", "xla", "tpu", "gpu"] = "auto"
  seed: int = 0
  steps: int = 1000
  seq_len: int = 256
  batch_size: int = 8
  grad_accum: int = 1
  lr: float = 2e-4
  warmup_steps: int = 100
  end_lr: float = 1e-6
  weight_decay: float = 1e-5
  b1: float = 0.9
  b2: float = 0.999
  clip_norm: float | None = 1.0
  synthetic_fraction: float = 0.5
  recall_fraction: float = 0.5
  fact_templates: int = 1
  corpus_splits: list[str] = dataclasses.field(default_factory=lambda: ["train"])
  corpus: list[str] = dataclasses.field(default_factory=list)
  output_dir: str = "runs/train"
  checkpoint_dir: str | None = None
  save_every: int = 100
  keep: int = 3
  log_every: int = 10
  method: MethodConfig = dataclasses.field(default_factory=MethodConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

  def __post_init__(self):
    for field in ("steps", "seq_len", "batch_size", "grad_accum", "save_every", "keep",
                  "log_every"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    if self.seq_len < 2:
      raise ValueError(f"seq_len must be >= 2 (one input and one target), got {self.seq_len}")
    if self.batch_size % self.grad_accum:
      raise ValueError(f"batch_size={self.batch_size} is not a multiple of "
                       f"grad_accum={self.grad_accum}; change one of them")
    if not 0 <= self.warmup_steps < self.steps:
      raise ValueError(f"warmup_steps must lie in [0, steps={self.steps}), "
                       f"got {self.warmup_steps}; lower it")
    if not 0 <= self.end_lr <= self.lr:
      raise ValueError(f"need 0 <= end_lr <= lr, got end_lr={self.end_lr}, lr={self.lr}")
    for field in ("b1", "b2"):
      if not 0 <= getattr(self, field) < 1:
        raise ValueError(f"{field} must lie in [0, 1), got {getattr(self, field)}")
    if self.weight_decay < 0 or (self.clip_norm is not None and self.clip_norm <= 0):
      raise ValueError("weight_decay must be >= 0 and clip_norm > 0 (or null to disable)")
    for field in ("synthetic_fraction", "recall_fraction"):
      if not 0 <= getattr(self, field) <= 1:
        raise ValueError(f"{field} must lie in [0, 1], got {getattr(self, field)}")

  @property
  def micro_batch_size(self) -> int:
    """Sequences per forward/backward pass."""
    return self.batch_size // self.grad_accum

  @property
  def checkpoint_path(self) -> pathlib.Path:
    """Where checkpoints go (absolute, as orbax wants)."""
    path = self.checkpoint_dir or pathlib.Path(self.output_dir) / "checkpoints"
    return pathlib.Path(path).absolute()


def load_train_config(path: str | None = None, overrides: Sequence[str] = (),
                      allow_gin_imports: bool = False) -> TrainConfig:
  """A TrainConfig from defaults, a `.yaml`/`.yml` or `.gin` file, then `key=value` overrides.

  `allow_gin_imports` lets a gin file's `import` lines run (they import modules, running
  their code; see `memjax.train.gin_config`); without it such a file is refused.

  Raises:
    ConfigError: an unknown key (nearest valid key suggested), a wrong type, a bad value, a
      syntax error, gin `import` lines not allowed, or a file that is neither YAML nor gin.
    FileNotFoundError: `path` does not exist.
  """
  suffix = pathlib.Path(path).suffix if path is not None else ".yaml"
  if suffix == ".gin":
    from memjax.train.gin_config import load_gin_config
    return load_gin_config(TrainConfig, path, overrides, allow_imports=allow_gin_imports)
  if suffix in (".yaml", ".yml"):
    return load_config(TrainConfig, path, overrides)
  raise ConfigError(f"config file {path!r} must end in .yaml, .yml or .gin")
