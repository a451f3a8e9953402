"""Prefill and decode speed, and peak memory, of budgeted generation against a full cache.

SmolLM2-135M in float32, batch 1, on real prose (the shipped "haystack" corpus). Each
configuration runs in its own process so that its peak RSS is its own:

  memjax   streaming and h2o at budget 512, and the full cache (`full`);
  transformers (the oracle) with its own full cache, from the same GGUF weights;
  batched   memjax decode throughput at 4k for batches of 4 and 16 rows, full cache
            against budgets 512 and 256 (the cache filled to 4k with synthetic keys: decode
            cost does not depend on their values), and the largest batch whose KV cache
            fits 2 GiB.

Every run first warms up on the same shapes (one prefill chunk and a few decode steps on a
fresh cache of the same size), so compilation is excluded from the timings. Then it prefills
the whole context (timed as one block) and decodes greedily: all steps in memjax's
on-device loop (`generate.jitted_decode`, the default of `generate`), and again one step per
call to time each step. The parent also measures the machine's read bandwidth, which gives
the weight-read floor of a decode step (bytes of weights / bandwidth).

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
  batch: int = 1

  @property
  def label(self) -> str:
    return (f"{self.backend} {self.policy} budget={self.budget or 'full'} "
            f"context={self.context} batch={self.batch}")


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
  batches: tuple[int, ...] = (4, 16)


FULL_PLAN = Plan(contexts=(1024, 4096, 8000, 16384), extra_stream_contexts=(2048,),
                 decode_steps=32, warmup_steps=4, short=1024, mid=4096, long=16384,
                 rss_short=2048)
QUICK_PLAN = Plan(contexts=(512, 1024), extra_stream_contexts=(), decode_steps=6,
                  warmup_steps=2, short=512, mid=1024, long=1024, rss_short=512, batches=(2,))
KV_MEMORY = 2 * 1024**3  # the fixed KV memory of "the largest batch that fits"


def plan_runs(plan: Plan) -> list[Run]:
  """Every configuration of the plan, ordered by context, then the batched runs."""
  runs = [Run("memjax", "streaming", BUDGET, c) for c in plan.extra_stream_contexts]
  for c in plan.contexts:
    runs += [Run("memjax", "streaming", BUDGET, c), Run("memjax", "h2o", BUDGET, c),
             Run("memjax", "full", None, c), Run("transformers", "full", None, c)]
  batched = [Run("memjax", policy, budget, plan.mid, b) for b in plan.batches
             for policy, budget in (("full", None), ("streaming", BUDGET),
                                    ("streaming", BUDGET // 2))]
  batched.append(Run("memjax", "streaming", BUDGET // 2, plan.mid))  # batch 1 of budget 256
  return sorted(runs, key=lambda r: r.context) + batched


def peak_rss_mb() -> float:
  """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
  """This process's resident set size now, in MiB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def summary(n_tokens: int, prefill_s: float, step_ms: list[float],
            loop_ms: float | None = None) -> dict:
  """Result of one run, taken while its model and cache are still alive. `decode_ms` is
  the on-device loop's ms per token where there is one, else the median step."""
  return {"prefill_tok_s": n_tokens / prefill_s if prefill_s else None,
          "decode_ms": float(np.median(step_ms)) if loop_ms is None else loop_ms,
          "step_ms": float(np.median(step_ms)), "decode_min_ms": float(np.min(step_ms)),
          "end_rss_mb": current_rss_mb(), "load_1min": os.getloadavg()[0]}


# --- memjax --------------------------------------------------------------------------------


def memjax_prefill(step_fn, params, cache, ids):
  """Feed `ids` in chunks of PREFILL_CHUNK; (host logits [1, V] after the last token, cache)."""
  from memjax.generation import generate
  logits = None
  for tokens, valid in generate.chunks([ids], PREFILL_CHUNK):
    logits, cache = step_fn(params, cache, tokens, valid)
  return np.asarray(logits), cache


def memjax_decode(step_fn, params, logits, cache, steps: int):
  """Greedy decode for `steps` tokens one call per step; (wall ms of each step: argmax on
  the host + one model step + logits to host; cache)."""
  valid = np.ones((len(logits), 1), bool)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    token_B = np.argmax(logits, axis=-1).astype(np.int32)
    logits, cache = step_fn(params, cache, token_B[:, None], valid)
    logits = np.asarray(logits)
    times.append(1e3 * (time.perf_counter() - start))
  return times, cache


