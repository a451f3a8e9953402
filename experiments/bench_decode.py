"""Prefill and decode speed, and peak memory, of budgeted generation against a full cache.

SmolLM2-135M in float32, batch 1, on real prose (the shipped "haystack" corpus). Each
configuration runs in its own process so that its peak RSS is its own:

  memjax   streaming and h2o at budget 512, and the full cache (`full`);
  transformers (the oracle) with its own full cache, from the same GGUF weights.

Every run first warms up on the same shapes (one prefill chunk and a few decode steps on a
fresh cache of the same size), so compilation is excluded from the timings. Then it prefills
the whole context (timed as one block) and decodes greedily, timing every step.

Usage:
  python experiments/bench_decode.py            # writes experiments/results/decode.md
  python experiments/bench_decode.py --quick    # 512/1k contexts, few steps; prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from tqdm.auto import tqdm

MODEL = "smollm2-135m"
BUDGET = 512
PREFILL_CHUNK = 512
RESULTS = pathlib.Path(__file__).parent / "results" / "decode.md"
RESULT_PREFIX = "RESULT "
# torch's OpenMP threads spin while waiting by default; on a shared 2-core machine a spinning
# thread that loses its core stalls every matmul for a scheduler time slice (~8 ms per GEMV,
# 2.4 s per decoded token). Passive waiting is the sensible setting for such a machine.
TORCH_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
CHILD_ENV = {"TQDM_DISABLE": "1"}  # silences the weight-conversion progress bars


@dataclasses.dataclass(frozen=True)
class Run:
  """One measured configuration.

  Attributes:
    backend: "memjax" or "transformers".
    policy: memjax eviction policy; "full" for transformers.
    budget: KV slots per layer, None for a full cache.
    context: prompt tokens prefilled before decoding.
  """

  backend: str
  policy: str
  budget: int | None
  context: int

  @property
  def label(self) -> str:
    return f"{self.backend} {self.policy} budget={self.budget or 'full'} context={self.context}"


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to measure and which runs the ratios compare.

  Attributes:
    contexts: prompt lengths measured for every backend and policy.
    extra_stream_contexts: further streaming-only contexts (the short side of the RSS ratio).
    decode_steps: timed decode steps per run (the median is reported).
    warmup_steps: decode steps of the warm-up.
    short, mid, long: contexts of the ratios: decode(long)/decode(short) for the budgeted
      policies, memjax decode(mid)/transformers decode(mid).
    rss_short: streaming context whose peak RSS is compared with `long`.
  """

  contexts: tuple[int, ...]
  extra_stream_contexts: tuple[int, ...]
  decode_steps: int
  warmup_steps: int
  short: int
  mid: int
  long: int
  rss_short: int


FULL_PLAN = Plan(contexts=(1024, 4096, 16384), extra_stream_contexts=(2048,), decode_steps=32,
                 warmup_steps=4, short=1024, mid=4096, long=16384, rss_short=2048)
QUICK_PLAN = Plan(contexts=(512, 1024), extra_stream_contexts=(), decode_steps=6,
                  warmup_steps=2, short=512, mid=1024, long=1024, rss_short=512)


def plan_runs(plan: Plan) -> list[Run]:
  """Every configuration of the plan, ordered by context."""
  runs = [Run("memjax", "streaming", BUDGET, c) for c in plan.extra_stream_contexts]
  for c in plan.contexts:
    runs += [Run("memjax", "streaming", BUDGET, c), Run("memjax", "h2o", BUDGET, c),
             Run("memjax", "full", None, c), Run("transformers", "full", None, c)]
  return sorted(runs, key=lambda r: r.context)


def peak_rss_mb() -> float:
  """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
  """This process's resident set size now, in MiB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def summary(n_tokens: int, prefill_s: float, step_ms: list[float]) -> dict:
  """Result of one run, taken while its model and cache are still alive."""
  return {"prefill_tok_s": n_tokens / prefill_s, "decode_ms": float(np.median(step_ms)),
          "decode_min_ms": float(np.min(step_ms)), "end_rss_mb": current_rss_mb(),
          "load_1min": os.getloadavg()[0]}


# --- memjax --------------------------------------------------------------------------------


def memjax_prefill(step_fn, params, cache, ids):
  """Feed `ids` in chunks of PREFILL_CHUNK; (host logits [1, V] after the last token, cache)."""
  from memjax.generation import generate
  logits = None
  for tokens, valid in generate.chunks([ids], PREFILL_CHUNK):
    logits, cache = step_fn(params, cache, tokens, valid)
  return np.asarray(logits), cache


