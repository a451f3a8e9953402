"""Budgeted generation: chunked prefill, optional question chunk, then token-by-token decode.

Works on token ids for a batch of rows of different lengths. Every step goes through
`step.jitted_chunk_step`, so the cache never holds more than its budget (plus one chunk
while that chunk is being inserted).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from memjax import checks
from memjax.cache import allocation as allocation_lib
from memjax.cache import budgets as budgets_lib
from memjax.cache import kv_cache
from memjax.cache.policies import Policy, get_policy
from memjax.generation import sampling, step
from memjax.models import llama
from memjax.models.config import ModelConfig
from memjax.sharding.inference import placed_chunk_step
from memjax.sharding.placement import Placement, traced_under

FULL_CAPACITY_QUANTUM = 256


def chunks(rows: Sequence[Sequence[int]], chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Split rows of token ids into aligned chunks: (tokens int32 [B, chunk], valid bool [B, chunk]).

  Row b's i-th chunk holds its tokens [i*chunk, (i+1)*chunk); shorter rows are padded at the end.
  """
  longest = max(len(r) for r in rows)
  for start in range(0, longest, chunk):
    tokens = np.zeros((len(rows), chunk), np.int32)
    valid = np.zeros((len(rows), chunk), bool)
    for b, row in enumerate(rows):
      piece = row[start:start + chunk]
      tokens[b, :len(piece)] = piece
      valid[b, :len(piece)] = True
    yield tokens, valid


def bucket(n: int, smallest: int = 16) -> int:
  """The power of two >= n (at least `smallest`): chunk lengths for short inserts, so that
  questions of different lengths share a few compilations."""
  return max(smallest, 1 << max(n - 1, 0).bit_length())


def resolve_budgets(cfg: ModelConfig, policy: Policy, budget: int | None, total_tokens: int,
                    schedule: budgets_lib.Schedule = "uniform") -> list[int]:
  """Per-layer slot counts for a run that will see at most `total_tokens` tokens per row.

  `full` ignores `budget` and holds everything (rounded up to a multiple of 256 tokens so
  that similar lengths share a compilation); it refuses sequences longer than the model's
  maximum positions. Other policies need an int budget larger than their protected slots;
  no layer gets more than `total_tokens` slots (all the sequence can ever hold), so a
  budget beyond the sequence costs no more than `full`. A sliding-window layer never gets
  more than its window (its ring of latest tokens, `kv_cache.ring_insert`); the budget and
  the policy's protected slots concern the global layers.
  """
  budget = checks.optional_integer("budget", budget, 1, "mean KV slots per layer")
  windows = [spec.window for spec in cfg.layer_plan()]
  cap = lambda slots: [slots_l if w is None else min(w, slots_l)
                       for slots_l, w in zip(slots, windows)]
  if policy.name == "full":
    if total_tokens > cfg.max_positions:
      raise ValueError(
          f"{total_tokens} tokens (prompt + question + new tokens) exceed the model's maximum "
          f"of {cfg.max_positions} positions; shorten the prompt or use a budgeted policy "
          f"such as policy='streaming'")
    capacity = FULL_CAPACITY_QUANTUM * math.ceil(total_tokens / FULL_CAPACITY_QUANTUM)
    return cap([min(capacity, cfg.max_positions)] * cfg.n_layers)
  if budget is None:
    raise ValueError(f"policy {policy.name!r} needs a budget (KV slots per layer), e.g. budget=256")
  per_layer = budgets_lib.layer_budgets(budget, cfg.n_layers, schedule)
  global_slots = [slots for slots, w in zip(per_layer, windows) if w is None]
  smallest = min(global_slots, default=None)
  if smallest is not None and policy.protected_slots(smallest) >= smallest:
    protected = policy.protected_slots(smallest)
    raise ValueError(
        f"budget too small: policy {policy.name!r} protects {protected} slots but a layer gets "
        f"only {smallest} (budget={budget}, schedule={schedule!r}); use a budget of at least "
        f"{protected + 1} slots per layer in every layer, or shrink the policy's protected window")
  return cap([min(slots, total_tokens) for slots in per_layer])


