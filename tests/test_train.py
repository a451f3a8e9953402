"""The trainer: exact resume after SIGKILL, NaN guard, gradient accumulation, frozen params,
configs from YAML and gin, JSONL and TensorBoard logs."""

import dataclasses
import functools
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import cli
from memjax.config import ConfigError
from memjax.models import llama
from memjax.models.config import tiny_config
from memjax.train import (MethodConfig, NonFiniteLossError, TrainConfig, TrimKVConfig,
                          build_model, init_state, load_state, load_train_config, load_trainable,
                          make_optimizer, make_train_step, merge, partition, run, setup, train)
from memjax.train.methods import next_token_loss
from memjax.train.metrics import read_jsonl
from memjax.train.partition import leaf_paths

KILL_STEPS, KILL_SAVE_EVERY = 20, 4
KILL_CONFIG = f"""
model: tiny
seed: 3
steps: {KILL_STEPS}
seq_len: 320
batch_size: 2
grad_accum: 2
lr: 3.0e-3
warmup_steps: 4
synthetic_fraction: 0.5
save_every: {KILL_SAVE_EVERY}
log_every: {KILL_SAVE_EVERY}
keep: 2
method: {{name: next_token, trainable: ["layers/w*", final_norm]}}
"""


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def _saved_steps(directory: pathlib.Path) -> list[int]:
  """Steps of complete checkpoints (orbax renames a step's directory to its number when done)."""
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())