def memjax_decode(step_fn, params, logits, cache, steps: int):
  """Greedy decode for `steps` tokens; (wall ms of each step, argmax to host logits; cache)."""
  from memjax.generation import generate
  valid = np.ones((1, 1), bool)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    token_B = generate.sample(logits, 0.0, None)
    logits, cache = step_fn(params, cache, token_B[:, None], valid)
    logits = np.asarray(logits)
    times.append(1e3 * (time.perf_counter() - start))
  return times, cache


def bench_memjax(run: Run, ids: list[int], plan: Plan) -> dict:
  """Prefill tokens/s and median decode ms/token of one memjax configuration."""
  import memjax
  from memjax.cache import kv_cache
  from memjax.cache.policies import get_policy
  from memjax.generation import generate, step

  lm = memjax.load(MODEL)
  cfg, policy = lm.cfg, get_policy(run.policy)
  budgets = generate.resolve_budgets(cfg, policy, run.budget, len(ids) + plan.decode_steps)
  step_fn = step.jitted_chunk_step(cfg, policy, "last_logits")

  def fresh_cache():
    return kv_cache.init_cache(budgets, 1, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_dtype)

  memjax_decode(step_fn, lm.params,
                *memjax_prefill(step_fn, lm.params, fresh_cache(), ids[:PREFILL_CHUNK]),
                plan.warmup_steps)

  start = time.perf_counter()
  logits, cache = memjax_prefill(step_fn, lm.params, fresh_cache(), ids)
  prefill_s = time.perf_counter() - start
  times, cache = memjax_decode(step_fn, lm.params, logits, cache, plan.decode_steps)
  return summary(len(ids), prefill_s, times)  # `cache` is alive here: it counts in end RSS


# --- transformers --------------------------------------------------------------------------


def hf_prefill(model, ids):
  """One forward over `ids` (logits of the last position only); (logits [1, V], cache)."""
  import torch
  out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
  return out.logits[:, -1], out.past_key_values


def hf_decode(model, logits, past, steps: int):
  """Greedy decode for `steps` tokens with the model's own KV cache; (per-step wall ms, cache)."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    token = logits.argmax(-1)
    out = model(token[:, None], past_key_values=past, use_cache=True)
    logits, past = out.logits[:, -1], out.past_key_values
    times.append(1e3 * (time.perf_counter() - start))
  return times, past


def bench_transformers(run: Run, ids: list[int], plan: Plan) -> dict:
  """Prefill tokens/s and median decode ms/token of transformers' full-cache Llama."""
  del run
  import torch
  from transformers import AutoModelForCausalLM

  from memjax.io import find_model

  path = find_model(MODEL)
  model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                               dtype=torch.float32).eval()
  with torch.inference_mode():
    hf_decode(model, *hf_prefill(model, ids[:PREFILL_CHUNK]), plan.warmup_steps)
    start = time.perf_counter()
    logits, past = hf_prefill(model, ids)
    prefill_s = time.perf_counter() - start
    times, past = hf_decode(model, logits, past, plan.decode_steps)
    return summary(len(ids), prefill_s, times)  # `past` is alive here: it counts in end RSS


def run_one(run: Run, ids_path: str, plan: Plan) -> None:
  """Child process: measure `run` and print its result (with this process's peak RSS)."""
  ids = np.load(ids_path)[:run.context].tolist()
  bench = bench_memjax if run.backend == "memjax" else bench_transformers
  result = bench(run, ids, plan)
  result["rss_mb"] = peak_rss_mb()
  print(RESULT_PREFIX + json.dumps(result), flush=True)


# --- parent: plan, subprocesses, report ----------------------------------------------------


def context_ids(n_tokens: int) -> tuple[np.ndarray, int]:
  """The first `n_tokens` of the haystack corpus (then the held-out one, if needed), tokenized
  with the model's own tokenizer; also the model's maximum positions."""
  from memjax.data.corpus import load_corpus
  from memjax.io import find_model
  from memjax.io.gguf_loader import gguf_config, gguf_tokenizer, open_gguf

  path = find_model(MODEL)
  reader = open_gguf(path)
  tokenizer = gguf_tokenizer(reader, path)
  ids = tokenizer.encode(load_corpus("haystack"))
  if len(ids) < n_tokens:
    ids += tokenizer.encode("\n\n" + load_corpus("heldout"))
  if len(ids) < n_tokens:
    raise ValueError(f"the corpus has only {len(ids)} tokens, fewer than {n_tokens}")
  return np.asarray(ids[:n_tokens], np.int32), gguf_config(reader, path, "float32").max_positions


