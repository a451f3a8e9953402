"""Eviction policies: one file each, registered by name."""

from __future__ import annotations

import dataclasses

from memjax.cache.policies.base import Candidates, Chunk, Policy
from memjax.cache.policies.compactor import Compactor
from memjax.cache.policies.cur import CUR
from memjax.cache.policies.expected_attention import ExpectedAttention
from memjax.cache.policies.full import Full
from memjax.cache.policies.h2o import H2O
from memjax.cache.policies.keydiff import KeyDiff
from memjax.cache.policies.knorm import KNorm
from memjax.cache.policies.kvzip import KVzip
from memjax.cache.policies.lagkv import LagKV
from memjax.cache.policies.learned import Learned
from memjax.cache.policies.leverage import Leverage
from memjax.cache.policies.non_causal_attn import NonCausalAttn
from memjax.cache.policies.oracle import Oracle
from memjax.cache.policies.random import Random
from memjax.cache.policies.snapkv import SnapKV
from memjax.cache.policies.streaming import Streaming
from memjax.cache.policies.tova import TOVA
from memjax.cache.policies.window import Window

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (Full, Window, Streaming, H2O, TOVA, SnapKV, KeyDiff, KNorm, Random, Leverage,
                NonCausalAttn, Compactor, ExpectedAttention, CUR, LagKV, KVzip, Learned, Oracle)
}


def policy_names() -> list[str]:
  """Names of the registered policies."""
  return list(REGISTRY)


def heuristic_policy_names() -> list[str]:
  """Names of the registered policies that need neither retention gates in the model params
  nor per-token marks (the oracle)."""
  return [name for name, cls in REGISTRY.items()
          if not (cls.uses_retention_gate or cls.uses_marks)]


def get_policy(name: str | Policy, **hyper) -> Policy:
  """A policy instance by name, with hyper-parameters overriding its defaults."""
  if isinstance(name, Policy):
    return dataclasses.replace(name, **hyper) if hyper else name
  if name not in REGISTRY:
    raise ValueError(f"unknown policy {name!r}; registered policies: {', '.join(REGISTRY)}")
  cls = REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(hyper) - fields
  if unknown:
    raise ValueError(f"policy {name!r} has no hyper-parameter {sorted(unknown)}; "
                     f"it takes {sorted(fields) or 'none'}")
  return cls(**hyper)


__all__ = ["Candidates", "Chunk", "Policy", "REGISTRY", "get_policy", "heuristic_policy_names",
           "policy_names"]