def test_sigkilled_run_resumes_to_the_same_parameters(tmp_path):
  config = tmp_path / "train.yaml"
  config.write_text(KILL_CONFIG)
  # All three runs share an XLA cache: only the first one compiles.
  env = dict(os.environ, MEMJAX_COMPILATION_CACHE=str(tmp_path / "xla"), JAX_PLATFORMS="cpu")
  command = lambda name: [sys.executable, "-m", "memjax.cli", "train", str(config),
                          f"output_dir={tmp_path / name}"]
  whole = subprocess.run(command("whole"), env=env, capture_output=True, text=True, timeout=600)
  assert whole.returncode == 0, whole.stderr[-3000:]

  # Given a run SIGKILLed as soon as its first checkpoint is complete,
  checkpoints = tmp_path / "killed" / "checkpoints"
  victim = subprocess.Popen(command("killed"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
  deadline = time.monotonic() + 300
  while not _saved_steps(checkpoints):
    assert victim.poll() is None, victim.communicate()[1].decode()[-3000:]
    assert time.monotonic() < deadline, "no checkpoint within 300 s"
    time.sleep(0.005)
  victim.send_signal(signal.SIGKILL)
  victim.communicate()
  assert victim.returncode == -signal.SIGKILL
  assert max(_saved_steps(checkpoints)) < KILL_STEPS

  # when the same command runs again,
  resumed = subprocess.run(command("killed"), env=env, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed at step" in resumed.stderr

  # then it ends exactly where the uninterrupted run ends: params, optimiser state, rng, step.
  final, step = load_state(checkpoints)
  expected, expected_step = load_state(tmp_path / "whole" / "checkpoints")
  assert step == expected_step == KILL_STEPS == int(final["step"])
  assert _leaves_equal(final["trainable"], expected["trainable"])
  assert _leaves_equal(final, expected)
  assert _saved_steps(checkpoints) == [KILL_STEPS - KILL_SAVE_EVERY, KILL_STEPS]  # keep=2
  # The logs hold each window once, with the same losses.
  killed_rows = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
  whole_rows = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
  assert [r["step"] for r in killed_rows] == list(range(KILL_SAVE_EVERY, KILL_STEPS + 1,
                                                        KILL_SAVE_EVERY))
  assert [r["loss"] for r in killed_rows] == [r["loss"] for r in whole_rows]


class ToyBatches:
  """Batches {"x": [4, 2], "poison": [4]}; "poison" is 1 in batch `nan_at - 1` (step nan_at)."""

  def __init__(self, nan_at: int):
    self.position, self.nan_at = 0, nan_at

  def __next__(self):
    self.position += 1
    return {"x": np.full((4, 2), self.position % 3, np.float32),
            "poison": np.full((4,), self.position == self.nan_at, np.float32)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def toy_loss(trainable, frozen, batch, rng):
  """Squared error of w * scale against x; NaN for poisoned batches."""
  error = trainable["w"] * frozen["scale"] - batch["x"]
  poison = jnp.where(jnp.any(batch["poison"] > 0), jnp.nan, 1.0)
  return jnp.mean(error ** 2) * poison, {"w_mean": jnp.mean(trainable["w"])}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = TrainConfig(steps=10, warmup_steps=0, lr=0.1, save_every=2, log_every=1,
                    output_dir=str(tmp_path), batch_size=4)
  trainable, frozen = {"w": jnp.zeros(2)}, {"scale": jnp.ones(2)}
  with pytest.raises(NonFiniteLossError,
                     match=r"stopped at step 5: non-finite loss, grad_norm \(loss=nan.*"
                           r"last good checkpoint is step 4 in "):
    train(cfg, toy_loss, trainable, frozen, ToyBatches(nan_at=5))
  assert _saved_steps(cfg.checkpoint_path) == [2, 4]
  saved, step = load_trainable(cfg.checkpoint_path)
  assert step == 4 and np.all(np.isfinite(saved["w"])) and np.any(saved["w"] != 0)
  # The metrics of the steps before it were logged; the NaN step was not.
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
  # Resuming with clean data finishes the run.
  batches = ToyBatches(nan_at=0)
  state = train(cfg, toy_loss, trainable, frozen, batches)
  assert int(state.step) == 10 and batches.position == 10  # restored to 4, then 6 more
  assert _saved_steps(cfg.checkpoint_path) == [6, 8, 10]  # keep=3


def test_resuming_with_other_trainable_params_is_an_error(tmp_path):
  cfg = TrainConfig(steps=2, warmup_steps=0, save_every=2, output_dir=str(tmp_path),
                    batch_size=4)
  frozen = {"scale": jnp.ones(2)}
  train(cfg, toy_loss, {"w": jnp.zeros(2)}, frozen, ToyBatches(nan_at=0))
  with pytest.raises(ValueError, match=r"checkpoint of step 2 .* does not fit this run .*"
                                       r"\.trainable\['w'\] is saved with shape \[2\], "
                                       r"expected \[3\]"):
    train(cfg, toy_loss, {"w": jnp.zeros(3)}, frozen, ToyBatches(nan_at=0))


def bigram_loss(trainable, frozen, batch, rng):
  """Mean next-token cross-entropy of a bigram model; "hit" is its top-1 accuracy."""
  tokens = batch["tokens"]
  logits = trainable["embed"][tokens[:, :-1]] @ frozen["out"]
  logp = jax.nn.log_softmax(logits, axis=-1)
  target_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)
  return -jnp.mean(target_logp), {"hit": jnp.mean(jnp.argmax(logits, -1) == tokens[:, 1:])}


def test_accumulating_micro_batches_equals_one_big_batch():
  rng = np.random.default_rng(0)
  trainable = {"embed": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)}
  frozen = {"out": jnp.asarray(rng.normal(size=(16, 64)), jnp.float32)}
  batch = {"tokens": rng.integers(0, 64, (8, 24), dtype=np.int32)}
  sgd = optax.sgd(1.0)  # new params = params - gradient, so the gradient is visible
  steps = {}
  for k in (1, 4):
    state, metrics = make_train_step(bigram_loss, sgd, k)(init_state(trainable, sgd, 0), frozen,
                                                          batch)
    steps[k] = trainable["embed"] - state.trainable["embed"], jax.device_get(metrics)
  (grad, metrics), (grad_4, metrics_4) = steps[1], steps[4]
  assert np.linalg.norm(grad) > 0
  assert np.linalg.norm(grad_4 - grad) <= 1e-6 * np.linalg.norm(grad)
  for name in ("loss", "hit", "grad_norm"):
    assert metrics_4[name] == pytest.approx(metrics[name], rel=1e-6)


@functools.lru_cache(maxsize=1)
def _tiny_model():
  model_cfg = tiny_config(vocab_size=64)
  init = jax.jit(llama.init_params, static_argnums=(0, 2))  # one compile, not one per op
  params = init(model_cfg, jax.random.key(0, impl="rbg"), 0.3)
  tokens = np.random.default_rng(1).integers(0, 64, (8, 24), dtype=np.int32)
  return model_cfg, params, {"tokens": tokens}


def test_remat_recomputes_each_layer_in_the_backward_pass():
  # Numerics are unchanged by construction; what can break is the flag not reaching the loss.
  # (The bf16 run below trains with remat on.)
  model_cfg, params, batch = _tiny_model()
  trainable, frozen = partition(params, ["layers"])
  for remat in (False, True):
    loss_fn = next_token_loss(model_cfg, TrainConfig(remat=remat))
    jaxpr = jax.make_jaxpr(jax.grad(lambda t: loss_fn(t, frozen, batch, None)[0]))(trainable)
    assert ("remat" in str(jaxpr)) == remat


def test_remat_forward_gives_the_same_logits_and_gradients():
  model_cfg, params, batch = _tiny_model()
  tokens = batch["tokens"]

  def loss(p, remat):
    return jnp.mean(llama.forward(p, tokens, model_cfg, remat) ** 2)

  plain, remat = (jax.jit(jax.value_and_grad(lambda p, r=r: loss(p, r)))(params)
                  for r in (False, True))
  np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
  """A 4-step run of the tiny model training wq and the final norm, stored and run in bf16,
  with remat."""
  out = tmp_path_factory.mktemp("bf16_run")
  cfg = TrainConfig(steps=4, warmup_steps=1, lr=1e-2, seq_len=64, batch_size=4,
                    synthetic_fraction=0.0, save_every=2, log_every=2, output_dir=str(out),
                    dtype="bfloat16", compute_dtype="bfloat16", remat=True)
  cfg = dataclasses.replace(cfg, method=dataclasses.replace(
      cfg.method, trainable=["layers/wq", "final_norm"]))
  _, initial, frozen, _ = setup(cfg)
  return cfg, initial, frozen, run(cfg)


def test_only_the_trainable_part_trains_or_has_optimiser_state(bf16_run):
  cfg, initial, frozen, state = bf16_run
  assert sorted(leaf_paths(state.trainable)) == ["final_norm", "layers/wq"]
  assert "wq" not in frozen["layers"] and "final_norm" not in frozen
  assert sorted(leaf_paths(merge(state.trainable, frozen))) == sorted(
      leaf_paths(merge(initial, frozen)))
  for path, new in zip(leaf_paths(state.trainable), jax.tree.leaves(state.trainable)):
    old = jax.tree.leaves(initial)[leaf_paths(initial).index(path)]
    assert new.dtype == jnp.float32 and not np.array_equal(new, old), path
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(frozen))
  # Adam's moments mirror the trainable tree and nothing else.
  adam = next(s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
              if hasattr(s, "mu"))
  assert jax.tree.structure(adam.mu) == jax.tree.structure(state.trainable)
  n_trainable = sum(a.size for a in jax.tree.leaves(state.trainable))
  opt_arrays = [a for a in jax.tree.leaves(state.opt_state) if np.ndim(a)]  # not step counts
  assert sum(a.size for a in opt_arrays) == 2 * n_trainable  # Adam's mu and nu


def test_trim_kv_adds_gates_and_trains_only_them():
  cfg = TrainConfig(seq_len=32, batch_size=2, synthetic_fraction=0.0, method=MethodConfig(
      name="trim_kv", trim_kv=TrimKVConfig(memory_M=8, gate_hidden=16, block=16)))
  loss_fn, trainable, frozen, data = setup(cfg)
  gates = ["layers/gate/b1", "layers/gate/bias", "layers/gate/w1", "layers/gate/w2"]
  assert sorted(leaf_paths(trainable)) == gates
  model_params = jax.eval_shape(lambda key: build_model(cfg, key)[1], jax.random.key(0))
  assert leaf_paths(frozen) == leaf_paths(model_params)  # the whole model, no gates
  optimizer, schedule = make_optimizer(cfg)
  state = init_state(trainable, optimizer, 0)
  # Tracing the whole step (no compile) checks the loss and the optimiser state's shapes.
  state, metrics = jax.eval_shape(make_train_step(loss_fn, optimizer, 1, schedule), state,
                                  frozen, data.batch(0))
  assert set(metrics) == {"loss", "ce", "kl", "capacity", "grad_norm", "lr"}
  assert sum(np.prod(a.shape) for a in jax.tree.leaves(state.opt_state) if a.shape) == (
      2 * sum(np.prod(a.shape) for a in jax.tree.leaves(trainable)))
  wrong = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method,
                                                              trainable=["layers/wq"]))
  loss_fn, trainable, frozen, data = setup(wrong)
  with pytest.raises(ValueError, match=r"trim_kv trains the gates alone, not \['layers/wq'\]"):
    jax.eval_shape(loss_fn, trainable, frozen, data.batch(0), None)


