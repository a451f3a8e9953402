"""Multi-device and multi-process runs for tests/test_sharding.py, in their own processes
(the device count is fixed when JAX starts). Results go to a JSON file.

  python tests/sharding_worker.py meshes OUT.json           (8 CPU devices via XLA_FLAGS)
  python tests/sharding_worker.py kernels OUT.json          (8 CPU devices)
  python tests/sharding_worker.py dispatch OUT.json         (8 CPU devices)
  python tests/sharding_worker.py pallas OUT.json           (8 CPU devices)
  python tests/sharding_worker.py process ID PORT DIR       (one of two processes)
  python tests/sharding_worker.py single DIR                (the one-process reference)
"""

import dataclasses
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.experimental.pallas import tpu as pltpu

from memjax import sharding
from memjax.generation.generate import generate_ids
from memjax.models import llama
from memjax.memory.train_settings import MemoryMethodSettings
from memjax.models.config import MemoryConfig, tiny_config
from memjax.retention import gate
from memjax.retention.model import forward_gated
from memjax.sharding.inference import sharded_chunk_step
from memjax.sharding.placement import Placement, placed, traced_under
from memjax.sharding.logical import dict_path
from memjax.cache import kv_cache
from memjax.eval.perplexity import budgeted_logprobs
from memjax.cache.policies import get_policy
from memjax.train import (Checkpointer, TrainConfig, build_model, init_state, make_optimizer,
                          make_train_step, partition, run, train)
from memjax.train.config import MethodConfig, TrimKVConfig
from memjax.train.methods import next_token_ce, next_token_loss
from memjax.train.metrics import read_jsonl
from memjax.train.run import setup_run
from memjax.train.trainer import step_shardings

MESHES = ((8, 1, 1), (2, 2, 2), (1, 4, 2))
BASE = TrainConfig(model="tiny", seq_len=32, batch_size=8, grad_accum=2, steps=3,
                   warmup_steps=0, lr=1e-2, save_every=3, log_every=1, synthetic_fraction=0.0)


