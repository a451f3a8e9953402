"""experiments/results/trimkv_smollm2.md: the shipped TRIM-KV gates against every heuristic.

    python experiments/trimkv_report.py

Reads what the runs left behind and computes only the retention-score figures itself:
  - experiments/results/trimkv_eval.rows.jsonl  (`memjax eval configs/trimkv_eval.yaml`)
  - experiments/results/trimkv_ablations.rows.jsonl  (experiments/trimkv_ablation.py)
  - runs/trimkv_smollm2/metrics.jsonl and runs/trimkv_ablations/*/metrics.jsonl (training),
    copied to experiments/results/trimkv_train_metrics.jsonl so the curves stay reproducible.
Writes trimkv_smollm2.md, trimkv_training.png, trimkv_heads.png and trimkv_tokens.png.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from trimkv_ablation import ABLATIONS, RUNS, SHORT, markdown_table, summarise  # noqa: E402

from memjax.eval import report  # noqa: E402

RESULTS = pathlib.Path("experiments/results")
EVAL_ROWS = RESULTS / "trimkv_eval.rows.jsonl"
ABLATION_ROWS = RESULTS / "trimkv_ablations.rows.jsonl"
MAIN_RUN = pathlib.Path("runs/trimkv_smollm2")
TRAIN_METRICS = RESULTS / "trimkv_train_metrics.jsonl"
SAMPLE_CONTEXT = 2000
KEEP = 0.25  # the budget whose kept set the token figure shows


def read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_metrics() -> dict[str, list[dict]]:
  """Run name -> logged metrics; refreshed from runs/ when present, else the saved copy."""
  runs = {"main": MAIN_RUN, **{name: RUNS / name for name in ABLATIONS}}
  found = {name: read_jsonl(path / "metrics.jsonl") for name, path in runs.items()}
  found = {name: rows for name, rows in found.items() if rows}
  if found:
    TRAIN_METRICS.write_text("".join(json.dumps(dict(row, run=name)) + "\n"
                                     for name, rows in found.items() for row in rows))
  saved: dict[str, list[dict]] = {}
  for row in read_jsonl(TRAIN_METRICS):
    saved.setdefault(row.pop("run"), []).append(row)
  return saved


def plot_training(metrics: dict[str, list[dict]], path: pathlib.Path) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for name, rows in metrics.items():
    steps = [r["step"] for r in rows]
    style = dict(lw=2.2, color="k") if name == "main" else dict(lw=1, alpha=0.8)
    for ax, key in zip(axes, ("ce", "kl", "capacity")):
      ax.plot(steps, [r[key] for r in rows], label=name, **style)
  for ax, title in zip(axes, ("next-token CE (nats)", "KL(teacher || student) (nats)",
                              "capacity loss")):
    ax.set_title(title)
    ax.set_xlabel("step")
  axes[1].set_yscale("log")
  axes[2].legend(fontsize=7)
  fig.suptitle("TRIM-KV gate training on SmolLM2-135M (main run: 1,024-token rows; "
               "ablations: the short schedule)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def retention_sample():
  """(log β float32 [L, T, Hkv], tokens, needle token span, case) of one eval-style case."""
  import memjax
  from memjax.data import retrieval
  from memjax.retention import forward_gated

  lm = memjax.load("smollm2-135m", gates="trimkv")
  case = retrieval.make_cases("single", 5, SAMPLE_CONTEXT, [0.3], lm.tokenizer, seed=7)[0]
  ids = lm.tokenizer.encode(case.context)
  end_char = case.context.index(case.answers[0]) + len(case.answers[0]) + 1  # with "."
  start_char = case.context.rindex("The secret code", 0, end_char)
  needle_start = len(lm.tokenizer.encode(case.context[:start_char]))
  needle_end = len(lm.tokenizer.encode(case.context[:end_char]))
  run = jax.jit(lambda p, t: forward_gated(p, t, lm.cfg, decay=False)[1])
  log_beta_LxTxHkv = np.asarray(run(lm.params, np.asarray([ids], np.int32)))[:, 0]
  return log_beta_LxTxHkv, ids, (needle_start, needle_end), case


def retention_stats(log_beta_LxTxHkv: np.ndarray, needle: tuple[int, int]) -> dict[str, float]:
  """What the gates do on the sample, from the scores the `learned` policy ranks by."""
  n_layers, t, n_kv = log_beta_LxTxHkv.shape
  age_T = (t - np.arange(t))[None, :, None]
  score = log_beta_LxTxHkv * age_T
  budget = int(KEEP * t)
  kept = score >= np.sort(score, axis=1)[:, -budget][:, None, :]
  lo, hi = needle
  others = np.ones(t, bool)
  others[lo:hi] = False
  others[0] = False
  return {
      "heads keeping token 0 (sink)": kept[:, 0].mean(),
      "heads where token 0 has the highest β": (log_beta_LxTxHkv.argmax(1) == 0).mean(),
      "kept slots in the last 25% of the passage (recency; 0.25 if none)":
          kept[:, int(0.75 * t):].sum() / kept.sum(),
      "heads keeping every needle token": kept[:, lo:hi].all(axis=1).mean(),
      "heads keeping the needle's digits": kept[:, hi - 3:hi - 1].all(axis=1).mean(),
      "median half-life of needle tokens (tokens)":
          float(np.median(np.log(0.5) / log_beta_LxTxHkv[:, lo:hi])),
      "median half-life of other tokens (tokens)":
          float(np.median(np.log(0.5) / log_beta_LxTxHkv[:, others])),
  }


def plot_heads(log_beta_LxTxHkv: np.ndarray, path: pathlib.Path) -> None:
  mean_LxH = log_beta_LxTxHkv.mean(axis=1)
  fig, ax = plt.subplots(figsize=(4.2, 7))
  im = ax.imshow(np.log10(-mean_LxH), aspect="auto", cmap="viridis_r")
  ax.set_xlabel("KV head")
  ax.set_ylabel("layer")
  ax.set_xticks(range(mean_LxH.shape[1]))
  fig.colorbar(im, label="log10(−mean log β): lower = keeps longer")
  ax.set_title("mean retention per layer × head")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_tokens(log_beta_LxTxHkv: np.ndarray, needle: tuple[int, int],
                path: pathlib.Path) -> None:
  n_layers, t, _ = log_beta_LxTxHkv.shape
  layers = sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers - 1})
  fig, axes = plt.subplots(len(layers), 1, figsize=(12, 1.7 * len(layers)), sharex=True)
  for ax, layer in zip(axes, layers):
    half_life_TxH = np.log(0.5) / log_beta_LxTxHkv[layer]
    for head in range(half_life_TxH.shape[1]):
      ax.plot(half_life_TxH[:, head], lw=0.6, label=f"head {head}")
    ax.axvspan(*needle, color="red", alpha=0.25, label="needle")
    ax.set_yscale("log")
    ax.set_ylabel(f"layer {layer}")
  axes[0].legend(fontsize=7, ncol=4, loc="upper right")
  axes[0].set_title("half-life ln(0.5)/log β of each token (tokens; higher = kept longer) over "
                    f"a {t}-token Persuasion passage with a needle")
  axes[-1].set_xlabel("token position")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> int:
  rows = read_jsonl(EVAL_ROWS)
  metrics = training_metrics()
  plot_training(metrics, RESULTS / "trimkv_training.png")
  log_beta, ids, needle, case = retention_sample()
  plot_heads(log_beta, RESULTS / "trimkv_heads.png")
  plot_tokens(log_beta, needle, RESULTS / "trimkv_tokens.png")
  stats = retention_stats(log_beta, needle)
  accuracy = {(r["policy"], r["budget"]): r["accuracy"] for r in rows if "accuracy" in r}
  full = accuracy.get(("full", None))
  learned = accuracy.get(("learned", 0.25))
  best = max((a, p) for (p, b), a in accuracy.items() if b == 0.25 and p != "learned")
  parts = [
      "# TRIM-KV learned retention gates on SmolLM2-135M",
      "",
      "Generated by `python experiments/trimkv_report.py` from the runs listed in its "
      "docstring. CPU only (2 cores); nothing here has run on a TPU or GPU.",
      "",
      "## Retrieval and perplexity under a budget",
      "",
      report.format_table(rows, report.protocol_label(False)),
      "",
      f"Target: `learned` at 25% ≥ 80% of the full cache. Measured: learned "
      f"{100 * learned:.1f}% vs full {100 * full:.1f}% (ratio {learned / full:.2f}); the best "
      f"other policy at 25% is {best[1]} at {100 * best[0]:.1f}%."
      if learned is not None and full else "The learned rows are missing: run the eval.",
      "",
      "Reading (run of 2026-11-22: 200 steps of 1,024 tokens, about 55 min of 2 idle CPU "
      "cores, 85 min on the shared machine): the gates learned attention sinks (token 0 kept "
      "in about two thirds of the layer-heads) and strong recency, and they give the needle "
      "a longer half-life than prose (about 1.5x), but not the ~3.5x a needle 1,400 tokens "
      "back needs to outrank the recent tokens at a 25% budget. So `learned` doubles window "
      "and streaming at 25% (37.5% vs 18.8%) and ties keydiff, far from the 80% target. Its "
      "perplexity (45.6) is worse than streaming/h2o: the capacity loss, satisfied after ~60 "
      "steps (S_t below M everywhere), left half-lives of ~70 tokens, shorter than the budget "
      "needs. The short-schedule baseline below (40 steps, M = 128) reaches 40.3 with the "
      "same accuracy, so the long run over-decayed. The capacity loss is what makes the gates "
      "do anything (without it `learned` equals window, to the perplexity digit); KL matters "
      "more than next-token CE here; a 16-wide gate keeps sinks but not facts.",
      "",
      "## Ablations (short schedule)",
      "",
      f"Each trains from configs/trimkv_smollm2.yaml with `{' '.join(SHORT)}` plus the change, "
      "then evaluates the gates like the shipped ones at 25% (16 cases): "
      "`python experiments/trimkv_ablation.py NAME`.",
      "",
      markdown_table(summarise(ABLATION_ROWS, RUNS, metrics)),
      "",
      "![training curves](trimkv_training.png)",
      "",
      "## What the gates learned",
      "",
      f"One {len(ids)}-token eval-style passage (needle at depth 0.3), log β from the shipped "
      "gates with ordinary attention (what `learned` ranks before any eviction); 'kept' "
      f"means in the top {int(100 * KEEP)}% by log β·(t − pos) at the end of the passage, per "
      "(layer, KV head).",
      "",
      "| statistic | value |",
      "|---|---:|",
      *[f"| {k} | {v:.3g} |" for k, v in stats.items()],
      "",
      "![mean retention per layer and head](trimkv_heads.png)",
      "",
      "![token-level retention](trimkv_tokens.png)",
      "",
  ]
  (RESULTS / "trimkv_smollm2.md").write_text("\n".join(parts))
  print("\n".join(parts))
  return 0


if __name__ == "__main__":
  sys.exit(main())
