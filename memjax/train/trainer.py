"""The training loop, generic over the loss: jitted steps, checkpoints, logs, NaN guard.

Only the trainable params are optimised: the optimiser is built on the trainable part
alone, so frozen weights have no optimiser state (and no gradients). Frozen params are
passed to every step as an argument, never copied into the state or the checkpoint.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple, Protocol

import einops
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import sharding
from memjax.models.config import ModelConfig
from memjax.sharding import memory
from memjax.sharding.placement import Placement, traced_under
from memjax.train.checkpoint import Checkpointer
from memjax.train.config import TrainConfig
from memjax.train.methods import Batch, LossFn, get_method
from memjax.train.metrics import MetricsLogger, ProgressBar
from memjax.train.partition import Params

RESERVED_METRICS = ("loss", "grad_norm", "lr")


class TrainState(NamedTuple):
  """Everything a step changes (and a checkpoint holds).

  Attributes:
    step: int32 [], optimiser steps taken.
    trainable: the trainable params (float32).
    opt_state: optax state of the trainable params only.
    rng: uint32 [2], key split once per step; the step's key goes to the loss.
  """

  step: jax.Array
  trainable: Params
  opt_state: optax.OptState
  rng: jax.Array


class StepShardings(NamedTuple):
  """How a train step's arguments and results lie on the mesh.

  Attributes:
    state: shardings of the TrainState (parameters and optimiser state FSDP-sharded).
    frozen: shardings of the frozen params.
    batch: the sharding of every batch leaf (rows split).
    replicated: the sharding of the metrics.
    placement: the mesh and rules the step is traced under (Pallas attention per device
      block, `memjax.sharding.placement`).
  """

  state: Any
  frozen: Any
  batch: Any
  replicated: Any
  placement: Placement = Placement()


class ResumableIterator(Protocol):
  """A batch iterator whose position can be saved (JSON-able) and restored."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(ValueError):
  """A step gave a NaN or infinite loss or metric; training stopped without saving it."""


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up to cfg.lr then cosine decay to cfg.end_lr, after clipping,
  as the method of cfg adapts it (e.g. "memory" gives value tables their own Adam)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=cfg.steps, end_value=cfg.end_lr)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  default = adamw if cfg.clip_norm is None else optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm), adamw)
  return get_method(cfg.method.name).optimizer(default, cfg), schedule


def init_state(trainable: Params, optimizer: optax.GradientTransformation,
               seed: int, shardings: Any = None) -> TrainState:
  """Step 0: a copy of the trainable params, fresh optimiser state, rng from `seed`.

  The copy keeps the caller's arrays alive when the train step donates the state. One
  jitted program builds it all (eager ops would compile one program each), laid out as
  `shardings` (a TrainState of shardings, see `step_shardings`) when given.
  """
  return jax.jit(functools.partial(_init, optimizer=optimizer),
                 out_shardings=shardings)(trainable, seed)


def _init(trainable: Params, seed: jax.Array, optimizer: optax.GradientTransformation):
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=optimizer.init(trainable), rng=jax.random.PRNGKey(seed))