class RandomBatches:
  """Batch i: {"tokens": int32 [8, 32]} drawn from seed i (resumable)."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    rng = np.random.default_rng(self.position)
    self.position += 1
    return {"tokens": rng.integers(0, 256, (BASE.batch_size, BASE.seq_len), dtype=np.int32)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def rel_err(got, want) -> float:
  """Largest ‖got − want‖ / ‖want‖ over the leaves of two trees."""
  errs = jax.tree.map(lambda g, w: float(np.linalg.norm(np.asarray(g) - np.asarray(w))
                                         / max(np.linalg.norm(np.asarray(w)), 1e-30)),
                      got, want)
  return max(jax.tree.leaves(errs))


def shard_shapes(tree) -> dict:
  """{path: [global shape, this device's shard shape]} of every leaf of a params tree."""
  return {dict_path(path): [list(x.shape), list(x.addressable_shards[0].data.shape)]
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def meshes(out: pathlib.Path) -> None:
  model_cfg, params, _ = build_model(BASE, jax.random.key(0, impl="rbg"))
  trainable, frozen = partition(params, ["layers", "embed"])
  loss_fn = next_token_loss(model_cfg, BASE)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  batch, rng = next(RandomBatches()), jax.random.PRNGKey(0)
  (want_loss, _), want_grads = jax.jit(grad_fn)(trainable, frozen, batch, rng)

  optimizer, schedule = make_optimizer(BASE)
  state = init_state(trainable, optimizer, BASE.seed)
  step = make_train_step(loss_fn, optimizer, BASE.grad_accum, schedule)
  batches, want_losses = RandomBatches(), []
  for _ in range(BASE.steps):
    state, metrics = step(state, frozen, next(batches))
    want_losses.append(float(metrics["loss"]))
  want_params = state.trainable

  gen_params = llama.init_params(model_cfg, jax.random.PRNGKey(1), scale=0.3)
  prompt_rng = np.random.default_rng(0)
  prompts = [prompt_rng.integers(0, 256, n).tolist() for n in (5, 19, 40, 33, 12, 27, 8, 36)]
  generate = lambda **kw: generate_ids(gen_params, model_cfg, prompts, policy="h2o", budget=16,
                                       max_new_tokens=8, prefill_chunk=16, **kw)
  want_tokens = generate()
  windows = prompt_rng.integers(0, 256, (8, 48)).astype(np.int32)
  logprobs = lambda **kw: budgeted_logprobs(gen_params, model_cfg, windows, get_policy("tova"),
                                            [12] * model_cfg.n_layers, chunk=8, **kw)
  want_logprobs = logprobs()[0]

  results = {}
  for shape in MESHES:
    mesh_cfg = sharding.MeshConfig(axes=dict(zip(("data", "fsdp", "tensor"), shape)))
    cfg = dataclasses.replace(BASE, mesh=mesh_cfg, output_dir=str(out.parent / f"run{shape}"))
    mesh = sharding.build_mesh(mesh_cfg)
    sh = step_shardings(trainable, frozen, optimizer, cfg.batch_size, mesh, mesh_cfg.rules)
    sharded_grad = jax.jit(grad_fn, in_shardings=(sh.state.trainable, sh.frozen,
                                                  sh.batch, sh.replicated),
                           out_shardings=((sh.replicated, sh.replicated), sh.state.trainable))
    (loss, _), grads = sharded_grad(sharding.put(trainable, sh.state.trainable),
                                    sharding.put(frozen, sh.frozen),
                                    sharding.put(batch, {"tokens": sh.batch}), rng)
    final = train(cfg, loss_fn, trainable, frozen, RandomBatches(), model_cfg=model_cfg)
    cache = kv_cache.init_cache([16] * model_cfg.n_layers, len(prompts), model_cfg.n_kv_heads,
                                model_cfg.head_dim)
    compiled = sharded_chunk_step(model_cfg, get_policy("h2o"), gen_params, cache,
                                  Placement.on(mesh, mesh_cfg.rules))
    losses = [row["loss"] for row in read_jsonl(pathlib.Path(cfg.output_dir) / "metrics.jsonl")]
    got_logprobs, ppl_cache = logprobs(placement=Placement.of(mesh_cfg))
    results[str(shape)] = {
        "perplexity_logprobs_rel_err": rel_err(got_logprobs, want_logprobs),
        "perplexity_cache_k_spec": str(ppl_cache.layers[0].k.sharding.spec),
        "loss_rel_err": abs(float(loss) - float(want_loss)) / abs(float(want_loss)),
        "step_losses_rel_err": rel_err(losses, want_losses),
        "grad_rel_err": rel_err(grads, want_grads),
        "params_rel_err_after_3_steps": rel_err(final.trainable, want_params),
        "params": shard_shapes(final.trainable),
        "adam_mu": shard_shapes(final.opt_state[1][0].mu),
        "cache_k_spec": str(compiled.cache.layers[0].k.spec),
        "generate_tokens": generate(placement=Placement.on(mesh)),
        "want_tokens": want_tokens,
    }
  out.write_text(json.dumps(results))


def kernels(out: pathlib.Path) -> None:
  """shard_map-wrapped attention entry points (GPU kernels, interpreted) against the plain
  ones."""
  from memjax import kernels as plain
  from memjax.sharding import kernels as wrapped
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  q = jax.random.normal(keys[0], (4, 8, 4, 8))
  k, v = (jax.random.normal(key, (4, 8, 2, 8)) for key in keys[1:3])
  log_beta = -jax.nn.softplus(jax.random.normal(keys[3], (4, 8, 2)))
  cache = kv_cache.LayerCache(k=jax.random.normal(keys[4], (4, 2, 16, 8)),
                              v=jax.random.normal(keys[5], (4, 2, 16, 8)),
                              pos=jnp.tile(jnp.arange(16, dtype=jnp.int32) - 2, (4, 2, 1)),
                              stats=jnp.zeros((4, 2, 16)))
  positions = jnp.full((4, 8), 20, jnp.int32)
  results = {}
  for shape in MESHES:
    mesh_cfg = sharding.MeshConfig(axes=dict(zip(("data", "fsdp", "tensor"), shape)))
    kernel = dict(backend="gpu", interpret=True)
    with placed(Placement.on(sharding.build_mesh(mesh_cfg), mesh_cfg.rules)):
      flash = wrapped.flash_attention(q, k, v, log_beta, **kernel)
      decode = wrapped.decode_attention(q, cache, positions, **kernel)
    results[str(shape)] = {
        "flash": rel_err(flash, plain.flash_attention(q, k, v, log_beta, **kernel)),
        "decode": rel_err(decode, plain.decode_attention(q, cache, positions=positions,
                                                         **kernel)),
    }
  out.write_text(json.dumps(results))


# Each training method's settings, small: memory with a product-key block (decoder.forward).
METHOD_SETTINGS = {
    "next_token": MethodConfig(name="next_token"),
    "trim_kv": MethodConfig(name="trim_kv", trim_kv=TrimKVConfig(memory_M=4, gate_hidden=4)),
    "memory": MethodConfig(name="memory", memory=MemoryMethodSettings(
        d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=8, d_ff=32,
        memory=MemoryConfig(layers=(1,), heads=2, k_dim=8, n_keys=4, topk=2))),
}


def loss_holds_shard_map(method: str, backend: str, mesh_cfg: sharding.MeshConfig) -> bool:
  """Whether the trainer's loss of `method` (a run on `mesh_cfg` with attention `backend`)
  traces to a shard_map under the run's placement."""
  cfg = TrainConfig(model="tiny", seq_len=8, batch_size=4, synthetic_fraction=0.0,
                    attention_impl=backend,
                    mesh=mesh_cfg, method=METHOD_SETTINGS[method])
  loss_fn, trainable, frozen, _ = setup_run(cfg)[:4]
  batch = {"tokens": np.zeros((4, 9), np.int32)}
  placement = Placement.on(sharding.build_mesh(mesh_cfg), mesh_cfg.rules)
  jaxpr = jax.jit(traced_under(placement, loss_fn)).trace(trainable, frozen, batch,
                                                          jax.random.PRNGKey(0)).jaxpr
  return "shard_map" in str(jaxpr)


def pallas(out: pathlib.Path, run_kernels: bool) -> None:
  """The model with TPU kernels (attention_impl="tpu") on meshes (2,2,2) and (1,4,2).

  Always: whether the traced sharded forward, TRIM-KV forward, budgeted chunk step and
  the trainer's loss of every method hold a shard_map, for "tpu" and for "xla". With `run_kernels`: loss and gradients of
  both forwards and budgeted generation under the TPU interpreter, against one device
  on the XLA path.
  """
  tpu_cfg = tiny_config(attention_impl="tpu")
  xla_cfg = dataclasses.replace(tpu_cfg, attention_impl="xla")
  params = llama.init_params(tpu_cfg, jax.random.PRNGKey(0), scale=0.3)
  params = gate.add_gates(params, gate.init_gate_params(tpu_cfg, 8, jax.random.PRNGKey(1),
                                                        bias_init=2.0))
  tokens = np.random.default_rng(0).integers(0, tpu_cfg.vocab_size, (4, 9), dtype=np.int32)
  prompt_rng = np.random.default_rng(1)
  prompts = [prompt_rng.integers(0, 97, n).tolist() for n in (5, 14, 16, 9)]
  forwards = {"forward": lambda *a, **kw: llama.forward(*a, **kw),
              "gated": lambda *a, **kw: forward_gated(*a, **kw)[0]}

  def loss_and_grads(cfg):
    """Gradient of the sum of both forwards' next-token losses."""
    loss = lambda params, tokens: sum(
        next_token_ce(f(params, tokens[:, :-1], cfg), tokens)[0] for f in forwards.values())
    return jax.value_and_grad(loss)

  generate = lambda cfg, **kw: generate_ids(params, cfg, prompts, policy="h2o", budget=8,
                                            max_new_tokens=3, prefill_chunk=8, **kw)
  if run_kernels:
    want_loss, want_grads = jax.jit(loss_and_grads(xla_cfg))(params, tokens)
    want_tokens = generate(xla_cfg)
  results = {}
  for shape in MESHES[1:]:
    mesh_cfg = sharding.MeshConfig(axes=dict(zip(("data", "fsdp", "tensor"), shape)))
    mesh, rules = sharding.build_mesh(mesh_cfg), mesh_cfg.rules
    placement = Placement.on(mesh, rules)
    params_sh = sharding.param_shardings(params, mesh, rules)
    args = (sharding.put(params, params_sh),
            sharding.put(tokens, sharding.batch_sharding(4, mesh, rules)))
    cache = kv_cache.init_cache([8] * tpu_cfg.n_layers, len(prompts), tpu_cfg.n_kv_heads,
                                tpu_cfg.head_dim)
    holds_shard_map = {}
    for backend, cfg in (("tpu", tpu_cfg), ("xla", xla_cfg)):
      for name, f in forwards.items():
        jaxpr = jax.jit(traced_under(placement, functools.partial(f, cfg=cfg))).trace(
            *args).jaxpr
        holds_shard_map[f"{name}_{backend}"] = "shard_map" in str(jaxpr)
      chunk = sharded_chunk_step(cfg, get_policy("h2o"), params, cache, placement)
      holds_shard_map[f"generate_{backend}"] = "shard_map" in str(chunk.fn.trace(
          params, cache, tokens[:, :8], tokens[:, :8] >= 0).jaxpr)
      for method in METHOD_SETTINGS:
        holds_shard_map[f"{method}_loss_{backend}"] = loss_holds_shard_map(method, backend,
                                                                           mesh_cfg)
    results[str(shape)] = {"holds_shard_map": holds_shard_map}
    if run_kernels:
      sharded = jax.jit(traced_under(placement, loss_and_grads(tpu_cfg)),
                        out_shardings=(sharding.replicated(mesh), params_sh))
      with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
        loss, grads = sharded(*args)
        got_tokens = generate(tpu_cfg, placement=placement)
      results[str(shape)].update(loss_rel_err=rel_err(loss, want_loss),
                                 grad_rel_err=rel_err(grads, want_grads),
                                 generate_tokens=got_tokens, want_tokens=want_tokens)
  out.write_text(json.dumps(results))


def two_process_config(directory: pathlib.Path, **overrides) -> TrainConfig:
  return dataclasses.replace(BASE, checkpoint_dir=str(directory / "checkpoints"),
                             output_dir=str(directory / "out"), **overrides)


def process(process_id: int, port: int, directory: pathlib.Path) -> None:
  mesh_cfg = sharding.MeshConfig(axes={"data": 1, "fsdp": 2, "tensor": 2}, distributed=True,
                                 coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                 process_id=process_id)
  cfg = two_process_config(directory / "two", mesh=mesh_cfg)
  cfg = dataclasses.replace(cfg, output_dir=f"{cfg.output_dir}{process_id}")
  state = run(cfg)
  trainable = multihost_utils.process_allgather(state.trainable, tiled=True)
  if process_id == 0:
    np.savez(directory / "two.npz", **{dict_path(p): np.asarray(x) for p, x in
                                       jax.tree_util.tree_leaves_with_path(trainable)})


def single(directory: pathlib.Path) -> None:
  state = run(two_process_config(directory / "one"))
  parts = setup_run(BASE)
  like = init_state(parts.trainable, make_optimizer(BASE)[0], BASE.seed)
  restored, _ = Checkpointer(directory / "two" / "checkpoints", keep=1).restore(like)
  flat = lambda tree: {dict_path(p): np.asarray(x)
                       for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  two = dict(np.load(directory / "two.npz"))
  (directory / "single.json").write_text(json.dumps({
      "two_vs_one_rel_err": rel_err(two, flat(state.trainable)),
      "restored_vs_two_max_abs": max(float(np.max(np.abs(two[k] - v)))
                                     for k, v in flat(restored.trainable).items()),
      "restored_step": int(restored.step),
  }))


if __name__ == "__main__":
  mode, args = sys.argv[1], sys.argv[2:]
  if mode == "meshes":
    meshes(pathlib.Path(args[0]))
  elif mode == "kernels":
    kernels(pathlib.Path(args[0]))
  elif mode in ("dispatch", "pallas"):
    pallas(pathlib.Path(args[0]), run_kernels=mode == "pallas")
  elif mode == "process":
    process(int(args[0]), int(args[1]), pathlib.Path(args[2]))
  else:
    single(pathlib.Path(args[0]))