def _first_logits(chunk_fn, params, cache, rows, chunk_len, marks=None, progress=False):
  """Feed rows through in chunks; return each row's logits after its last token, and the cache.

  `marks` (rows of 0/1 flags like `rows`) go with the tokens, chunk by chunk, for a policy
  that reads them (`uses_marks`); None for every other policy. `progress`: a bar over the
  chunks.
  """
  last_logits = None
  mark_chunks = chunks(marks, chunk_len) if marks is not None else None
  n_chunks = math.ceil(max(len(r) for r in rows) / chunk_len)
  for tokens, valid in tqdm(chunks(rows, chunk_len), total=n_chunks, desc="prefill",
                            unit="chunk", disable=not progress):
    extra = () if mark_chunks is None else (None, next(mark_chunks)[0])
    logits, cache = chunk_fn(params, cache, tokens, valid, *extra)
    logits = np.asarray(logits)
    has_tokens = valid.any(axis=1)[:, None]
    last_logits = logits if last_logits is None else np.where(has_tokens, logits, last_logits)
  return last_logits, cache


def _prefill_and_compress(params, cfg: ModelConfig, policy: Policy, prompts, encode,
                          per_layer: list[int], room: int, prefill_chunk: int,
                          progress: bool = False):
  """Prefill `prompts` into a cache that holds them whole, score them, then keep
  `per_layer[l]` slots of layer l with `room` free slots after them (for the question and
  new tokens). Returns (last logits, cache).

  A `compresses_once` policy is prefilled like `full` and scored by its own reconstruction
  passes (they attend and are observed, never cached); any other policy is prefilled under
  itself, so that it observes every chunk as usual, but nothing is evicted before the end.
  """
  full = get_policy("full")
  capacity = resolve_budgets(cfg, full, None, max(len(p) for p in prompts) + room)
  cache = kv_cache.init_cache(capacity, len(prompts), cfg.n_kv_heads, cfg.head_dim,
                              cfg.jnp_dtype)
  prefill_policy = full if policy.compresses_once else policy
  logits, cache = _first_logits(step.jitted_chunk_step(cfg, prefill_policy, "last_logits"),
                                params, cache, prompts, prefill_chunk, progress=progress)
  if policy.compresses_once:
    passes = [policy.reconstruction_rows(list(p), encode) for p in prompts]
    longest = max(len(r) for rows in passes for r in rows)
    score = step.jitted_scoring_pass(cfg, policy)
    for i in range(max(len(rows) for rows in passes)):
      tokens, valid = next(chunks([rows[i] if i < len(rows) else [] for rows in passes],
                                  longest))
      cache = score(params, cache, tokens, valid)
  return logits, step.compress(cache, policy, per_layer, room, cfg.layer_plan())