def _tensorboard_scalars(directory: pathlib.Path) -> dict[str, dict[int, float]]:
  """tag -> {step: value} from the TFRecord-framed Event protos of every event file."""
  from tensorboardX.proto import event_pb2

  scalars: dict[str, dict[int, float]] = {}
  for path in directory.rglob("events.out.tfevents.*"):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4  # length, its crc, the record, its crc
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_metrics_are_written_as_jsonl_and_tensorboard_events(bf16_run):
  cfg, *_ = bf16_run
  rows = read_jsonl(pathlib.Path(cfg.output_dir) / "metrics.jsonl")
  assert [r["step"] for r in rows] == [2, 4]
  assert set(rows[0]) == {"step", "loss", "accuracy", "grad_norm", "lr", "tokens_per_s"}
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
  scalars = _tensorboard_scalars(pathlib.Path(cfg.output_dir) / "tensorboard")
  for name in ("loss", "accuracy", "grad_norm", "lr"):
    logged = scalars[f"train/{name}"]
    assert sorted(logged) == [2, 4]
    for row in rows:
      assert logged[row["step"]] == pytest.approx(row[name], rel=1e-6)
  assert (pathlib.Path(cfg.output_dir) / "config.yaml").is_file()


def test_logging_does_not_import_torch(tmp_path):
  # tensorboardX imports torch when it is installed (as in the test extras); memjax must not.
  code = ("import sys; from memjax.train.metrics import MetricsLogger; "
          f"MetricsLogger({str(tmp_path)!r}, 1).close(); "
          "assert 'torch' not in sys.modules; import tensorboardX")
  subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ,
                                                                    JAX_PLATFORMS="cpu"))


