"""Run with 8 simulated CPU devices: sharded value table vs single-device, forward and grads.

Prints one JSON line {"devices": 8, "<check>": relative error, ...}. Used by
tests/test_memory_sharded.py in a subprocess (XLA_FLAGS must be set before jax starts).
"""

import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from memjax.memory import pkm_layer  # noqa: E402
from memjax.memory.sharded import sharded_bag  # noqa: E402
from memjax.models.config import MemoryConfig  # noqa: E402


def rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "mem"))
  mem = MemoryConfig(kind="memory_plus", layers=(0,), heads=2, k_dim=8, n_keys=8, topk=4,
                     value_dim=16, qk_norm=True, max_gather_elems=256)
  d = 12
  kp, kh = jax.random.split(jax.random.PRNGKey(0))
  p = pkm_layer.init_layer(mem, d, kp)
  p["values"] = jax.device_put(p["values"], NamedSharding(mesh, P(None, "mem")))
  out = {"devices": jax.device_count()}
  for name, bag in (("local", pkm_layer.local_bag(mem)),
                    ("sharded", sharded_bag(mesh, mem.max_gather_elems))):
    for t in (12, 11):  # 11: rows are padded to the axis size
      h = jax.random.normal(kh, (2, t, d))
      loss = lambda p, h: jnp_sum_sq(pkm_layer.apply(p, p["values"], h, mem, bag)[0])
      value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(p, h)
      out[f"{name}_{t}"] = (value, grads)
  for t in (12, 11):
    (v_ref, g_ref), (v, g) = out.pop(f"local_{t}"), out.pop(f"sharded_{t}")
    out[f"forward_T{t}"] = rel(v, v_ref)
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g),
                          jax.tree.leaves(g_ref)):
      out[f"grad_T{t}{jax.tree_util.keystr(path[0])}"] = rel(a, b)
  print(json.dumps(out))


def jnp_sum_sq(x):
  return (x * x).sum()


if __name__ == "__main__":
  main()