def generate_ids(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *,
                 policy: str | Policy = "full", budget: int | None = None,
                 budget_schedule: budgets_lib.Schedule = "uniform",
                 questions: Sequence[Sequence[int]] | None = None, max_new_tokens: int = 32,
                 prefill_chunk: int = 512, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0,
                 eos_id: int | None = None, progress: bool = False, stream: bool = False,
                 placement: Placement | None = None,
                 marks: Sequence[Sequence[int]] | None = None,
                 encode: Callable[[str], list[int]] | None = None,
                 compress_once: bool = False,
                 allocation: allocation_lib.Allocation = "uniform",
                 floor: float = allocation_lib.DEFAULT_FLOOR,
                 layer_group: int | None = None) -> list[list[int]]:
  """Generate continuations for a batch of prompts under a KV budget.

  Args:
    prompts: B rows of token ids (lengths may differ).
    policy: a registered policy name or instance.
    budget: mean KV slots per layer (ignored by `full`).
    questions: optional B rows appended after the prompt has been compressed
      (query-agnostic protocol); they are inserted as one extra chunk.
    max_new_tokens: tokens generated per row; a row stops early at `eos_id`.
    prefill_chunk: tokens per prefill chunk C (peak cache = budget + C per layer).
    temperature, top_k, top_p: sampling (`sampling.Sampler`): temperature 0 is greedy;
      with a `seed` the tokens are reproducible, streamed or not.
    progress: a progress bar over the prefill chunks.
    stream: return an iterator that yields each step's tokens as they come (a list of B
      ids, None for a row that has stopped) instead of running every decode step on the
      device in one `lax.while_loop`; the tokens are the same.
    placement: run prefill and decode on its mesh under its logical axis rules (one
      process; `memjax.sharding.placement.Placement.of(MeshConfig())`): the cache split over
      batch rows and KV heads, params by their logical axes. None or no mesh: one device.
    marks: for the `oracle` policy (the only one that reads them): B rows of 0/1 flags, one
      per prompt token; marked tokens are kept whatever the budget. Question and generated
      tokens are unmarked. One device only.
    encode: text -> token ids, for a policy that writes its own prompt (`kvzip`'s
      reconstruction instruction); the tokenizer's `encode`.
    compress_once: kvpress's protocol for any policy: prefill the whole prompt (the
      policy observing every chunk), keep `budget` slots per layer once at its end, and
      append the question and new tokens on top of them, evicting nothing more (one device
      only; `full` is unchanged by it). Always on for a `compresses_once` policy (`kvzip`,
      which also scores the prompt with its own reconstruction passes). By default (False)
      the cache holds `budget` slots throughout: eviction at every prefill chunk, at the
      question and at every new token.
    allocation: "uniform" (every KV head keeps its own `budget` slots per layer);
      "heads": a layer's budget x Hkv slots are one pool its KV heads share; "layers": the
      global layers' slots are one pool per KV head, shared by groups of `layer_group`
      layers (None: all of them), evicted once per chunk. Every member of a pool (a head,
      a layer) keeps at least `floor` of its share (`memjax.cache.allocation`); the memory
      is the uniform cache's plus one id per slot. One device; not with `compress_once`; a
      policy that never evicts ignores it.

  Returns:
    B lists of generated ids (without the prompt; the EOS token is not included), or with
    `stream` an iterator of per-step lists.
  """
  prompts = checks.token_rows(prompts, cfg.vocab_size, "prompt")
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  if questions is not None:
    questions = checks.token_rows(questions, cfg.vocab_size, "question")
    if len(questions) != len(prompts):
      raise ValueError(f"give one question per prompt (an empty one where there is none): "
                       f"got {len(questions)} question(s) for {len(prompts)} prompt(s)")
  max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1, "tokens to generate")
  prefill_chunk = checks.integer("prefill_chunk", prefill_chunk, 1, "tokens per prefill chunk")
  sampler = sampling.Sampler(temperature, top_k, top_p).checked()
  seed = checks.integer("seed", seed, 0)
  eos_id = checks.optional_integer("eos_id", eos_id, 0)
  policy = get_policy(policy)
  if policy.uses_marks and marks is None:
    raise ValueError(f"policy {policy.name!r} needs marks= (0/1 per prompt token)")
  if marks is not None and [len(m) for m in marks] != [len(p) for p in prompts]:
    raise ValueError("marks need one row per prompt with one flag per prompt token")
  placement = placement or Placement()
  mesh = placement.mesh
  if marks is not None and mesh is not None:
    raise ValueError("marks (the oracle policy) run on one device; leave placement unset")
  pooling = allocation_lib.Pooling(allocation, floor, layer_group).checked()
  compress_once = (compress_once and policy.evicts) or policy.compresses_once
  if pooling.mode != "uniform" and policy.evicts and (compress_once or mesh is not None):
    raise ValueError(f"allocation={allocation!r} evicts at every chunk on one device: leave "
                     f"placement unset and compress_once off (policy {policy.name!r})")
  if policy.compresses_once and encode is None:
    raise ValueError(f"policy {policy.name!r} writes its own reconstruction prompt: pass "
                     "encode=tokenizer.encode")
  if compress_once and (mesh is not None or policy.uses_marks):
    raise ValueError(f"compressing once after prefill (policy {policy.name!r}) runs on one "
                     "device and reads no marks: leave placement and marks unset")
  params = llama.per_layer(params)
  batch = len(prompts)
  longest_question = max((len(q) for q in questions), default=0) if questions else 0
  total = max(len(p) for p in prompts) + longest_question + max_new_tokens
  per_layer = resolve_budgets(cfg, policy, budget, total, budget_schedule)
  unmarked = lambda rows: [[0] * len(r) for r in rows] if policy.uses_marks else None
  if compress_once:
    logits, cache = _prefill_and_compress(params, cfg, policy, prompts, encode, per_layer,
                                          total - max(len(p) for p in prompts), prefill_chunk,
                                          progress)
    # the compressed prompt is kept as it is: what follows is appended, nothing scored
    chunk_fn = step.jitted_chunk_step(cfg, get_policy("full"), "last_logits")
  else:
    cache = allocation_lib.arrange(
        kv_cache.init_cache(per_layer, batch, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_dtype),
        pooling, policy, cfg.layer_plan())
    chunk_fn, params, cache = placed_chunk_step(cfg, policy, params, cache, "last_logits",
                                                placement, pooling)
    logits, cache = _first_logits(chunk_fn, params, cache, prompts, prefill_chunk,
                                  marks if policy.uses_marks else None, progress)
  if questions is not None and longest_question:
    q_logits, cache = _first_logits(chunk_fn, params, cache, questions, bucket(longest_question),
                                    unmarked(questions))
    has_question = np.array([len(q) > 0 for q in questions])[:, None]
    logits = np.where(has_question, q_logits, logits)

  key = jax.random.key(seed)
  if stream or mesh is not None:
    steps = _host_decode(chunk_fn, params, cache, logits, key, sampler, max_new_tokens,
                         eos_id, policy.uses_marks)
    if stream:
      return steps
    out = [[] for _ in range(batch)]
    for tokens in steps:
      for row, token in zip(out, tokens):
        if token is not None:
          row.append(token)
    return out
  decode = jitted_decode(cfg, get_policy("full") if compress_once else policy, sampler, eos_id,
                         bucket(max_new_tokens), pooling)
  tokens_BxN = np.asarray(decode(params, cache, logits, key, max_new_tokens))
  return [[int(t) for t in row if t >= 0] for row in tokens_BxN]


