"""Perplexity of held-out text when the model reads it through a budgeted cache."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from memjax.cache import allocation as allocation_lib
from memjax.cache import kv_cache
from memjax.cache.kv_cache import ModelCache
from memjax.cache.policies import Policy
from memjax.generation import generate
from memjax.models.config import ModelConfig
from memjax.sharding.inference import placed_chunk_step
from memjax.sharding.placement import Placement


def budgeted_logprobs(params, cfg: ModelConfig, tokens_BxT: np.ndarray, policy: Policy,
                      budgets: Sequence[int], chunk: int,
                      placement: Placement = Placement(),
                      pooling: allocation_lib.Pooling = allocation_lib.Pooling()
                      ) -> tuple[np.ndarray, ModelCache]:
  """log p(x_{t+1} | x_{<=t}) [B, T-1] as the model reads `tokens_BxT` chunk by chunk.

  Each chunk of `chunk` tokens sees the (evicted) cache of everything before it plus
  itself causally; a smaller chunk makes the budget bite sooner. On the `placement`'s
  mesh, the cache and rows are split over it as in `generate_ids`. `pooling` is the
  allocation of `generate_ids` (a shared pool runs on one device).

  Returns:
    float32 log-probabilities [B, T-1] and the final cache.
  """
  b, t = tokens_BxT.shape
  cache = allocation_lib.arrange(
      kv_cache.init_cache(budgets, b, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_dtype), pooling,
      policy, cfg.layer_plan())
  fn, params, cache = placed_chunk_step(cfg, policy, params, cache, "target_logprobs",
                                       placement, pooling)
  targets_BxT = np.concatenate([tokens_BxT[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
  pieces = []
  for (tokens, valid), (targets, _) in zip(generate.chunks(tokens_BxT.tolist(), chunk),
                                           generate.chunks(targets_BxT.tolist(), chunk)):
    logprobs, cache = fn(params, cache, tokens, valid, targets)
    pieces.append(np.asarray(logprobs))
  return np.concatenate(pieces, axis=1)[:, :t - 1], cache


def perplexity(logprobs: np.ndarray) -> float:
  """exp(mean negative log-likelihood) over all entries."""
  return float(np.exp(-np.mean(logprobs, dtype=np.float64)))
