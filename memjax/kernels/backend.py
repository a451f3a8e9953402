"""Which attention implementation runs: the XLA reference or a Pallas kernel.

"auto" picks the Pallas kernel of the platform JAX runs on (TPU Mosaic or GPU Triton) and
the XLA reference on CPU, where Pallas only runs in interpret mode.
"""

from __future__ import annotations

from typing import Literal

import jax
from jax.experimental.pallas import tpu as pltpu

from memjax.models.config import ATTENTION_IMPLS as BACKENDS
from memjax.models.config import AttentionImpl as Backend


def resolve(backend: Backend) -> Literal["xla", "tpu", "gpu"]:
  """The concrete backend for `backend` on the default JAX platform."""
  if backend not in BACKENDS:
    raise ValueError(f"unknown attention backend {backend!r}; use one of {BACKENDS}")
  if backend != "auto":
    return backend
  platform = jax.default_backend()
  return platform if platform in ("tpu", "gpu") else "xla"


def interpret_params(backend: Literal["tpu", "gpu"], interpret: bool):
  """The `interpret` argument of `pallas_call` for a kernel of `backend`.

  TPU kernels run under the TPU interpreter (simulated VMEM, DMAs and grid order; see
  `pltpu.InterpretParams`), GPU kernels under the generic HLO interpreter. Tests that
  need the race detector pass their own `pltpu.InterpretParams` via
  `pltpu.force_tpu_interpret_mode`, which overrides this value.
  """
  if not interpret:
    return False
  return pltpu.InterpretParams() if backend == "tpu" else True