def step_shardings(trainable: Params, frozen: Params, optimizer: optax.GradientTransformation,
                   batch_size: int, mesh: jax.sharding.Mesh,
                   rules: sharding.rules.Rules) -> StepShardings:
  """Where a train step's arguments live: params and optimiser moments by the params'
  logical axes (`memjax.sharding.logical`), counters and rng replicated, batch rows split."""
  abstract = jax.eval_shape(functools.partial(_init, optimizer=optimizer), trainable, 0)
  return StepShardings(state=sharding.state_shardings(abstract, mesh, rules),
                       frozen=sharding.param_shardings(frozen, mesh, rules),
                       batch=sharding.batch_sharding(batch_size, mesh, rules),
                       replicated=sharding.replicated(mesh),
                       placement=Placement.on(mesh, rules))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    grad_accum: int, schedule: optax.Schedule | None = None,
                    shardings: StepShardings | None = None):
  """A jitted `step(state, frozen, batch) -> (state, metrics)`; `state` is donated.

  The batch's leaves [B, ...] are split into `grad_accum` micro-batches [B / grad_accum, ...]
  that a `lax.scan` runs one after another; the step uses the mean of their gradients, so
  it equals one step on the whole batch when the loss is a mean over equal-sized rows.
  Micro-batch i holds rows i, i + grad_accum, i + 2 grad_accum, ..., so that with rows
  split over devices each device feeds every micro-batch from its own rows. Micro-batch i
  gets key i of a split of the step's key. With `shardings`, the step is compiled for
  arguments and results laid out that way (parameters and optimiser state FSDP-sharded).

  Metrics (float32 scalars): "loss" and the loss_fn's metrics, averaged over micro-batches;
  "grad_norm", the global norm of the averaged gradient before clipping; "lr", the learning
  rate of this step (when `schedule` is given).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, frozen: Params, batch: Batch):
    rng, step_rng = jax.random.split(state.rng)
    micro = jax.tree.map(
        lambda x: einops.rearrange(x, "(b k) ... -> k b ...", k=grad_accum), batch)

    def accumulate(grad_sum, xs):
      micro_batch, key = xs
      (loss, metrics), grads = grad_fn(state.trainable, frozen, micro_batch, key)
      reserved = sorted(set(metrics) & set(RESERVED_METRICS))
      if reserved:
        raise ValueError(f"the loss function's metrics use reserved names {reserved}; "
                         "rename them")
      return jax.tree.map(jnp.add, grad_sum, grads), {"loss": loss, **metrics}

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    grad_sum, metrics = jax.lax.scan(accumulate, zeros,
                                     (micro, jax.random.split(step_rng, grad_accum)))
    grads = jax.tree.map(lambda g: g / grad_accum, grad_sum)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    metrics = {name: jnp.mean(value.astype(jnp.float32)) for name, value in metrics.items()}
    metrics["grad_norm"] = optax.global_norm(grads)
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = TrainState(step=state.step + 1,
                           trainable=optax.apply_updates(state.trainable, updates),
                           opt_state=opt_state, rng=rng)
    return new_state, metrics

  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(traced_under(shardings.placement, step), donate_argnums=0,
                 in_shardings=(shardings.state, shardings.frozen, shardings.batch),
                 out_shardings=(shardings.state, shardings.replicated))


def train(cfg: TrainConfig, loss_fn: LossFn, trainable: Params, frozen: Params,
          batches: ResumableIterator, progress: bool = False,
          model_cfg: ModelConfig | None = None) -> TrainState:
  """Train until cfg.steps, resuming from the newest checkpoint in cfg.checkpoint_path.

  Saves every cfg.save_every steps and at the last step (keeping cfg.keep), logs mean
  metrics every cfg.log_every steps to `cfg.output_dir`/metrics.jsonl and TensorBoard.
  Resumes from the newest checkpoint that verifies (see `memjax.train.checkpoint`).

  Args:
    cfg: the run's settings.
    loss_fn: `loss_fn(trainable, frozen, batch, rng) -> (loss, metrics)`.
    trainable: initial trainable params (ignored when resuming); keep them in float32.
    frozen: the other params; they are an argument of every step and never change.
    batches: yields batches with leading axis cfg.batch_size; its position is checkpointed.
    progress: show a progress bar with loss, metrics and tokens/s (process 0 only).
    model_cfg: the model's shapes; when given, the per-device memory printed at the start
      includes an activation estimate.

  The run lays everything out on the mesh of cfg.mesh (joining `jax.distributed` first if
  cfg.mesh.distributed): params and optimiser state by their logical axes, batch rows split.
  Every process passes the same full params and batches; each keeps its own shards.

  Returns:
    The final state.

  Raises:
    NonFiniteLossError: a step's loss, metrics or gradient norm was NaN or infinite; the
      message names the step and the metrics, and the newest checkpoint that verifies.
    CheckpointError: the checkpoint directory cannot be written, a save failed (the run
      stops at the next step), or no checkpoint verifies.
  """
  mesh = sharding.build_mesh(cfg.mesh)
  optimizer, schedule = make_optimizer(cfg)
  shardings = step_shardings(trainable, frozen, optimizer, cfg.batch_size, mesh,
                             cfg.mesh.rules)
  frozen = sharding.put(frozen, shardings.frozen)
  state = init_state(sharding.put(trainable, shardings.state.trainable), optimizer, cfg.seed,
                     shardings.state)
  if jax.process_index() == 0:
    print(_memory_report(cfg, model_cfg, state, frozen, shardings, mesh))
  checkpointer = Checkpointer(cfg.checkpoint_path, cfg.keep)
  try:
    if checkpointer.all_steps():
      state, data_state = checkpointer.restore(state)
      batches.set_state(data_state)
    start = int(state.step)
    train_step = make_train_step(loss_fn, optimizer, cfg.grad_accum, schedule, shardings)
    batch_shardings = lambda batch: jax.tree.map(lambda _: shardings.batch, batch)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    with MetricsLogger(cfg.output_dir, cfg.log_every, start) as logger, \
        ProgressBar(start, cfg.steps, enabled=progress and jax.process_index() == 0) as bar:
      for step in range(start + 1, cfg.steps + 1):
        checkpointer.check()  # a save that failed in the background stops the run here
        tick = time.perf_counter()
        batch = next(batches)
        state, metrics = train_step(state, frozen, sharding.put(batch, batch_shardings(batch)))
        values = {name: float(value) for name, value in jax.device_get(metrics).items()}
        bad = sorted((name for name, value in values.items() if not math.isfinite(value)),
                     key=lambda name: (name != "loss", name))
        if bad:
          checkpointer.wait()
          raise NonFiniteLossError(_non_finite_message(step, bad, values, checkpointer))
        values["tokens_per_s"] = tokens_per_step / (time.perf_counter() - tick)
        logger.log(step, values, final=step == cfg.steps)
        bar.update(values)
        if step % cfg.save_every == 0 or step == cfg.steps:
          checkpointer.save(step, state, batches.get_state())
    checkpointer.wait()
  finally:
    checkpointer.close()
  return state


def _memory_report(cfg: TrainConfig, model_cfg: ModelConfig | None, state: TrainState,
                   frozen: Params, shardings: StepShardings, mesh: jax.sharding.Mesh) -> str:
  """Per-device bytes of parameters, optimiser state, activations (estimate) and cache."""
  per_device = memory.tree_bytes_per_device
  params = (per_device(state.trainable, shardings.state.trainable)
            + per_device(frozen, shardings.frozen))
  rows = {"parameters": (params, "trainable and frozen"),
          "optimizer state": (per_device(state.opt_state, shardings.state.opt_state), "")}
  if model_cfg is not None:
    rows["activations"] = (memory.activation_bytes(
        model_cfg, cfg.micro_batch_size, cfg.seq_len, cfg.compute_dtype, cfg.remat, mesh,
        cfg.mesh.rules), f"estimate, micro-batch {cfg.micro_batch_size} x {cfg.seq_len}")
  rows["cache"] = (0, "training keeps no KV cache")
  return memory.format_report(mesh, rows)


def _non_finite_message(step: int, bad: list[str], values: dict[str, float],
                        checkpointer: Checkpointer) -> str:
  shown = ", ".join(f"{name}={values[name]}" for name in bad)
  last = checkpointer.newest_verified_step()
  kept = (f"the last good checkpoint is step {last} in {checkpointer.directory}"
          if last is not None else "no checkpoint that verifies was saved before it")
  return (f"training stopped at step {step}: non-finite {', '.join(bad)} ({shown}); {kept}. "
          "Resume from it with a lower lr, stronger clip_norm or float32 compute.")
