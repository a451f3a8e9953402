"""A whole training run from a TrainConfig: model, method, data, then the trainer."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memjax.config import dump_config
from memjax.data.corpus import TokenizerLike, load_corpus
from memjax.models import llama
from memjax.models.config import ModelConfig, tiny_config
from memjax.train.config import TrainConfig
from memjax.train.data import ByteTokenizer, TrainData
from memjax.sharding import initialize_distributed
from memjax.train.methods import LossFn, get_method
from memjax.train.partition import Params, merge, partition
from memjax.train.trainer import TrainState, train

TINY_MODEL = "tiny"
# One compiled program (cached on disk by the CLI) instead of one per eager op.
_init_params = jax.jit(llama.init_params, static_argnums=0)


def tiny_model_config(cfg: TrainConfig) -> ModelConfig:
  """Shapes of the "tiny" test model: 2 layers over UTF-8 bytes, storage dtype cfg.dtype."""
  return tiny_config(vocab_size=ByteTokenizer.vocab_size, max_positions=max(cfg.seq_len, 256),
                     dtype=cfg.dtype, attention_impl=cfg.attention_impl)


def build_model(cfg: TrainConfig, key: jax.Array) -> tuple[ModelConfig, Params, TokenizerLike]:
  """(model config, params, tokenizer) named by cfg.model, params stored in cfg.dtype.

  "tiny" is a random 2-layer model over UTF-8 bytes drawn with `key`; any other name or
  path goes to `memjax.io.load_checkpoint`.

  Raises:
    ValueError: cfg.seq_len exceeds the model's positions, or the model has no tokenizer.
  """
  if cfg.model == TINY_MODEL:
    model_cfg = tiny_model_config(cfg)
    params = _init_params(model_cfg, key)
    tokenizer = ByteTokenizer()
  else:
    from memjax.io import load_checkpoint
    model_cfg, params, tokenizer = load_checkpoint(cfg.model, cfg.dtype)
    model_cfg = dataclasses.replace(model_cfg, attention_impl=cfg.attention_impl)
    if tokenizer is None:
      raise ValueError(f"model {cfg.model!r} has no tokenizer.json; training needs one")
    params = llama.cast_params(params, model_cfg)
  if cfg.seq_len > model_cfg.max_positions:
    raise ValueError(f"seq_len={cfg.seq_len} exceeds the {model_cfg.max_positions} positions "
                     f"of model {cfg.model!r}; lower seq_len")
  return model_cfg, params, tokenizer


def _keys(cfg: TrainConfig) -> tuple[jax.Array, jax.Array]:
  """(model key, method key) of a run, from cfg.seed."""
  return tuple(jax.random.split(jax.random.key(cfg.seed, impl="rbg")))


def run_model(cfg: TrainConfig) -> tuple[ModelConfig, Params, TokenizerLike]:
  """The model a run trains on (for "tiny", the same random weights as `setup_run`)."""
  return build_model(cfg, _keys(cfg)[0])


class RunSetup(NamedTuple):
  """What a run trains: the loss, the params split in two, the data and the model's shapes."""
  loss_fn: LossFn
  trainable: Params
  frozen: Params
  data: TrainData
  model_cfg: ModelConfig


def setup(cfg: TrainConfig) -> tuple[LossFn, Params, Params, TrainData]:
  """(loss_fn, trainable, frozen, data) of a run, before any training; see `setup_run`."""
  return tuple(setup_run(cfg))[:4]


def setup_run(cfg: TrainConfig) -> RunSetup:
  """Everything a run trains, before any training.

  The method's new params (if any) join the model's; the paths selected by
  cfg.method.trainable (or the method's default) train, in float32. Random inits draw
  from cfg.seed with the "rbg" generator, which compiles several times faster than the
  default one on CPU.
  """
  method = get_method(cfg.method.name)
  model_key, method_key = _keys(cfg)
  model_cfg, params, tokenizer = build_model(cfg, model_key)
  added = jax.jit(lambda key: method.new_params(model_cfg, cfg, key))(method_key)
  trainable, frozen = partition(merge(added, params),
                                cfg.method.trainable or method.default_trainable)
  trainable = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), trainable)
  data = TrainData(tokenizer, load_corpus(cfg.corpus_splits, cfg.corpus or None), cfg.seq_len,
                   cfg.batch_size, cfg.seed, cfg.synthetic_fraction, cfg.recall_fraction,
                   cfg.fact_templates)
  return RunSetup(method.make_loss(model_cfg, cfg), trainable, frozen, data, model_cfg)


def run(cfg: TrainConfig, progress: bool = False) -> TrainState:
  """Train as configured (resuming from cfg's checkpoints if any); the final state.

  Also writes the config to `cfg.output_dir`/config.yaml. With cfg.mesh.distributed, joins
  `jax.distributed` before anything touches a device.
  """
  initialize_distributed(cfg.mesh)
  parts = setup_run(cfg)
  dump_config(cfg, str(pathlib.Path(cfg.output_dir) / "config.yaml"))
  return train(cfg, parts.loss_fn, parts.trainable, parts.frozen, batches(cfg, parts),
               progress=progress, model_cfg=parts.model_cfg)


def batches(cfg: TrainConfig, parts: RunSetup):
  """The run's batch iterator: with `method.trim_kv.teacher_topk`, batches also carry the
  teacher's cached top-k outputs (memjax.train.teacher)."""
  settings = cfg.method.trim_kv
  if cfg.method.name != "trim_kv" or not settings.teacher_topk:
    return parts.data.iterator()
  from memjax.train.teacher import cached_teacher_batches
  directory = (settings.teacher_cache_dir
               or pathlib.Path(cfg.output_dir) / f"teacher_top{settings.teacher_topk}")
  teacher_cfg = dataclasses.replace(parts.model_cfg, dtype=cfg.compute_dtype)
  return cached_teacher_batches(parts.data.iterator(), llama.cast_params(parts.frozen, teacher_cfg),
                                teacher_cfg, settings.teacher_topk, directory)

