"""Uniform vs per-head (AdaKV-style) vs cross-layer allocation of the KV slots.

    python experiments/adaptive_budgets.py [key=value ...] [--config YAML] [--reuse ROWS.jsonl]

Evaluates the config (default configs/adaptive_budgets.yaml) with allocation=uniform, heads
and layers (`memjax.eval.ablate`; rows resumable in OUTPUT_DIR/NAME.rows.jsonl), then
prefills one case per policy at the first budget with each kind of pool and plots how many
slots every (layer, KV head) ended up with: NAME_slots.png (heads) and NAME_layer_slots.png
(layers).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from memjax.eval import ablate

CONFIG = "configs/adaptive_budgets.yaml"
ALLOCATIONS = ("uniform", "heads", "layers")


def configs(argv):
  return ablate.configs("allocation", ALLOCATIONS, argv, CONFIG)


def slot_spread(cfg) -> dict[str, np.ndarray]:
  """Policy -> slots holding each (layer, KV head)'s tokens [L, Hkv], as a multiple of the
  uniform share, after prefilling the first case's context at cfg's first budget with
  cfg's allocation (the mean over nothing else: one row)."""
  import memjax
  from memjax.cache import allocation, kv_cache
  from memjax.cache.policies import get_policy
  from memjax.data import retrieval
  from memjax.generation import generate, step

  lm = memjax.load(cfg.model, gates=cfg.gates)
  length = cfg.context_tokens[0]
  case = retrieval.make_cases(cfg.tasks[0], 1, length, [0.5], lm.tokenizer, seed=cfg.seed)[0]
  ids = lm.tokenizer.encode(case.context)
  spread = {}
  for name in cfg.policies:
    policy = get_policy(name)
    budget = round(cfg.budgets[0] * length)
    budgets = generate.resolve_budgets(lm.cfg, policy, budget, len(ids))
    cache = kv_cache.init_cache(budgets, 1, lm.cfg.n_kv_heads, lm.cfg.head_dim)
    cache = allocation.arrange(cache, cfg.pooling, policy, lm.cfg.layer_plan())
    fn = step.jitted_chunk_step(lm.cfg, policy, "last_logits", cfg.pooling)
    for tokens, valid in generate.chunks([ids], cfg.prefill_chunk):
      _, cache = fn(lm.params, cache, tokens, valid)
    count = (allocation.slots_per_head if cfg.allocation == "heads"
             else allocation.slots_per_layer)
    spread[name] = np.asarray(count(cache))[:, 0] / budget
  return spread


def plot_spread(spread: dict[str, np.ndarray], path: pathlib.Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(spread), figsize=(2.2 * len(spread) + 1, 5), sharey=True)
  for ax, (name, share) in zip(np.atleast_1d(axes), spread.items()):
    image = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=max(2.0, share.max()))
    ax.set_title(name)
    ax.set_xlabel("KV head")
    ax.set_xticks(range(share.shape[1]))
  np.atleast_1d(axes)[0].set_ylabel("layer")
  fig.colorbar(image, ax=axes, label="slots / uniform share")
  fig.suptitle(title)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  paths = ablate.run_ablation("allocation", ALLOCATIONS, argv, CONFIG, __doc__.split("\n")[0])
  heads, layers = configs(argv)["heads"], configs(argv)["layers"]
  by_head, by_layer = slot_spread(heads), slot_spread(layers)
  prefill = (f"a {heads.context_tokens[0]}-token prefill at {heads.budgets[0]:.0%} kept")
  out_heads = pathlib.Path(heads.output_dir) / f"{heads.name}_slots.png"
  out_layers = pathlib.Path(heads.output_dir) / f"{heads.name}_layer_slots.png"
  plot_spread(by_head, out_heads, f"allocation=heads: slots per (layer, KV head) after {prefill}")
  plot_spread(by_layer, out_layers, f"allocation=layers: slots holding each (layer, KV head)'s "
                                    f"tokens after {prefill}")
  n_layers = len(next(iter(by_head.values())))
  lines = ["", "## How the pools are spread", "",
           f"After prefilling one case with {prefill} (floor {heads.floor}): with "
           "allocation=heads, the slots held by the fullest and the emptiest KV head of each "
           f"layer, as a multiple of the uniform share, averaged over the {n_layers} layers "
           f"([plot]({out_heads.name})); with allocation=layers (one pool of all layers per KV "
           "head), the share of the fullest and the emptiest layer, averaged over the KV "
           f"heads ([plot]({out_layers.name})).", "",
           "| policy | heads: mean max share | heads: mean min share | layers with a head over "
           "1.5x | layers: max share | layers: min share | layers over 1.5x |",
           "|:---|---:|---:|---:|---:|---:|---:|"]
  for name in by_head:
    h, l = by_head[name], by_layer[name]
    lines.append(f"| {name} | {h.max(1).mean():.2f} | {h.min(1).mean():.2f} | "
                 f"{int((h.max(1) > 1.5).sum())} | {l.max(0).mean():.2f} | "
                 f"{l.min(0).mean():.2f} | {int((l.mean(1) > 1.5).sum())} |")
  with paths["markdown"].open("a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), f"\nwrote plots: {out_heads}, {out_layers}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