def memjax_loop_ms(cfg, policy, params, logits, cache, steps: int) -> float:
  """ms per token of `steps` greedy tokens in the on-device decode loop (compiled already
  when called a second time with the same shapes)."""
  import jax

  from memjax.generation import generate, sampling
  decode = generate.jitted_decode(cfg, policy, sampling.Sampler(), None, generate.bucket(steps))
  start = time.perf_counter()
  np.asarray(decode(params, cache, logits, jax.random.key(0), steps))
  return 1e3 * (time.perf_counter() - start) / steps


def synthetic_cache(cfg, budgets, batch: int, context: int):
  """A cache holding `context` tokens per row (the latest ones where a layer holds fewer),
  with random keys and values: decode cost does not depend on them."""
  import jax
  import jax.numpy as jnp

  from memjax.cache import kv_cache
  cache = kv_cache.init_cache(budgets, batch, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_dtype)
  key = jax.random.key(0)
  layers = []
  for layer in cache.layers:
    slots = jnp.arange(layer.capacity)
    pos = jnp.where(slots < context, slots + max(context - layer.capacity, 0), -1)
    layers.append(layer._replace(k=0.1 * jax.random.normal(key, layer.k.shape),
                                 v=0.1 * jax.random.normal(key, layer.v.shape),
                                 pos=jnp.broadcast_to(pos.astype(jnp.int32), layer.pos.shape)))
  return kv_cache.ModelCache(tuple(layers), jnp.full((batch,), context, jnp.int32))


def bench_memjax(run: Run, ids: list[int], plan: Plan) -> dict:
  """Prefill tokens/s and decode ms/token of one memjax configuration (batched runs: decode
  only, from a synthetic cache)."""
  import memjax
  from memjax.cache import kv_cache
  from memjax.cache.policies import get_policy
  from memjax.generation import generate, step
  from memjax.models import llama

  lm = memjax.load(MODEL)
  cfg, policy, params = lm.cfg, get_policy(run.policy), llama.per_layer(lm.params)
  budgets = generate.resolve_budgets(cfg, policy, run.budget, len(ids) + plan.decode_steps)
  step_fn = step.jitted_chunk_step(cfg, policy, "last_logits")
  if run.batch > 1:
    logits = np.zeros((run.batch, cfg.vocab_size), np.float32)
    fresh = lambda: synthetic_cache(cfg, budgets, run.batch, len(ids))
    memjax_decode(step_fn, params, logits, fresh(), plan.warmup_steps)
    memjax_loop_ms(cfg, policy, params, logits, fresh(), plan.decode_steps)
    loop_ms = memjax_loop_ms(cfg, policy, params, logits, fresh(), plan.decode_steps)
    times, cache = memjax_decode(step_fn, params, logits, fresh(), plan.decode_steps)
    return summary(len(ids), 0.0, times, loop_ms)

  def fresh_cache():
    return kv_cache.init_cache(budgets, 1, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_dtype)

  warm_logits, warm_cache = memjax_prefill(step_fn, params, fresh_cache(), ids[:PREFILL_CHUNK])
  memjax_decode(step_fn, params, warm_logits, warm_cache, plan.warmup_steps)
  start = time.perf_counter()
  logits, cache = memjax_prefill(step_fn, params, fresh_cache(), ids)
  prefill_s = time.perf_counter() - start
  memjax_loop_ms(cfg, policy, params, logits, cache, plan.decode_steps)  # compiles
  loop_ms = memjax_loop_ms(cfg, policy, params, logits, cache, plan.decode_steps)
  times, cache = memjax_decode(step_fn, params, logits, cache, plan.decode_steps)
  return summary(len(ids), prefill_s, times, loop_ms)  # `cache` is alive: it counts in RSS


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


COMPILE_POLICY = "snapkv"


