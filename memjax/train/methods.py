"""Training methods: a name -> how to extend the model's params and which loss to minimise.

A method is a `Method(new_params, default_trainable, make_loss)`. The trainer adds the
params that `new_params` creates to the model's, partitions the result into a trainable part
(the paths selected by `cfg.method.trainable`, or else by `default_trainable`) and a frozen
part, and minimises `make_loss(model_cfg, cfg)(trainable, frozen, batch, rng)`. A new method
is one Method and one line in METHODS.

  next_token: plain next-token fine-tuning of a chosen subset of the model (default: all
    layers); for tests and for sanity checks of the trainer.
  trim_kv:    TRIM-KV retention gates (memjax.retention) added under "layers/gate" and
    trained alone against the frozen model, with the settings of cfg.method.trim_kv.
  memory:     a decoder with memory layers (memjax.memory) trained from scratch by
    next-token loss; shapes and memory from cfg.method.memory (MemoryMethodSettings),
    vocabulary and positions from the "tiny" model. Logs key usage per memory block.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from memjax.memory import decoder, usage
from memjax.memory.optim import with_value_group
from memjax.models import llama
from memjax.models.config import ModelConfig
from memjax import sharding
from memjax.retention import add_gates, init_gate_params, trimkv_loss
from memjax.retention.losses import target_ce
from memjax.train.config import TrainConfig
from memjax.train.partition import Params, leaf_paths, merge

Batch = dict[str, jax.Array]
# loss_fn(trainable, frozen, batch, rng) -> (scalar loss, {metric name: scalar}); batch
# leaves are [micro_batch, ...] (e.g. "tokens": int32 [B, T]).
LossFn = Callable[[Params, Params, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Method:
  """How one training method sets up its parameters and its loss.

  Attributes:
    new_params: (model_cfg, cfg, key) -> the params the method adds to the model, as a
      nested dict merged into the model's (e.g. {"layers": {"gate": ...}}); {} for none.
      It runs under jit.
    default_trainable: path patterns that train when `cfg.method.trainable` is empty.
    make_loss: (model_cfg, cfg) -> loss_fn; cfg carries remat, compute_dtype and the
      method's own section (e.g. cfg.method.trim_kv).
    optimizer: (default optimiser, cfg) -> the optimiser the method trains with, e.g. with
      its own parameter groups; unchanged by default.
  """

  new_params: Callable[[ModelConfig, TrainConfig, jax.Array], Params]
  default_trainable: tuple[str, ...]
  make_loss: Callable[[ModelConfig, TrainConfig], LossFn]
  optimizer: Callable[[optax.GradientTransformation, TrainConfig],
                      optax.GradientTransformation] = lambda default, cfg: default


def get_method(name: str) -> Method:
  """The method registered as `name`.

  Raises:
    ValueError: unknown name (the message suggests the nearest one).
  """
  if name not in METHODS:
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known methods: {sorted(METHODS)}"
    raise ValueError(f"unknown training method {name!r}; {hint}")
  return METHODS[name]


def next_token_loss(model_cfg: ModelConfig, cfg: TrainConfig) -> LossFn:
  """Mean next-token cross-entropy over every position of batch["tokens"] [B, T].

  Metrics: "accuracy", the share of positions whose most likely token is the next one.
  """
  compute_cfg = dataclasses.replace(model_cfg, dtype=cfg.compute_dtype)

  def loss_fn(trainable: Params, frozen: Params, batch: Batch, rng: jax.Array):
    del rng  # deterministic
    params = llama.cast_params(merge(trainable, frozen), compute_cfg)
    tokens = batch["tokens"]
    logits = llama.forward(params, tokens[:, :-1], compute_cfg, cfg.remat)
    return next_token_ce(logits, tokens)

  return loss_fn


def next_token_ce(logits_BxTxV: jax.Array, tokens_BxT1: jax.Array):
  """Mean cross-entropy of logits [B, T, V] against tokens[:, 1:] ([B, T+1] given), and
  {"accuracy": share of positions whose most likely token is the next one}."""
  accuracy = jnp.mean(jnp.argmax(logits_BxTxV, axis=-1) == tokens_BxT1[:, 1:])
  return target_ce(logits_BxTxV, tokens_BxT1[:, 1:]), {"accuracy": accuracy}


def memory_model_config(model_cfg: ModelConfig, cfg: TrainConfig) -> ModelConfig:
  """The from-scratch decoder of the "memory" method: model_cfg's vocabulary and positions,
  the shapes and memory layers of cfg.method.memory."""
  s = cfg.method.memory
  return dataclasses.replace(
      model_cfg, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads,
      n_kv_heads=s.n_kv_heads, head_dim=s.head_dim, d_ff=s.d_ff,
      memory=s.memory if s.memory.layers else None)


def memory_params(model_cfg: ModelConfig, cfg: TrainConfig, key: jax.Array) -> Params:
  """Every param of the from-scratch decoder (they replace the tiny model's)."""
  if cfg.model != "tiny":
    raise ValueError(f"the memory method trains a decoder from scratch; set model: tiny "
                     f"(its vocabulary is kept), not {cfg.model!r}")
  return llama.init_params(memory_model_config(model_cfg, cfg), key)


def memory_loss(model_cfg: ModelConfig, cfg: TrainConfig) -> LossFn:
  """Next-token loss of the decoder with memory layers.

  Metrics: "accuracy", and per product-key memory block i (in layer order) the key usage
  of this micro-batch: "mem{i}_used", "mem{i}_kl", "mem{i}_gini" (memjax.memory.usage).
  """
  compute_cfg = dataclasses.replace(memory_model_config(model_cfg, cfg), dtype=cfg.compute_dtype)

  def loss_fn(trainable: Params, frozen: Params, batch: Batch, rng: jax.Array):
    del rng  # deterministic
    params = llama.cast_params(merge(trainable, frozen), compute_cfg)
    tokens = batch["tokens"]
    if compute_cfg.memory is None:
      return next_token_ce(
          llama.forward(params, tokens[:, :-1], compute_cfg, cfg.remat), tokens)
    logits, lookups = decoder.forward(params, tokens[:, :-1], compute_cfg, cfg.remat)
    loss, metrics = next_token_ce(logits, tokens)
    for i, lookup in enumerate(lookups):
      mass = usage.slot_mass(lookup.slots, lookup.weights, compute_cfg.memory.n_slots)
      metrics.update({f"mem{i}_{k}": v for k, v in usage.usage_metrics(mass).items()})
    return loss, metrics

  return loss_fn


def trim_kv_gates(model_cfg: ModelConfig, cfg: TrainConfig, key: jax.Array) -> Params:
  """Fresh float32 retention gates under "layers/gate" (settings from cfg.method.trim_kv)."""
  settings = cfg.method.trim_kv
  gates = init_gate_params(model_cfg, settings.gate_hidden, key, settings.gate_bias_init)
  return add_gates({"layers": {}}, gates)


def trim_kv_loss(model_cfg: ModelConfig, cfg: TrainConfig) -> LossFn:
  """`memjax.retention.trimkv_loss` of the gates on batch["tokens"], settings from cfg.

  Metrics: "ce", "kl" and "capacity" (unweighted), plus "answer_ce" and "answer_kl" with
  an answer weight and "fact_fade" with a fact weight.
  """
  compute_cfg = dataclasses.replace(model_cfg, dtype=cfg.compute_dtype)
  settings = cfg.method.trim_kv

  def loss_fn(trainable: Params, frozen: Params, batch: Batch, rng: jax.Array):
    del rng  # deterministic
    if set(trainable) != {"layers"} or set(trainable["layers"]) != {"gate"}:
      raise ValueError(f"trim_kv trains the gates alone, not {leaf_paths(trainable)}; leave "
                       "method.trainable empty (or set it to [layers/gate])")
    return trimkv_loss(
        trainable["layers"]["gate"], llama.cast_params(frozen, compute_cfg), batch["tokens"],
        compute_cfg, memory_M=settings.memory_M,
        weights=(settings.ce_weight, settings.kl_weight, settings.capacity_weight),
        impl=settings.attention, block=settings.block, remat=cfg.remat,
        answer_BxT=batch.get("answer"), answer_weight=settings.answer_weight,
        memory_ratio=settings.memory_ratio, fact_BxT=batch.get("fact"),
        fact_weight=settings.fact_weight,
        teacher_topk=(batch["teacher_ids"], batch["teacher_logp"])
        if "teacher_ids" in batch else None)

  return loss_fn


NEXT_TOKEN = Method(
    new_params=lambda model_cfg, cfg, key: {},
    default_trainable=("layers",),
    make_loss=next_token_loss,
)

TRIM_KV = Method(
    new_params=trim_kv_gates,
    default_trainable=("layers/gate",),
    make_loss=trim_kv_loss,
)

MEMORY = Method(
    new_params=memory_params,
    default_trainable=("*",),
    make_loss=memory_loss,
    optimizer=lambda default, cfg: with_value_group(default, cfg.method.memory.values_lr),
)

METHODS: dict[str, Method] = {"next_token": NEXT_TOKEN, "trim_kv": TRIM_KV, "memory": MEMORY}

