"""Sharding: mesh and rules from config, sharded training and budgeted generation equal to
one device on 8 simulated CPU devices, Pallas attention shard_mapped in the sharded model
steps, two processes agreeing with one, clear mesh errors.

The multi-device runs happen in `tests/sharding_worker.py` subprocesses, because the number
of CPU devices is fixed when JAX starts (this process has one).
"""

import ast
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from memjax import sharding
from memjax.config import ConfigError, load_config
from memjax.sharding import MeshConfig
from memjax.train import TrainConfig, load_train_config, train

WORKER = pathlib.Path(__file__).with_name("sharding_worker.py")
MESHES = ["(8, 1, 1)", "(2, 2, 2)", "(1, 4, 2)"]
PALLAS_MESHES = MESHES[1:]


def _run_worker(*args: str, devices: int = 8) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 8-device workers, run at once: {"meshes": results per mesh, "stdout": the mesh
  worker's output, "kernels": results per mesh, "dispatch": results per Pallas mesh}.

  meshes: loss, gradients, 3 train steps and budgeted generation on meshes (data, fsdp,
  tensor) = (8,1,1), (2,2,2), (1,4,2), each against one device.
  dispatch: which traced sharded model steps hold a shard_map, per attention backend.
  """
  tmp = tmp_path_factory.mktemp("sharding")
  meshes = _run_worker("meshes", str(tmp / "meshes.json"))
  kernels = _run_worker("kernels", str(tmp / "kernels.json"))
  dispatch = _run_worker("dispatch", str(tmp / "dispatch.json"))
  stdout = _finish(meshes)
  _finish(kernels)
  _finish(dispatch)
  read = lambda name: json.loads((tmp / name).read_text())
  return {"meshes": read("meshes.json"), "stdout": stdout, "kernels": read("kernels.json"),
          "dispatch": read("dispatch.json")}


@pytest.mark.distributed
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_loss_gradients_and_steps_equal_one_device(runs, mesh):
  result = runs["meshes"][mesh]
  assert result["loss_rel_err"] < 1e-5
  assert result["grad_rel_err"] < 1e-5
  assert result["step_losses_rel_err"] < 1e-5
  # Adam divides by sqrt(v): ~1e-7 gradient noise on near-zero gradients moves a few
  # weights by up to lr, so the parameters after 3 steps agree less tightly than the loss.
  assert result["params_rel_err_after_3_steps"] < 1e-3


@pytest.mark.distributed
@pytest.mark.parametrize("mesh", MESHES)
def test_parameters_and_adam_moments_really_are_sharded(runs, mesh):
  data, fsdp, tensor = ast.literal_eval(mesh)
  result = runs["meshes"][mesh]
  for tree in ("params", "adam_mu"):
    shapes = result[tree]
    # wq [L, D, Hq*Dh]: D over fsdp (FSDP), Hq*Dh over tensor; embed [V, D]: V over tensor.
    (L, d, hd), shard = shapes["layers/wq"]
    assert shard == [L, d // fsdp, hd // tensor]
    (v, d), shard = shapes["embed"]
    assert shard == [v // tensor, d // fsdp]
    (L, f, d), shard = shapes["layers/w_down"]
    assert shard == [L, f // tensor, d // fsdp]
    assert shapes["layers/attn_norm"][1] == shapes["layers/attn_norm"][0]  # replicated


@pytest.mark.distributed
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_budgeted_generation_equals_one_device(runs, mesh):
  result = runs["meshes"][mesh]
  assert result["cache_k_spec"] == str(P(("data", "fsdp"), "tensor", None, None))
  assert result["generate_tokens"] == result["want_tokens"]


@pytest.mark.distributed
@pytest.mark.parametrize("mesh", MESHES)
def test_evaluation_perplexity_on_the_mesh_equals_one_device(runs, mesh):
  # budgeted_logprobs through the eval harness's mesh (EvalConfig.mesh on 8 devices).
  result = runs["meshes"][mesh]
  assert result["perplexity_cache_k_spec"] == str(P(("data", "fsdp"), "tensor", None, None))
  assert result["perplexity_logprobs_rel_err"] < 1e-5


@pytest.mark.distributed
def test_a_run_prints_per_device_memory(runs):
  stdout = runs["stdout"]
  for mesh in ("data=8 fsdp=1 tensor=1", "data=2 fsdp=2 tensor=2", "data=1 fsdp=4 tensor=2"):
    assert f"per-device memory on mesh {mesh} (8 devices" in stdout
  for row in ("parameters", "optimizer state", "activations", "cache", "total"):
    assert f"  {row} " in stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_agree_with_one_and_their_checkpoint_restores_in_one(tmp_path):
  # Two processes with 2 CPU devices each (mesh fsdp=2 x tensor=2) train 3 steps and save a
  # checkpoint; then one process trains alone and restores that checkpoint.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  pair = [_run_worker("process", str(i), port, str(tmp_path), devices=2) for i in range(2)]
  for proc in pair:
    _finish(proc)
  _finish(_run_worker("single", str(tmp_path), devices=1))
  result = json.loads((tmp_path / "single.json").read_text())
  assert result["restored_step"] == 3
  assert result["two_vs_one_rel_err"] < 1e-3  # Adam after 3 steps, as above
  assert result["restored_vs_two_max_abs"] == 0.0


@pytest.mark.distributed
@pytest.mark.parametrize("mesh", MESHES)
def test_shard_mapped_attention_kernels_equal_the_plain_ones(runs, mesh):
  assert runs["kernels"][mesh]["flash"] < 1e-6
  assert runs["kernels"][mesh]["decode"] < 1e-6


def _shard_mapped_only_on_pallas(holds_shard_map: dict) -> None:
  # Forward, TRIM-KV forward, budgeted chunk step and training losses: Pallas kernels run per device block;
  # the XLA path stays a plain GSPMD-partitioned program.
  assert holds_shard_map == {f"{step}_{backend}": backend == "tpu"
                             for step in ("forward", "gated", "generate", "next_token_loss",
                                          "trim_kv_loss", "memory_loss")
                             for backend in ("tpu", "xla")}


@pytest.mark.distributed
@pytest.mark.parametrize("mesh", PALLAS_MESHES)
def test_sharded_model_steps_shard_map_pallas_attention_only(runs, mesh):
  _shard_mapped_only_on_pallas(runs["dispatch"][mesh]["holds_shard_map"])


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_model_on_interpreted_tpu_kernels_equals_one_device_on_xla(tmp_path):
  _finish(_run_worker("pallas", str(tmp_path / "pallas.json")))
  results = json.loads((tmp_path / "pallas.json").read_text())
  for mesh in PALLAS_MESHES:
    result = results[mesh]
    _shard_mapped_only_on_pallas(result["holds_shard_map"])
    assert result["loss_rel_err"] < 1e-3  # Pallas interpret mode in float32
    assert result["grad_rel_err"] < 1e-3
    assert result["generate_tokens"] == result["want_tokens"]


def _mesh(axes: dict, **overrides):
  return load_config(MeshConfig, None, [f"axes={json.dumps(axes)}"]
                     + [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.distributed
def test_mesh_sizes_fill_in_and_must_fit_the_devices():
  assert sharding.mesh_shape(_mesh({"data": 2, "fsdp": -1, "tensor": 2}), 8) == {
      "data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match=r"does not fit the 8 devices.*multiply to 3;"):
    sharding.mesh_shape(_mesh({"data": 3, "fsdp": 1, "tensor": 1}), 8)
  with pytest.raises(ValueError, match=r"fixed sizes multiply to 3, which does not divide 8"):
    sharding.mesh_shape(_mesh({"data": -1, "fsdp": 3, "tensor": 1}), 8)


@pytest.mark.distributed
def test_a_bad_mesh_fails_before_any_compilation(tmp_path):
  with pytest.raises(ConfigError, match=r"mesh axis 'tensr' is used by no rule.*"
                                        r"did you mean 'tensor'"):
    load_train_config(None, ["mesh.axes={data: -1, fsdp: 1, tensr: 1}"])
  with pytest.raises(ConfigError, match=r"mesh.rules.heads uses mesh axis 'model'"):
    load_train_config(None, ["mesh.rules={heads: [model], batch: [data, fsdp], "
                             "embed: [tensor]}"])
  with pytest.raises(ConfigError, match=r"unknown logical axis 'head'.*did you mean 'heads'"):
    load_train_config(None, ["mesh.rules={head: [tensor]}"])
  cfg = load_train_config(None, ["mesh.axes={data: 2, fsdp: 1, tensor: 1}", "steps=2",
                                 "warmup_steps=0", f"output_dir={tmp_path}"])
  compiled = []
  listener = lambda event, *_, **__: compiled.append(event) if "compil" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises(ValueError, match=r"mesh.axes=.* does not fit the 1 devices"):
      train(cfg, lambda *a: None, {"w": np.zeros(2)}, {}, iter(()))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiled


def test_sharding_rules_split_dims_they_divide_and_replicate_the_rest():
  mesh = jax.sharding.AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
  rules = sharding.DEFAULT_RULES
  # KV heads [.., Hkv=2, ..] split over tensor=2; batch 6 takes data (2) but not fsdp (4 ∤ 6).
  assert sharding.mesh_spec(P("layers", "batch", "kv_heads"), (2, 6, 2), mesh, rules) == P(
      None, "data", "tensor")
  # 3 heads do not divide over tensor=2: replicated; a mesh axis is used once per array.
  assert sharding.mesh_spec(P("heads", "vocab"), (3, 8), mesh, rules) == P(None, "tensor")
  assert sharding.mesh_spec(P("embed"), (4, 5), mesh, rules) == P("fsdp", None)
  assert TrainConfig().mesh == MeshConfig()


@pytest.mark.parametrize("name", ["mesh_colab_tpu", "mesh_tpu_pod", "mesh_gpu_node"])
def test_hardware_configs_load(name):
  path = pathlib.Path(__file__).parents[1] / "configs" / f"{name}.yaml"
  cfg = load_train_config(str(path))
  assert cfg.mesh.axes and cfg.batch_size % cfg.grad_accum == 0


def test_a_placement_is_seen_while_tracing_and_each_jit_keeps_its_own():
  """The kernel wrappers read the placement their caller is traced under: a function jitted
  with `traced_under` sees its own placement whenever it is traced, inside any other."""
  from memjax.sharding.placement import Placement, current, placed, traced_under
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  on_mesh = Placement.on(mesh, {"batch": ["data"]})
  assert current() == Placement() and Placement.of(MeshConfig()) == Placement()
  assert on_mesh.logical_rules == {"batch": ["data"]}
  assert Placement.on(mesh).logical_rules == sharding.DEFAULT_RULES
  seen = []
  fn = jax.jit(traced_under(on_mesh, lambda x: seen.append(current()) or x + 1))
  other = jax.jit(traced_under(Placement(), lambda x: seen.append(current()) or x - 1))
  with placed(on_mesh):
    assert current() is on_mesh
    other(np.float32(1.0))
  fn(np.float32(1.0))
  assert seen == [Placement(), on_mesh] and current() == Placement()