def compile_times(plan: Plan) -> None:
  """Child process: seconds to compile (and run once) the prefill-chunk step and the decode
  loop of COMPILE_POLICY at budget BUDGET, uniform then pyramid budgets, on a fresh jit cache
  each; prints one result line."""
  import jax

  import memjax
  from memjax.cache import kv_cache
  from memjax.cache.policies import get_policy
  from memjax.generation import generate, sampling, step
  from memjax.models import llama
  lm = memjax.load(MODEL)
  cfg, policy, params = lm.cfg, get_policy(COMPILE_POLICY), llama.per_layer(lm.params)
  tokens, valid = next(generate.chunks([list(range(PREFILL_CHUNK))], PREFILL_CHUNK))
  result = {}
  for schedule in ("uniform", "pyramid"):
    budgets = generate.resolve_budgets(cfg, policy, BUDGET, plan.mid, schedule)
    cache = kv_cache.init_cache(budgets, 1, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_dtype)
    start = time.perf_counter()
    logits, cache = step.jitted_chunk_step(cfg, policy, "last_logits")(params, cache, tokens,
                                                                       valid)
    np.asarray(logits)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    loop = generate.jitted_decode(cfg, policy, sampling.Sampler(), None, 4)
    np.asarray(loop(params, cache, np.asarray(logits), jax.random.key(0), 4))
    result[schedule] = {"prefill_s": prefill_s, "decode_s": time.perf_counter() - start,
                        "distinct_budgets": len(set(budgets))}
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def compile_table(plan: Plan, quick: bool) -> list[str]:
  """Markdown lines: compile seconds of uniform and pyramid budgets (a child process)."""
  cmd = [sys.executable, __file__, "--compile"] + (["--quick"] if quick else [])
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True,
                        env=dict(os.environ, **CHILD_ENV))
  line = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)][-1]
  result = json.loads(line[len(RESULT_PREFIX):])
  lines = ["## Compilation", "",
           f"Seconds to compile and run once, {COMPILE_POLICY} at a mean budget of {BUDGET} "
           f"slots per layer ({PREFILL_CHUNK}-token prefill chunk; decode loop of 4 steps). "
           "Every layer owns its cache and the blocks are unrolled, so any per-layer budgets "
           "compile one program of each kind.", "",
           "| budgets | distinct layer budgets | prefill chunk step s | decode loop s |",
           "|---|---:|---:|---:|"]
  for schedule, r in result.items():
    lines.append(f"| {schedule} | {r['distinct_budgets']} | {r['prefill_s']:.1f} | "
                 f"{r['decode_s']:.1f} |")
  return lines + [""]


