"""Per-device memory of a run, computed from shapes, shardings and the config (no compile)."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from memjax.models.config import ModelConfig
from memjax.sharding.rules import Rules

MiB = 2 ** 20


def tree_bytes_per_device(tree: Any, tree_shardings: Any) -> int:
  """Bytes the largest shard of every leaf takes on one device, summed over leaves."""
  sizes = jax.tree.map(
      lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
      tree, tree_shardings)
  return int(sum(jax.tree.leaves(sizes)))


def split_of(name: str, mesh: Mesh, rules: Rules) -> int:
  """How many ways the rules split a logical axis (its mesh axes' sizes multiplied)."""
  return math.prod(mesh.shape[axis] for axis in rules.get(name, ()))


def activation_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, compute_dtype: str,
                     remat: bool, mesh: Mesh, rules: Rules) -> int:
  """Estimated bytes one device holds for the backward pass of one micro-batch.

  Per layer and token it counts what a Llama block keeps: the residual stream and norms
  (4 D), q/k/v and the attention output ((2 Hq + 2 Hkv) Dh, heads split over "heads"),
  the SwiGLU hidden (3 F, split over "mlp") and the T x T attention probabilities of the
  XLA path (2 Hq T, float32); with remat only the layer input (D) is kept per layer, plus
  one layer's worth. Float32 logits and their gradient (2 V, split over "vocab") come on
  top. Rows are split over "batch". An estimate: XLA fuses and reuses buffers.
  """
  itemsize = np.dtype(compute_dtype).itemsize
  rows = math.ceil(micro_batch / split_of("batch", mesh, rules))
  heads = split_of("heads", mesh, rules)
  block = (4 * cfg.d_model + (2 * cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim / heads
           + 3 * cfg.d_ff / split_of("mlp", mesh, rules)) * itemsize
  block += 2 * cfg.n_heads / heads * seq_len * 4
  kept = cfg.d_model * itemsize * cfg.n_layers + block if remat else block * cfg.n_layers
  logits = 2 * cfg.vocab_size / split_of("vocab", mesh, rules) * 4
  return int(rows * seq_len * (kept + logits))


def format_report(mesh: Mesh, rows: dict[str, tuple[int, str]]) -> str:
  """A table of per-device bytes: one line per (name -> (bytes, note)), then the total."""
  shape = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
  lines = [f"per-device memory on mesh {shape} ({mesh.size} devices, "
           f"{jax.process_count()} processes):"]
  for name, (size, note) in rows.items():
    lines.append(f"  {name:<16} {size / MiB:10.2f} MiB" + (f"  ({note})" if note else ""))
  total = sum(size for size, _ in rows.values())
  lines.append(f"  {'total':<16} {total / MiB:10.2f} MiB")
  return "\n".join(lines)