GIN = """
STEPS = 500
TrainConfig.steps = %STEPS
TrainConfig.lr = 2e-4
TrainConfig.clip_norm = None
TrainConfig.corpus = ('a.txt', 'b.txt')
TrainConfig.compute_dtype = 'bfloat16'
MethodConfig.name = 'next_token'
MethodConfig.trainable = ['layers/gate']
TrimKVConfig.memory_M = 128
"""
YAML = """
steps: 500
lr: 2e-4
clip_norm: null
corpus: [a.txt, b.txt]
compute_dtype: bfloat16
method:
  name: next_token
  trainable: [layers/gate]
  trim_kv: {memory_M: 128}
"""


def test_yaml_and_gin_give_the_same_config(tmp_path):
  (tmp_path / "a.gin").write_text(GIN)
  (tmp_path / "a.yaml").write_text(YAML)
  from_gin = load_train_config(str(tmp_path / "a.gin"), ["seed=7"])
  from_yaml = load_train_config(str(tmp_path / "a.yaml"), ["seed=7"])
  assert from_gin == from_yaml != TrainConfig()
  assert from_gin.lr == 2e-4 and from_gin.method.trim_kv.memory_M == 128
  assert from_gin.corpus == ["a.txt", "b.txt"] and from_gin.clip_norm is None


@pytest.mark.parametrize("suffix, text, message", [
    (".yaml", "lrr: 1e-3\n", r"unknown config key 'lrr' .*did you mean 'lr'\?"),
    (".yaml", "method: {trainabel: [x]}\n",
     r"unknown config key 'method.trainabel' .*did you mean 'method.trainable'\?"),
    (".yaml", "steps: many\n", r"config key 'steps' .*expects int, got 'many'"),
    (".gin", "TrainConfig.lrr = 1e-3\n",
     r"\(gin binding TrainConfig.lrr\): unknown config key 'lrr' .*did you mean 'lr'\?"),
    (".gin", "TrimKVConfig.memory_m = 4\n", r"did you mean 'method.trim_kv.memory_M'\?"),
    (".gin", "TrainConfg.lr = 1e-3\n",
     r"(?s)No configurable matching 'TrainConfg'.*did you mean 'TrainConfig'\?"),
    (".gin", "TrainConfig.steps = 'many'\n",
     r"\(gin binding TrainConfig.steps\): config key 'steps' .*expects int"),
    (".gin", "run/TrainConfig.lr = 1.0\n", r"scoped bindings \['run/TrainConfig'\]"),
    (".gin", "TrainConfig.lr = %UNDEFINED\n", r"UNDEFINED"),
    (".gin", "TrainConfig.lr = @optax.adam\n", r"(?s)'@optax.adam'.*bind literal values"),
    (".toml", "", r"must end in .yaml, .yml or .gin"),
])
def test_bad_configs_are_errors_naming_the_key(tmp_path, suffix, text, message):
  path = tmp_path / f"bad{suffix}"
  path.write_text(text)
  with pytest.raises(ConfigError, match=message):
    load_train_config(str(path))


def test_cli_reports_config_errors(tmp_path, capsys):
  path = tmp_path / "train.yaml"
  path.write_text(f"steps: 10\nwarmup_steps: 2\noutput_dir: {tmp_path}\n")
  assert cli.main(["train", str(path), "batch_size=6", "grad_accum=4"]) == 2
  assert "batch_size=6 is not a multiple of grad_accum=4" in capsys.readouterr().err
  assert cli.main(["train", str(path), "method.name=next_tokn"]) == 2
  assert "did you mean 'next_token'?" in capsys.readouterr().err