def run_one(run: Run, ids_path: str, plan: Plan) -> None:
  """Child process: measure `run` and print its result (with this process's peak RSS)."""
  ids = np.load(ids_path)[:run.context].tolist()
  bench = bench_memjax if run.backend == "memjax" else bench_transformers
  result = bench(run, ids, plan)
  result["rss_mb"] = peak_rss_mb()
  result["batch"] = run.batch
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
      tqdm.write(f"   prefill {fmt(result['prefill_tok_s'], 0)} tok/s, decode "
                 f"{result['decode_ms']:.1f} ms/step, peak RSS {result['rss_mb']:.0f} MB",
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
      f"- Model: {MODEL} (SmolLM2-135M-Instruct GGUF dequantized to float32), greedy "
      "decoding; batch 1 unless the batch column says otherwise",
      "- Text: the shipped `haystack` corpus (Persuasion), tokenized with the model's tokenizer; "
      "every run prefills the first N tokens.",
      "- Method: each configuration runs in its own process. It first warms up on the same "
      f"shapes (one {PREFILL_CHUNK}-token prefill chunk and {plan.warmup_steps} decode steps on "
      "a fresh cache of the same size), so compilation and first-call costs are excluded. "
      "Prefill tok/s = context tokens / wall time of the whole prefill "
      f"(memjax: chunks of {PREFILL_CHUNK} through the jitted chunk step, cache donated; "
      "transformers: one forward pass, logits of the last position only). "
      f"Decode ms/step = wall time of {plan.decode_steps} greedy steps in memjax's on-device "
      "loop (one call, compiled beforehand) / steps; transformers: the median of its steps "
      "(argmax + one model step). A call per step: memjax's jitted chunk step called once per "
      "token with argmax on the host, median and fastest step (the fastest is least "
      "disturbed by other jobs); decode tok/s = batch x 1000 / ms per step; load = the "
      "1-minute load average when the run ended. "
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
  lines = ["| backend | policy | budget | context | batch | prefill tok/s | decode ms/step | "
           "decode tok/s | ms/step, a call per step (median / min) | peak RSS MB | "
           "RSS at end MB | load (1 min) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for run, res in results:
    if run.backend == "floor":
      continue
    cells = [run.backend, run.policy, str(run.budget or "full"), str(run.context),
             str(run.batch)]
    if res is None:
      cells += [f"n/a (exceeds the model's {max_positions} positions)"] + ["n/a"] * 6
    else:
      cells += [fmt(res["prefill_tok_s"], 0) if res["prefill_tok_s"] else "(synthetic cache)",
                fmt(res["decode_ms"], 1), fmt(1e3 * run.batch / res["decode_ms"], 1),
                f"{res['step_ms']:.1f} / {res['decode_min_ms']:.1f}", fmt(res["rss_mb"], 0),
                fmt(res["end_rss_mb"], 0), fmt(res["load_1min"], 1)]
    lines.append("| " + " | ".join(cells) + " |")
  return lines + [""]


def lookup(results, backend: str, policy: str, context: int, key: str, budget="any",
           batch: int = 1) -> float | None:
  """Field `key` of the matching run's result, None if it was not measured."""
  for run, res in results:
    if ((run.backend, run.policy, run.context, run.batch) == (backend, policy, context, batch)
        and budget in ("any", run.budget) and res and res.get(key) is not None):
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
  num: tuple
  den: tuple
  keys: tuple[str, str | None]
  target: float
  den_keys: tuple[str, str | None] | None = None  # the denominator's fields, if others

  def value(self, results, which: int) -> float | None:
    """The ratio of the `which`-th field pair, None if a run (or the field) is missing."""
    key, den_key = self.keys[which], (self.den_keys or self.keys)[which]
    num = lookup(results, *self.num[:3], key, *self.num[3:]) if key else None
    den = lookup(results, *self.den[:3], den_key, *self.den[3:]) if den_key else None
    return None if num is None or den is None else num / den


def plan_ratios(plan: Plan) -> list[Ratio]:
  """The speed and memory targets of the plan (issue targets; a >= target is written as the
  inverse ratio <= 1 / target)."""
  k = lambda n: f"{n // 1024}k" if n % 1024 == 0 else str(n)
  decode, rss = ("decode_ms", "decode_min_ms"), ("rss_mb", None)
  stream = lambda c, b=1, budget=BUDGET: ("memjax", "streaming", c, budget, b)
  hf = ("transformers", "full", plan.mid)
  ratios = [Ratio(f"decode: memjax streaming budget {BUDGET} / weight-read floor, at "
                  f"{k(plan.mid)}", stream(plan.mid), ("floor", "weights", 0), decode, 1.2,
                  ("decode_ms", "decode_ms"))]
  ratios += [Ratio(f"decode: memjax {p} budget {BUDGET} / transformers full cache, at "
                   f"{k(plan.mid)}", ("memjax", p, plan.mid), hf, decode, 0.5)
             for p in ("streaming", "h2o")]
  ratios += [Ratio(f"decode: memjax full cache / transformers full cache, at {k(c)}",
                   ("memjax", "full", c), ("transformers", "full", c), decode, 1.0)
             for c in plan.contexts if c <= 8192]
  ratios += [Ratio(f"prefill time of {k(plan.mid)} tokens: memjax {p} / transformers",
                   hf, ("memjax", p, plan.mid), ("prefill_tok_s", None), 0.8)
             for p in ("full", "streaming")]
  ratios += [Ratio(f"decode: memjax streaming budget {BUDGET}, {k(plan.long)} / "
                   f"{k(plan.short)}", stream(plan.long), stream(plan.short), decode, 1.1),
             Ratio(f"peak RSS: memjax streaming budget {BUDGET}, {k(plan.long)} / "
                   f"{k(plan.rss_short)}", stream(plan.long), stream(plan.rss_short), rss, 1.15)]
  b = max(plan.batches)
  return ratios + [Ratio(f"batch {b} at {k(plan.mid)}: ms/step of streaming budget {budget} / "
                         f"full cache (tokens/s >= 3x full)", stream(plan.mid, b, budget),
                         ("memjax", "full", plan.mid, None, b), decode, 1 / 3)
                   for budget in (BUDGET, BUDGET // 2)]


def ratios_table(results, plan: Plan) -> list[str]:
  """Markdown table of the ratios with their targets; the verdict uses the official ratio."""
  lines = ["## Ratios (same run)", "",
           "Official ratios use the on-device loop's ms per step (decode), prefill tokens/s "
           "and peak RSS; the ratio of per-run minimum step times (a call per step) is shown "
           "as a check against load from other jobs.", "",
           "| ratio | measured | from minima | target | verdict |", "|---|---:|---:|---:|---|"]
  for ratio in plan_ratios(plan):
    value = ratio.value(results, 0)
    verdict = "n/a" if value is None else ("met" if value <= ratio.target else "not met")
    lines.append(f"| {ratio.name} | {fmt(value, 2)} | "
                 f"{fmt(ratio.value(results, 1), 2)} | <= {ratio.target:.3g} | {verdict} |")
  return lines + [""]


def read_bandwidth_gb_s() -> float:
  """The best of 5 jitted sums over 1 GiB of float32 (JAX's threads): bytes read per s."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((256 * 1024 * 1024,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    total(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return a.nbytes / best / 1e9


def floor_and_kv(plan: Plan) -> tuple[float, float, list[str]]:
  """(weight bytes, weight-read floor ms of one decode step, markdown lines on the floor
  and on the largest batch whose cache fits KV_MEMORY)."""
  import jax

  import memjax
  from memjax.cache import kv_cache
  from memjax.cache.policies import get_policy
  from memjax.generation import generate
  lm = memjax.load(MODEL)
  cfg = lm.cfg
  weight_bytes = sum(a.nbytes for a in jax.tree.leaves(lm.params))
  bandwidth = read_bandwidth_gb_s()
  floor_ms = 1e3 * weight_bytes / (bandwidth * 1e9)
  lines = ["## Weight-read floor and KV memory", "",
           f"- Weights: {weight_bytes / 1e6:.0f} MB read per decode step (float32, every "
           f"parameter once; the tied embedding is the output projection). Read bandwidth "
           f"measured here: {bandwidth:.1f} GB/s (best of 5 jitted sums over 1 GiB). "
           f"Floor: {floor_ms:.1f} ms per decode step.", "",
           f"| cache at {plan.mid} tokens | KV bytes per row | largest batch in "
           f"{KV_MEMORY / 1024**3:.0f} GiB | vs full |", "|---|---:|---:|---:|"]
  full_rows = None
  for policy, budget in (("full", None), ("streaming", BUDGET), ("streaming", BUDGET // 2)):
    budgets = generate.resolve_budgets(cfg, get_policy(policy), budget,
                                       plan.mid + plan.decode_steps)
    shapes = jax.eval_shape(lambda: kv_cache.init_cache(budgets, 1, cfg.n_kv_heads,
                                                        cfg.head_dim, cfg.jnp_dtype))
    per_row = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes.layers))
    rows = KV_MEMORY // per_row
    full_rows = full_rows or rows
    lines.append(f"| {policy} {budget or ''} | {per_row / 1e6:.1f} MB | {rows} | "
                 f"{rows / full_rows:.1f}x |")
  return weight_bytes, floor_ms, lines + [""]


def report(results, max_positions: int, plan: Plan, started, elapsed_s: float, loads,
           floor_lines: list[str]) -> str:
  """The whole markdown report."""
  lines = header(plan, started, elapsed_s, loads)
  lines += ["## Runs", ""] + runs_table(results, max_positions) + floor_lines
  return "\n".join(lines + ratios_table(results, plan))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="contexts 512 and 1k, few decode steps; prints the report only")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help=f"markdown output (default {RESULTS}; none with --quick)")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  parser.add_argument("--ids", help=argparse.SUPPRESS)
  parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  plan = QUICK_PLAN if args.quick else FULL_PLAN
  if args.compile:
    compile_times(plan)
    return
  if args.one:
    run_one(Run(**json.loads(args.one)), args.ids, plan)
    return

  started, load, start = datetime.datetime.now(), os.getloadavg(), time.perf_counter()
  results, max_positions = measure_all(plan, args.quick)
  # after the runs: a child forked from a parent that holds the model would inherit its RSS
  _, floor_ms, floor_lines = floor_and_kv(plan)
  floor_lines += compile_table(plan, args.quick)
  results.append((Run("floor", "weights", None, 0), {"decode_ms": floor_ms}))
  loads = (load, os.getloadavg())
  text = report(results, max_positions, plan, started, time.perf_counter() - start, loads,
                floor_lines)
  print(text)
  out = args.out or (None if args.quick else RESULTS)
  if out:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
  main()
