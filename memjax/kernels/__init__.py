"""Pallas kernels for the hot attention path, behind backend-dispatching entry points.

  flash_attention: causal GQA attention with retention decay, segments, soft-cap (+ grads).
  decode_attention: a few queries over a budgeted cache, split over slot blocks, with the
    per-slot attention mass that attention-based eviction policies accumulate.

TPU (Mosaic) and GPU (Triton) kernels are verified in interpret mode on CPU only.
"""

from memjax.kernels.backend import Backend, resolve
from memjax.kernels.decode import decode_attention
from memjax.kernels.flash import flash_attention

__all__ = ["Backend", "decode_attention", "flash_attention", "resolve"]