@functools.lru_cache(maxsize=32)
def jitted_decode(cfg: ModelConfig, policy: Policy, sampler: sampling.Sampler,
                  eos_id: int | None, slots: int,
                  pooling: allocation_lib.Pooling = allocation_lib.Pooling()):
  """Decode on the device: (params, cache, logits_BxV, key, n) -> int32 [B, slots], the n
  (<= slots) tokens of every row (-1 after a row's EOS and past n), every step inside one
  `lax.while_loop` that stops early once every row has stopped.

  A policy that never evicts appends the new tokens to a tail of `slots` slots while the
  prompt's cache is only read (`kv_cache.ModelCache.tail`).
  """
  appends = step.appending_layers(cfg, policy)
  one_step = functools.partial(step.chunk_step, cfg=cfg, policy=policy, output="last_logits",
                               pooling=pooling)

  def decode(params, cache, logits_BxV, key, n_steps):
    b = logits_BxV.shape[0]
    if any(appends):
      cache = kv_cache.with_tail(cache, slots, appends)
    marks = (None, jnp.zeros((b, 1), jnp.int32)) if policy.uses_marks else ()

    def pick(i, logits, done_B, out_BxN):
      token_B, done_B = _pick(logits, key, i, sampler, eos_id, done_B)
      return token_B, done_B, out_BxN.at[:, i].set(jnp.where(done_B, -1, token_B))

    def body(carry):
      i, cache, logits, done_B, out_BxN = carry
      token_B, done_B, out_BxN = pick(i, logits, done_B, out_BxN)
      logits, cache = one_step(params, cache, token_B[:, None], ~done_B[:, None], *marks)
      return i + 1, cache, logits, done_B, out_BxN

    def more(carry):
      i, _, _, done_B, _ = carry
      return (i < n_steps - 1) & ~jnp.all(done_B)

    start = (jnp.int32(0), cache, logits_BxV, jnp.zeros((b,), bool),
             jnp.full((b, slots), -1, jnp.int32))
    i, _, logits, done_B, out_BxN = jax.lax.while_loop(more, body, start)
    return pick(i, logits, done_B, out_BxN)[2]

  return jax.jit(traced_under(Placement(), decode))


def _pick(logits_BxV, key, i, sampler: sampling.Sampler, eos_id: int | None, done_B):
  """Step i's token of every row and which rows have stopped (now or before)."""
  token_B = sampling.sample(logits_BxV, jax.random.fold_in(key, i), sampler)
  return token_B, (done_B | (token_B == eos_id)) if eos_id is not None else done_B


@functools.lru_cache(maxsize=32)
def _jitted_pick(sampler: sampling.Sampler, eos_id: int | None):
  return jax.jit(functools.partial(_pick, sampler=sampler, eos_id=eos_id))


def _host_decode(chunk_fn, params, cache, logits, key, sampler, max_new_tokens, eos_id,
                 uses_marks) -> Iterator[list[int | None]]:
  """The decode steps one call at a time, yielding each step's tokens (None for a row that
  has stopped); the same tokens as `jitted_decode` (same sampler, same keys)."""
  pick = _jitted_pick(sampler, eos_id)
  done = jnp.zeros((len(logits),), bool)
  for i in range(max_new_tokens):
    token, done = pick(logits, key, jnp.int32(i), done_B=done)
    token_B, done_B = np.asarray(token), np.asarray(done)
    yield [None if d else int(t) for t, d in zip(token_B, done_B)]
    if done_B.all() or i == max_new_tokens - 1:
      return
    step_marks = (None, np.zeros((len(token_B), 1), np.int32)) if uses_marks else ()
    logits, cache = chunk_fn(params, cache, token_B[:, None], ~done_B[:, None], *step_marks)
