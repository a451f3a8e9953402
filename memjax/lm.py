"""`LanguageModel`: a loaded checkpoint with its tokenizer, and the public entry points."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np

from memjax import checks
from memjax.cache import budgets as budgets_lib
from memjax.cache.policies import Policy, policy_names
from memjax.generation.generate import generate_ids
from memjax.models import llama
from memjax.models.config import ModelConfig


@dataclasses.dataclass
class LanguageModel:
  """A decoder's config, parameters and tokenizer.

  Attributes:
    cfg: the model's shapes and numerics.
    params: parameter pytree in the per-layer inference layout (`memjax.models.llama.per_layer`:
      each layer's weights their own buffers, as generation reads them).
    tokenizer: has `encode(str) -> list[int]` and `decode(list[int]) -> str`.
    name: where it was loaded from.
  """

  cfg: ModelConfig
  params: llama.Params
  tokenizer: Any
  name: str = ""

  def logits(self, ids_BxT) -> np.ndarray:
    """float32 [B, T, V] logits with full causal attention (no cache, no eviction).

    Args:
      ids_BxT: token ids [B, T] (an int array or B lists of one length), or one row [T].

    Raises:
      TypeError: the ids are not integers.
      ValueError: an id outside the vocabulary, rows of different lengths, no tokens, or
        more tokens than the model's maximum positions.
    """
    rows = checks.token_rows(ids_BxT if _holds_rows(ids_BxT) else [ids_BxT],
                             self.cfg.vocab_size, "row")
    lengths = sorted({len(row) for row in rows})
    if len(lengths) > 1:
      raise ValueError(f"logits needs rows of one length, got lengths {lengths}; pad the rows "
                       "to one length or call logits once per row")
    if not lengths or lengths[0] == 0:
      raise ValueError("logits needs at least one row of at least one token")
    if lengths[0] > self.cfg.max_positions:
      raise ValueError(f"{lengths[0]} tokens exceed the model's maximum of "
                       f"{self.cfg.max_positions} positions")
    ids = np.asarray(rows, np.int32)
    return np.asarray(_jitted_forward(self.cfg)(self.params, ids))

  def generate(self, prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]], *,
               policy: str | Policy = "full", budget: int | None = None,
               max_new_tokens: int = 32, prefill_chunk: int = 512, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0,
               question: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]] | None = None,
               budget_schedule: budgets_lib.Schedule = "uniform", seed: int = 0,
               stop_at_eos: bool = True, progress: bool = False, stream: bool = False,
               allocation: str = "uniform", floor: float = 0.2,
               layer_group: int | None = None):
    """Continue `prompt` with at most `budget` KV slots per layer.

    Args:
      prompt: a string, a list of token ids, or a batch (list) of either.
      policy: eviction policy name (see `memjax.policies()`) or instance.
      budget: mean KV slots per layer; `full` needs none.
      max_new_tokens: tokens to generate.
      prefill_chunk: prompt tokens per prefill chunk.
      temperature: 0 for greedy decoding.
      top_k, top_p: keep the k most likely tokens / the most likely tokens up to
        probability p when sampling (0 and 1: all); `seed` makes sampling reproducible.
      stream: yield the continuation as it is generated: for one prompt, each new token's
        text (or id when given ids); for a batch, a list per step with one entry per row
        (None once a row has stopped). Without it every decode step runs on the device.
      question: appended after the prompt has been compressed (query-agnostic protocol);
        to let the question shape the compression instead (query-aware), put it in `prompt`.
      budget_schedule: "uniform" or "pyramid" per-layer budgets.
      allocation: "uniform" (each KV head keeps its own `budget` slots), "heads" (a
        layer's slots are one pool its KV heads share) or "layers" (groups of
        `layer_group` global layers, None: all, share one pool per KV head); each member
        of a pool keeps at least `floor` of its share (`memjax.cache.allocation`).

    Returns:
      Text when given text, token ids when given ids; a list of those for a batch.

    Raises:
      TypeError: an argument of the wrong type (budget, chunk and token counts are ints), or
        a batch that mixes text and token ids.
      ValueError: a token id outside the vocabulary, an argument out of range, or a number
        of questions other than the number of prompts.
    """
    prompts, as_text, batched = self._rows(prompt, "prompt")
    questions = None if question is None else self._rows(question, "question")[0]
    eos = self.tokenizer.eos_id if stop_at_eos else None
    new_ids = generate_ids(
        self.params, self.cfg, prompts, policy=policy, budget=budget,
        budget_schedule=budget_schedule, questions=questions, max_new_tokens=max_new_tokens,
        prefill_chunk=prefill_chunk, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, eos_id=eos, progress=progress, stream=stream, encode=self.tokenizer.encode,
        allocation=allocation, floor=floor, layer_group=layer_group)
    if stream:
      return self._stream(new_ids, as_text, batched)
    outs = [self.tokenizer.decode(ids) for ids in new_ids] if as_text else new_ids
    return outs if batched else outs[0]

  def _stream(self, steps, as_text: bool, batched: bool):
    """Each step's new text (decoded incrementally, so multi-token characters come whole)
    or ids; per row for a batch."""
    so_far: list[list[int]] = []
    shown: list[str] = []
    for tokens in steps:
      if not so_far:
        so_far, shown = [[] for _ in tokens], ["" for _ in tokens]
      pieces = []
      for b, token in enumerate(tokens):
        if token is None or not as_text:
          pieces.append(token)
          continue
        so_far[b].append(token)
        text = self.tokenizer.decode(so_far[b])
        pieces.append(text[len(shown[b]):])
        shown[b] = text
      if batched:
        yield pieces
      elif pieces[0] is not None:
        yield pieces[0]

  def cache_bytes(self, policy: str | Policy = "full", budget: int | None = None,
                  tokens: int = 4096, batch: int = 1, allocation: str = "uniform",
                  budget_schedule: budgets_lib.Schedule = "uniform") -> int:
    """Bytes of the KV cache that `generate` allocates for `batch` rows of `tokens` tokens
    (prompt + question + new) under `policy` and `budget`: keys, values, positions, policy
    statistics and, for allocation="heads" or "layers", one head or owner id per slot.
    Nothing is allocated."""
    from memjax.cache import allocation as allocation_lib
    from memjax.cache import kv_cache
    from memjax.cache.policies import get_policy
    from memjax.generation.generate import resolve_budgets
    policy = get_policy(policy)
    per_layer = resolve_budgets(self.cfg, policy, budget, tokens, budget_schedule)

    def build():
      cache = kv_cache.init_cache(per_layer, batch, self.cfg.n_kv_heads, self.cfg.head_dim,
                                  self.cfg.jnp_dtype)
      return allocation_lib.arrange(cache, allocation_lib.Pooling(allocation), policy,
                                    self.cfg.layer_plan())

    return kv_cache.cache_bytes(jax.eval_shape(build))

  def _rows(self, x, what: str) -> tuple[list, bool, bool]:
    """(rows, given as text?, given as a batch?) of a `generate` argument: a string, one row
    of token ids, or a list of strings or of id rows (not both). Id rows are returned as
    given; `generate_ids` checks them."""
    if isinstance(x, str):
      return [self.tokenizer.encode(x)], True, False
    if not checks.is_sequence(x):
      raise TypeError(f"{what} must be a string, a list of token ids, or a list of either; "
                      f"got {x!r} ({type(x).__name__})")
    if not _holds_rows(x):
      return [x], False, False
    items = list(x)
    texts = [isinstance(item, str) for item in items]
    if all(texts):
      return [self.tokenizer.encode(text) for text in items], True, True
    if any(texts):
      raise TypeError(f"{what} mixes text and token ids (item {texts.index(True)} is a string, "
                      f"item {texts.index(False)} is not); give a list of strings or a list "
                      "of token id lists")
    return items, False, True


def _holds_rows(x) -> bool:
  """Whether `x` is a batch: a sequence whose items are strings or sequences themselves."""
  return checks.is_sequence(x) and any(isinstance(item, str) or checks.is_sequence(item)
                                       for item in x)


@functools.lru_cache(maxsize=8)
def _jitted_forward(cfg: ModelConfig):
  return jax.jit(functools.partial(llama.forward, cfg=cfg))


def load(name_or_path: str = "smollm2-135m", dtype: str = "float32",
         gates: str | None = None, attention_impl: str = "auto") -> LanguageModel:
  """Load a model by registry name ("smollm2-135m", "gemma3-270m"), .gguf path, Hugging Face
  directory, or Hugging Face repo id already in the local hub cache ("Qwen/Qwen3-0.6B"; never
  downloaded). Families: Llama 1-3.x, Qwen2/2.5, Qwen3, Mistral, Gemma 2, Gemma 3.

  Args:
    name_or_path: what to load.
    dtype: "float32" or "bfloat16" compute dtype.
    gates: TRIM-KV retention gates for policy "learned": a name shipped with memjax for
      this model ("trimkv" for "smollm2-135m") or an .npz from `memjax export-gates`.
      They stay float32 whatever `dtype` is.
    attention_impl: "auto" (Pallas kernels on TPU/GPU, XLA on CPU), "xla", "tpu" or "gpu".

  Raises:
    memjax.retention.store.GateFileError: the gates are missing or do not fit the model.
  """
  from memjax.io import load_checkpoint
  cfg, params, tokenizer = load_checkpoint(name_or_path, dtype=dtype)
  cfg = dataclasses.replace(cfg, attention_impl=attention_impl)
  params = llama.cast_params(params, cfg)
  if gates is not None:
    from memjax.retention import add_gates
    from memjax.retention.store import load_gates
    gate_params, _ = load_gates(gates, cfg, model=str(name_or_path))
    params = add_gates(params, jax.tree.map(jax.numpy.asarray, gate_params))
  params = llama.per_layer(params)  # the stacked copy is dropped here
  return LanguageModel(cfg, params, tokenizer, str(name_or_path))


def policies() -> list[str]:
  """Names of the registered eviction policies."""
  return policy_names()