def measure(run: Run, ids_path: str, quick: bool) -> dict:
  """Run one configuration in a fresh Python process and parse its result line."""
  cmd = [sys.executable, __file__, "--one", json.dumps(dataclasses.asdict(run)),
         "--ids", ids_path] + (["--quick"] if quick else [])
  env = dict(os.environ, **CHILD_ENV, **(TORCH_ENV if run.backend == "transformers" else {}))
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def measure_all(plan: Plan, quick: bool) -> tuple[list[tuple[Run, dict | None]], int]:
  """Results of every run (None where the context exceeds the model), and max positions."""
  runs = plan_runs(plan)
  ids, max_positions = context_ids(max(r.context for r in runs))
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    ids_path = os.path.join(tmp, "ids.npy")
    np.save(ids_path, ids)
    for run in tqdm(runs, desc="configurations", file=sys.stdout):
      if run.budget is None and run.context + plan.decode_steps > max_positions:
        results.append((run, None))
        continue
      tqdm.write(f"-> {run.label}", file=sys.stdout)
      result = measure(run, ids_path, quick)
      tqdm.write(f"   prefill {result['prefill_tok_s']:.0f} tok/s, decode "
                 f"{result['decode_ms']:.1f} ms/token, peak RSS {result['rss_mb']:.0f} MB",
                 file=sys.stdout)
      results.append((run, result))
  return results, max_positions


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo."""
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor() or "unknown"


def ram_gb() -> float:
  """Total RAM in GiB from /proc/meminfo."""
  for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
    if line.startswith("MemTotal:"):
      return int(line.split()[1]) / 1024**2
  return float("nan")


def load_text(load: tuple[float, float, float]) -> str:
  """A load-average triple as "a / b / c"."""
  return " / ".join(f"{x:.2f}" for x in load)


def header(plan: Plan, started: datetime.datetime, elapsed_s: float,
           loads: tuple[tuple, tuple]) -> list[str]:
  """Markdown lines: date, machine, versions, method."""
  versions = ", ".join(f"{p} {importlib.metadata.version(p)}"
                       for p in ("memjax", "jax", "jaxlib", "transformers", "torch"))
  return [
      "# Decode and prefill speed, peak memory: budgeted memjax vs full caches",
      "",
      f"- Date: {started:%Y-%m-%d %H:%M} (total run time {elapsed_s / 60:.1f} min)",
      f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), {ram_gb():.1f} GiB RAM, "
      f"{platform.system()} {platform.release()}; load average (1/5/15 min) "
      f"{load_text(loads[0])} at start, {load_text(loads[1])} at the end: the machine is "
      "shared with other jobs, so absolute timings are noisy",
      f"- Versions: {versions}, Python {platform.python_version()}",
      f"- Model: {MODEL} (SmolLM2-135M-Instruct GGUF dequantized to float32), batch 1, "
      "greedy decoding",
      "- Text: the shipped `haystack` corpus (Persuasion), tokenized with the model's tokenizer; "
      "every run prefills the first N tokens.",
      "- Method: each configuration runs in its own process. It first warms up on the same "
      f"shapes (one {PREFILL_CHUNK}-token prefill chunk and {plan.warmup_steps} decode steps on "
      "a fresh cache of the same size), so compilation and first-call costs are excluded. "
      "Prefill tok/s = context tokens / wall time of the whole prefill "
      f"(memjax: chunks of {PREFILL_CHUNK} through the jitted chunk step, cache donated; "
      "transformers: one forward pass, logits of the last position only). "
      f"Decode ms/token = median over {plan.decode_steps} greedy steps right after the prefill "
      "(argmax + one model step + logits to host); decode min ms = the fastest of those steps "
      "(least disturbed by other jobs); load = the 1-minute load average when the run ended. "
      "JAX runs with its defaults; torch with its default threads (2) and "
      f"{', '.join(f'{k}={v}' for k, v in TORCH_ENV.items())}. "
      "Peak RSS = the process's `ru_maxrss`, which includes loading and dequantizing the "
      "weights, the warm-up and compilation; RSS at end = resident memory after the last decode "
      "step, with the model and its cache still alive.",
      "",
  ]


def fmt(value: float | None, digits: int) -> str:
  """`value` with `digits` decimals, or "n/a" for None."""
  return "n/a" if value is None else f"{value:.{digits}f}"


def runs_table(results: list[tuple[Run, dict | None]], max_positions: int) -> list[str]:
  """Markdown table of every run."""
  lines = ["| backend | policy | budget | context | prefill tok/s | decode ms/token | "
           "decode min ms | peak RSS MB | RSS at end MB | load (1 min) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for run, res in results:
    cells = [run.backend, run.policy, str(run.budget or "full"), str(run.context)]
    if res is None:
      cells += [f"n/a (exceeds the model's {max_positions} positions)"] + ["n/a"] * 5
    else:
      cells += [fmt(res["prefill_tok_s"], 0), fmt(res["decode_ms"], 1),
                fmt(res["decode_min_ms"], 1), fmt(res["rss_mb"], 0), fmt(res["end_rss_mb"], 0),
                fmt(res["load_1min"], 1)]
    lines.append("| " + " | ".join(cells) + " |")
  return lines + [""]


def lookup(results, backend: str, policy: str, context: int, key: str) -> float | None:
  """Field `key` of the matching run's result, None if it was not measured."""
  for run, res in results:
    if (run.backend, run.policy, run.context) == (backend, policy, context) and res:
      return res[key]
  return None


