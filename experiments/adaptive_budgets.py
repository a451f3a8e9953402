"""Uniform vs per-head allocation of each layer's KV slots (AdaKV-style pools).

    python experiments/adaptive_budgets.py [key=value ...] [--config YAML] [--reuse ROWS.jsonl]

Evaluates the config (default configs/adaptive_budgets.yaml) with allocation=uniform and with
allocation=heads (`memjax.eval.ablate`; rows resumable in OUTPUT_DIR/NAME.rows.jsonl), then
prefills one case per policy at the first budget with a head-shared pool and plots how many
slots every (layer, KV head) ended up with: NAME_slots.png.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from memjax.eval import ablate

CONFIG = "configs/adaptive_budgets.yaml"
ALLOCATIONS = ("uniform", "heads")


def configs(argv):
  return ablate.configs("allocation", ALLOCATIONS, argv, CONFIG)


def slot_spread(cfg) -> dict[str, np.ndarray]:
  """Policy -> slots per (layer, KV head) [L, Hkv] after prefilling the first case's context
  at cfg's first budget with allocation=heads (the mean over nothing else: one row)."""
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
    cache = allocation.arrange(cache, "heads", policy, lm.cfg.layer_plan())
    fn = step.jitted_chunk_step(lm.cfg, policy, "last_logits", cfg.head_floor)
    for tokens, valid in generate.chunks([ids], cfg.prefill_chunk):
      _, cache = fn(lm.params, cache, tokens, valid)
    spread[name] = np.asarray(allocation.slots_per_head(cache))[:, 0] / budget
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
  cfg = configs(argv)["heads"]
  spread = slot_spread(cfg)
  out = pathlib.Path(cfg.output_dir) / f"{cfg.name}_slots.png"
  plot_spread(spread, out, f"allocation=heads: slots per (layer, KV head) after a "
                           f"{cfg.context_tokens[0]}-token prefill at {cfg.budgets[0]:.0%} kept")
  lines = ["", "## How the pool is spread", "",
           f"After prefilling one {cfg.context_tokens[0]}-token case at {cfg.budgets[0]:.0%} "
           f"kept with allocation=heads (head floor {cfg.head_floor}): slots held by the "
           "fullest and the emptiest KV head of each layer, as a multiple of the uniform "
           f"share, over the {len(next(iter(spread.values())))} layers ([plot]({out.name})).",
           "", "| policy | mean max share | mean min share | layers with a head over 1.5x |",
           "|:---|---:|---:|---:|"]
  for name, share in spread.items():
    lines.append(f"| {name} | {share.max(1).mean():.2f} | {share.min(1).mean():.2f} | "
                 f"{int((share.max(1) > 1.5).sum())} |")
  with paths["markdown"].open("a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), f"\nwrote plot: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
