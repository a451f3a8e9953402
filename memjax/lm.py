"""`LanguageModel`: a loaded checkpoint with its tokenizer, and the public entry points."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np

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
    params: parameter pytree (see `memjax.models.llama`).
    tokenizer: has `encode(str) -> list[int]` and `decode(list[int]) -> str`.
    name: where it was loaded from.
  """

  cfg: ModelConfig
  params: llama.Params
  tokenizer: Any
  name: str = ""

  def logits(self, ids_BxT) -> np.ndarray:
    """float32 [B, T, V] logits with full causal attention (no cache, no eviction)."""
    ids = np.asarray(ids_BxT, np.int32)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.shape[1] > self.cfg.max_positions:
      raise ValueError(f"{ids.shape[1]} tokens exceed the model's maximum of "
                       f"{self.cfg.max_positions} positions")
    return np.asarray(_jitted_forward(self.cfg)(self.params, ids))

  def generate(self, prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]], *,
               policy: str | Policy = "full", budget: int | None = None,
               max_new_tokens: int = 32, prefill_chunk: int = 512, temperature: float = 0.0,
               question: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]] | None = None,
               budget_schedule: budgets_lib.Schedule = "uniform", seed: int = 0,
               stop_at_eos: bool = True, progress: bool = False):
    """Continue `prompt` with at most `budget` KV slots per layer.

    Args:
      prompt: a string, a list of token ids, or a batch (list) of either.
      policy: eviction policy name (see `memjax.policies()`) or instance.
      budget: mean KV slots per layer; `full` needs none.
      max_new_tokens: tokens to generate.
      prefill_chunk: prompt tokens per prefill chunk.
      temperature: 0 for greedy decoding.
      question: appended after the prompt has been compressed (query-agnostic protocol);
        to let the question shape the compression instead (query-aware), put it in `prompt`.
      budget_schedule: "uniform" or "pyramid" per-layer budgets.

    Returns:
      Text when given text, token ids when given ids; a list of those for a batch.
    """
    prompts, as_text, batched = self._rows(prompt)
    questions = None
    if question is not None:
      questions, _, _ = self._rows(question)
      if not batched:
        questions = questions[:1]
    eos = self.tokenizer.eos_id if stop_at_eos else None
    new_ids = generate_ids(
        self.params, self.cfg, prompts, policy=policy, budget=budget,
        budget_schedule=budget_schedule, questions=questions, max_new_tokens=max_new_tokens,
        prefill_chunk=prefill_chunk, temperature=temperature, seed=seed, eos_id=eos,
        progress=progress)
    outs = [self.tokenizer.decode(ids) for ids in new_ids] if as_text else new_ids
    return outs if batched else outs[0]

  def _rows(self, x) -> tuple[list[list[int]], bool, bool]:
    """(rows of ids, given as text?, given as a batch?)."""
    if isinstance(x, str):
      return [self.tokenizer.encode(x)], True, False
    x = list(x)
    if x and isinstance(x[0], str):
      return [self.tokenizer.encode(s) for s in x], True, True
    if x and isinstance(x[0], (int, np.integer)):
      return [[int(i) for i in x]], False, False
    return [[int(i) for i in row] for row in x], False, True


@functools.lru_cache(maxsize=8)
def _jitted_forward(cfg: ModelConfig):
  return jax.jit(functools.partial(llama.forward, cfg=cfg))


def load(name_or_path: str = "smollm2-135m", dtype: str = "float32",
         gates: str | None = None, attention_impl: str = "auto") -> LanguageModel:
  """Load a model by registry name ("smollm2-135m"), .gguf path or Hugging Face directory.

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
  return LanguageModel(cfg, params, tokenizer, str(name_or_path))


def policies() -> list[str]:
  """Names of the registered eviction policies."""
  return policy_names()