@dataclasses.dataclass(frozen=True)
class Ratio:
  """A target on a ratio of two runs' measurements.

  Attributes:
    name: what is compared, for the table.
    num, den: (backend, policy, context) of the numerator and denominator runs.
    keys: result fields compared: the official one (medians, peaks) and optionally a
      contention-robust one (per-run minima) shown alongside.
    target: upper bound the official ratio should meet.
  """

  name: str
  num: tuple[str, str, int]
  den: tuple[str, str, int]
  keys: tuple[str, str | None]
  target: float

  def value(self, results, key: str | None) -> float | None:
    """The ratio of field `key`, None if a run (or the key) is missing."""
    num = lookup(results, *self.num, key) if key else None
    den = lookup(results, *self.den, key) if key else None
    return None if num is None or den is None else num / den


def plan_ratios(plan: Plan) -> list[Ratio]:
  """The speed and memory targets of the plan."""
  k = lambda n: f"{n // 1024}k" if n % 1024 == 0 else str(n)
  decode, rss = ("decode_ms", "decode_min_ms"), ("rss_mb", None)
  ratios = [Ratio(f"decode ms/token: memjax {p} budget {BUDGET} / transformers full cache, "
                  f"at {k(plan.mid)}", ("memjax", p, plan.mid),
                  ("transformers", "full", plan.mid), decode, 0.8)
            for p in ("streaming", "h2o")]
  ratios += [Ratio(f"decode ms/token: memjax {p} budget {BUDGET}, {k(plan.long)} / "
                   f"{k(plan.short)}", ("memjax", p, plan.long), ("memjax", p, plan.short),
                   decode, 1.15) for p in ("streaming", "h2o")]
  return ratios + [Ratio(f"peak RSS: memjax streaming budget {BUDGET}, {k(plan.long)} / "
                         f"{k(plan.rss_short)}", ("memjax", "streaming", plan.long),
                         ("memjax", "streaming", plan.rss_short), rss, 1.15)]


def ratios_table(results, plan: Plan) -> list[str]:
  """Markdown table of the ratios with their targets; the verdict uses the official ratio."""
  lines = ["## Ratios (same run)", "",
           "Official ratios use the medians (decode) and peaks (RSS); the ratio of per-run "
           "minimum step times is shown as a check against load from other jobs.", "",
           "| ratio | measured | from minima | target | verdict |", "|---|---:|---:|---:|---|"]
  for ratio in plan_ratios(plan):
    value = ratio.value(results, ratio.keys[0])
    verdict = "n/a" if value is None else ("met" if value <= ratio.target else "not met")
    lines.append(f"| {ratio.name} | {fmt(value, 2)} | "
                 f"{fmt(ratio.value(results, ratio.keys[1]), 2)} | <= {ratio.target} | "
                 f"{verdict} |")
  return lines + [""]


def report(results, max_positions: int, plan: Plan, started, elapsed_s: float, loads) -> str:
  """The whole markdown report."""
  lines = header(plan, started, elapsed_s, loads)
  lines += ["## Runs", ""] + runs_table(results, max_positions) + ratios_table(results, plan)
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="contexts 512 and 1k, few decode steps; prints the report only")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help=f"markdown output (default {RESULTS}; none with --quick)")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  parser.add_argument("--ids", help=argparse.SUPPRESS)
  args = parser.parse_args()
  plan = QUICK_PLAN if args.quick else FULL_PLAN
  if args.one:
    run_one(Run(**json.loads(args.one)), args.ids, plan)
    return

  started, load, start = datetime.datetime.now(), os.getloadavg(), time.perf_counter()
  results, max_positions = measure_all(plan, args.quick)
  loads = (load, os.getloadavg())
  text = report(results, max_positions, plan, started, time.perf_counter() - start, loads)
  print(text)
  out = args.out or (None if args.quick else RESULTS)
  if out:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
  main()
