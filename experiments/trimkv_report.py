"""experiments/results/trimkv_smollm2.md: the shipped TRIM-KV gates against every heuristic.

    python experiments/trimkv_report.py

Reads what the runs left behind and computes only the retention-score figures itself:
  - experiments/results/trimkv_eval.rows.jsonl  (`memjax eval configs/trimkv_eval.yaml`)
  - experiments/results/trimkv_eval_technical.rows.jsonl  (configs/trimkv_eval_technical.yaml)
  - experiments/results/trimkv_variants.md  (experiments/trimkv_variants.py, linked)
  - experiments/results/trimkv_ablations.rows.jsonl  (experiments/trimkv_ablation.py: the
    objective ablations of the first recipe)
  - MAIN_RUN (the shipped gates' run) and NO_FACT_RUN (the same recipe without fact
    supervision): metrics.jsonl and validation.jsonl, copied to
    experiments/results/trimkv_train_metrics.jsonl and trimkv_validation.jsonl so that the
    curves stay reproducible without runs/.
Writes trimkv_smollm2.md, trimkv_training.png, trimkv_validation.png, trimkv_heads.png and
trimkv_tokens.png.
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
ABLATION_ROWS = RESULTS / "trimkv_ablations.rows.jsonl"
MAIN_RUN = pathlib.Path("runs/trimkv_fact")
NO_FACT_RUN = pathlib.Path("runs/trimkv_smollm2")
TRAIN_METRICS = RESULTS / "trimkv_train_metrics.jsonl"
VALIDATION = RESULTS / "trimkv_validation.jsonl"
SAMPLE_CONTEXT = 2000
KEEP = 0.25  # the budget whose kept set the token figure shows


def read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def saved_rows(file: str, copy: pathlib.Path, runs: dict[str, pathlib.Path]) -> dict[str, list]:
  """Run name -> rows of runs/<run>/`file`; refreshed into `copy` when the runs are present,
  else read from it."""
  saved: dict[str, list[dict]] = {}
  for row in read_jsonl(copy):
    saved.setdefault(row.pop("run"), []).append(row)
  found = {name: read_jsonl(path / file) for name, path in runs.items()}
  found = {name: rows for name, rows in found.items() if rows}
  if found:  # runs present replace their saved rows; the others' rows are kept
    saved.update(found)
    copy.write_text("".join(json.dumps(dict(row, run=name)) + "\n"
                            for name, rows in saved.items() for row in rows))
  return saved


def training_metrics() -> dict[str, list[dict]]:
  """Run name -> logged training metrics (main, no_fact_supervision, first-recipe ablations)."""
  runs = {"main": MAIN_RUN, "no_fact_supervision": NO_FACT_RUN,
          **{name: RUNS / name for name in ABLATIONS}}  # "first_recipe": the previous gates' run
  return saved_rows("metrics.jsonl", TRAIN_METRICS, runs)


def validation_rows() -> dict[str, list[dict]]:
  """Run name -> validation rows (`memjax validate`) of the main and no-fact runs."""
  return saved_rows("validation.jsonl", VALIDATION,
                    {"main": MAIN_RUN, "no_fact_supervision": NO_FACT_RUN})


def plot_validation(rows: dict[str, list[dict]], path: pathlib.Path) -> None:
  """Validation accuracy and fact/prose half-life ratio against the training step."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
  for name, runs in rows.items():
    for sinks in sorted({r.get("n_sink", 0) for r in runs}):
      line = sorted((r for r in runs if r.get("n_sink", 0) == sinks), key=lambda r: r["step"])
      steps = [r["step"] for r in line]
      label = f"{name}, {sinks} sinks"
      axes[0].plot(steps, [100 * r["accuracy"] for r in line], marker="o", label=label)
      axes[1].plot(steps, [r["half_life_ratio"] for r in line], marker="o", label=label)
  axes[0].set(title="validation retrieval @ 25% (%)", xlabel="step", ylim=(0, 100))
  axes[1].set(title="fact / prose median half-life", xlabel="step", yscale="log")
  axes[0].legend(fontsize=8)
  fig.suptitle("TRIM-KV gates during training (32 training-like cases of 1,024 tokens)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_training(metrics: dict[str, list[dict]], path: pathlib.Path) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for name, rows in metrics.items():
    steps = [r["step"] for r in rows]
    style = dict(lw=2.2, color="k") if name == "main" else dict(lw=1, alpha=0.8)
    for ax, key in zip(axes, ("ce", "kl", "capacity")):
      ax.plot(steps, [r[key] for r in rows], label=name, **style)
      if name == "main" and key == "kl" and "answer_kl" in rows[0]:
        ax.plot(steps, [r["answer_kl"] for r in rows], label="main: answer KL", lw=1.5,
                color="k", ls="--")
  for ax, title in zip(axes, ("next-token CE (nats)", "KL(teacher || student) (nats)",
                              "capacity loss")):
    ax.set_title(title)
    ax.set_xlabel("step")
  axes[1].set_yscale("log")
  axes[2].legend(fontsize=7)
  fig.suptitle("TRIM-KV gate training on SmolLM2-135M (main and no-fact runs: 1,024-token "
               "rows; first-recipe ablations: 512)")
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


def current_rows(config: str) -> list[dict]:
  """The rows of `config`'s row log made with its settings and, for `learned`, with the gates
  it names now (older gates' rows stay in the log but are not reported); its .md, .csv and
  plot are rewritten from them."""
  from memjax.config import load_config
  from memjax.eval.config import EvalConfig
  from memjax.eval.harness import fingerprint, gates_id

  cfg = load_config(EvalConfig, config)
  log = RESULTS / f"{cfg.name}.rows.jsonl"
  fp, gates = fingerprint(cfg), gates_id(cfg)
  rows = [r for r in read_jsonl(log) if r.get("fingerprint") == fp
          and (r["policy"] != "learned" or r.get("gates") == gates)]
  report.write_report(rows, cfg)
  return rows


def target_lines(rows: list[dict], label: str) -> list[str]:
  """The targets against what `rows` (one eval's rows) measured at ~2,000 tokens."""
  rows = [r for r in rows if r["task"] == "perplexity" or r["context_tokens"] == SAMPLE_CONTEXT]
  acc = {(r["policy"], r["budget"]): r["accuracy"] for r in rows if "accuracy" in r}
  full = acc.get(("full", None))
  lines = []
  for budget, need in ((0.25, 0.8), (0.125, 0.6)):
    learned = acc.get(("learned", budget))
    heuristics = [(a, p) for (p, b), a in acc.items()
                  if b == budget and p not in ("learned", "oracle")]
    if learned is None or not full or not heuristics:
      lines.append(f"- {label}, {100 * budget:g}%: learned or the full cache not run yet.")
      continue
    best, name = max(heuristics)
    oracle = acc.get(("oracle", budget))
    lines.append(
        f"- {label}, {100 * budget:g}%: learned {100 * learned:.1f}% = {learned / full:.2f} of "
        f"the full cache ({100 * full:.1f}%; target ≥ {need:.2f}: "
        f"{'met' if learned / full >= need else 'not met'}); best heuristic {name} "
        f"{100 * best:.1f}% ({100 * (learned - best):+.1f} points"
        + ("; target ≥ +25" if budget == 0.25 else "") + ")"
        + (f"; oracle {100 * oracle:.1f}%" if oracle is not None else "") + ".")
  ppl = {(r["policy"], r["budget"]): r["perplexity"] for r in rows if "perplexity" in r}
  if ("learned", 0.25) in ppl and ("full", None) in ppl:
    ratio = ppl[("learned", 0.25)] / ppl[("full", None)]
    lines.append(f"- perplexity at 25%: learned {ppl[('learned', 0.25)]:.2f} = {ratio:.2f}x the "
                 f"full cache (target ≤ 1.10x: {'met' if ratio <= 1.10 else 'not met'}).")
  return lines


def main() -> int:
  rows = current_rows("configs/trimkv_eval.yaml")
  technical = current_rows("configs/trimkv_eval_technical.yaml")
  metrics = training_metrics()
  validation = validation_rows()
  plot_training(metrics, RESULTS / "trimkv_training.png")
  if validation:
    plot_validation(validation, RESULTS / "trimkv_validation.png")
  log_beta, ids, needle, case = retention_sample()
  plot_heads(log_beta, RESULTS / "trimkv_heads.png")
  plot_tokens(log_beta, needle, RESULTS / "trimkv_tokens.png")
  stats = retention_stats(log_beta, needle)
  validation_table = ["| run | step | learned's sinks | accuracy (%) | fact / prose half-life "
                      "| fact, prose half-life (tokens) |", "|---|---:|---:|---:|---:|---:|"]
  for name, runs in validation.items():
    for r in sorted(runs, key=lambda r: (r.get("n_sink", 0), r["step"])):
      validation_table.append(
          f"| {name} | {r['step']} | {r.get('n_sink', 0)} | {100 * r['accuracy']:.1f} | "
          f"{r['half_life_ratio']:.2f} | {r['fact_half_life']:.0f}, {r['prose_half_life']:.0f} |")
  parts = [
      "# TRIM-KV learned retention gates on SmolLM2-135M",
      "",
      "Generated by `python experiments/trimkv_report.py` from the runs listed in its "
      "docstring. CPU only (2 cores); nothing here has run on a TPU or GPU.",
      "",
      "## Retrieval and perplexity under a budget",
      "",
      "Single needle in ~2,000 tokens of *Persuasion* (`configs/trimkv_eval.yaml`), "
      "query-agnostic; `oracle` keeps the needle sentence's own tokens, 4 sinks and the most "
      "recent tokens (the bound for a retention policy on this task at the same budget):",
      "",
      "```",
      report.format_table(rows, report.protocol_label(False)),
      "```",
      "",
      "The same task with the haystack cut from the Python language reference, text unlike "
      "any novel and never read in training (`configs/trimkv_eval_technical.yaml`):",
      "",
      "```",
      report.format_table(technical, report.protocol_label(False)) if technical else "not run",
      "```",
      "",
      "Targets (16 cases per cell; the issue asked for 32, see the note below):",
      "",
      *target_lines(rows, "Austen"),
      *target_lines(technical, "Python reference"),
      "",
      READING,
      "",
      "## Validation during training",
      "",
      "`memjax validate RUN_DIR`: every checkpoint scored on 32 retrieval cases of 1,024 tokens "
      "drawn like the training rows from a seed training never uses (never the evaluation's "
      "names, template or haystack), `learned` at 25%, and the median half-life of fact "
      "tokens against other tokens. The best checkpoint's gates are the shipped ones. On the "
      "same cases: full cache 87.5%, keydiff 53.1%, the oracle without sinks 53.1%, streaming "
      "18.8%, h2o 6.2%, the previous shipped gates 15.6% (half-life ratio 1.35).",
      "",
      *validation_table,
      "",
      "![validation](trimkv_validation.png)",
      "",
      "The short-schedule variant loop (`experiments/trimkv_variants.py`: one switch at a time, "
      "60 steps of 512 tokens, scored like this table) is built and smoke-tested, but its "
      "variants were not run in this session: the CPU went to the two long runs above, whose "
      "difference is the fact supervision.",
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
      "## The first recipe's objective ablations (short schedule, for the record)",
      "",
      f"Each trained from the first recipe with `{' '.join(SHORT)}` plus the change and was "
      "evaluated like the shipped gates at 25% (16 cases): `python "
      "experiments/trimkv_ablation.py NAME`.",
      "",
      markdown_table(summarise(ABLATION_ROWS, RUNS, metrics)),
      "",
  ]
  (RESULTS / "trimkv_smollm2.md").write_text("\n".join(parts))
  print("\n".join(parts))
  return 0


READING = (
    "Reading (runs of 2026-12-01, 2 shared CPU cores): the shipped gates are step 80 of "
    "`configs/trimkv_smollm2.yaml` (runs/trimkv_fact; about 30 minutes of training on a "
    "machine shared with evaluations), chosen by validation accuracy (84.4% at steps 80 and "
    "100). Three changes made the difference, each measured on the validation cases "
    "(`learned` at 25%, full cache 87.5%, keydiff 53.1%): (1) fact supervision "
    "(`fact_weight`): the same recipe without it reached 53.1% after 160 steps (fact/prose "
    "half-life 1.6), with it 75% at step 60 and 84.4% at step 80 (half-life ratio 15-26); "
    "the answer-weighted KL alone reaches the fact tokens only through the few heads that "
    "retrieve, while the capacity term lowers every β at once; (2) four protected sinks: "
    "the step-60 gates answer 50% without them and 75% with them (gates that keep facts "
    "for thousands of tokens can rate the first token below a fact, and a cache without its "
    "sinks fails whatever else it keeps; the oracle without sinks was also only 53%); "
    "(3) the new data and capacity target (four templates, two domains, M_t = max(128, t/4), "
    "answer weight 1) are in both runs, so they are not separated here; the previous gates "
    "with sinks answer 28.1%. Perplexity under the budget also improved (37.7 at 25%, from "
    "45.6): 61% of the kept slots hold the most recent quarter of the passage, the needle's "
    "digits are kept in 97% of the layer-heads (median half-life 16,700 tokens against 522 "
    "for other tokens). The sinks are the policy's: the gates themselves keep token 0 in only 3% of "
    "the layer-heads (below), which is why `n_sink` protects them.")


if __name__ == "__main__":
  sys.exit(main())
