"""`flash_attention`: causal GQA attention with optional retention decay, segments and soft-cap.

One entry point over three implementations:
  - "xla": `memjax.attention.decayed` (blockwise online softmax in plain XLA),
    the path CPU runs and the oracle the kernels are tested against;
  - "tpu": Pallas Mosaic kernels (`flash_tpu`);
  - "gpu": Pallas Triton kernels (`flash_gpu`).
The Pallas paths have a `custom_vjp` whose backward pass is two more kernels (dK/dV/dlog β
and dQ), recomputing the probabilities from the saved log-sum-exp, FlashAttention-2 style.
Neither has run on real hardware: they are verified in interpret mode on CPU only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from memjax.kernels import flash_gpu, flash_tpu, flash_layout
from memjax.kernels.backend import Backend, resolve
from memjax.kernels.flash_layout import FlashConfig
from memjax.attention.decayed import xla_decayed_attention

_KERNELS = {"tpu": flash_tpu, "gpu": flash_gpu}
# Tile lengths (tokens) per backend: (block_q, block_k), chosen with
# experiments/kernel_roofline.py (see experiments/results/kernels.md). On TPU a tile holds
# G · block_q query rows, so `default_blocks` shrinks block_q for large groups.
DEFAULT_BLOCKS = {"tpu": (256, 512), "gpu": (128, 64)}
_TPU_MAX_ROWS = 1024


def default_blocks(impl: str, group: int) -> tuple[int, int]:
  """(block_q, block_k) for a backend and GQA group size G."""
  block_q, block_k = DEFAULT_BLOCKS[impl]
  if impl == "tpu":
    while block_q > 64 and group * block_q > _TPU_MAX_ROWS:
      block_q //= 2
  return block_q, block_k


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, log_beta: jax.Array | None = None,
                    *, causal: bool = True, segment_ids: jax.Array | None = None,
                    soft_cap: float | None = None, backend: Backend = "auto",
                    interpret: bool = False, block_q: int | None = None,
                    block_k: int | None = None) -> jax.Array:
  """Softmax attention with logits cap·tanh(q·k / (cap·√D)) + log β_j · (t − j).

  Query head h reads KV head h // G (G = Hq // Hkv); t and j are token indices in the row.
  The soft-cap (if any) applies to the scaled q·k only, not to the retention bias.

  Args:
    q: [B, T, Hq, D] queries, already rotated.
    k, v: [B, T, Hkv, D] keys (rotated) and values.
    log_beta: optional [B, T, Hkv] log retention (<= 0) of every key; needs `causal`.
    causal: key j visible to query t only if j <= t.
    segment_ids: optional int [B, T]; tokens attend only within their segment.
    soft_cap: optional logit cap (Gemma-2 style).
    backend: "auto" (Pallas on TPU/GPU, XLA on CPU), "xla", "tpu" or "gpu".
    interpret: run the Pallas kernels in interpret mode (CPU testing).
    block_q, block_k: kernel tile lengths; default per backend and group size
      (`default_blocks`), shrunk to the sequence when it is shorter.

  Returns:
    [B, T, Hq, D] in the dtype of q. Differentiable in q, k, v and log_beta.
  """
  if log_beta is not None and not causal:
    raise ValueError("the retention decay log β · (t − j) is defined for causal attention only")
  impl = resolve(backend)
  if impl == "xla":
    return _xla(q, k, v, log_beta, causal=causal, segment_ids=segment_ids, soft_cap=soft_cap)
  b, t, n_heads, d = q.shape
  default_q, default_k = default_blocks(impl, n_heads // k.shape[2])
  short = short_block(t, impl)
  block_q, block_k = min(block_q or default_q, short), min(block_k or default_k, short)
  cfg = FlashConfig(causal=causal, soft_cap=soft_cap, scale=d ** -0.5, kv_len=t,
                    block_q=block_q, block_k=block_k, interpret=interpret)
  length = flash_layout.padded_length(t, block_q, block_k)
  q5, k4, v4, log_beta4, segments = flash_layout.to_kernel(q, k, v, log_beta, segment_ids, length)
  out5 = _attend(cfg, impl, q5, k4, v4, log_beta4, segments)
  return flash_layout.q_from_kernel(out5, t)


def short_block(t: int, impl: str) -> int:
  """A tile that covers a short sequence: rounded up to 8 rows (TPU) or a power of two
  of at least 16 (Triton's block shapes and dot sizes)."""
  if impl == "gpu":
    return max(16, 1 << (t - 1).bit_length())
  return -(-t // 8) * 8


def _xla(q, k, v, log_beta, *, causal, segment_ids, soft_cap):
  """The XLA path: decayed attention with zero decay when none is given. Non-causal
  attention is expressed with every position 0 (all keys visible)."""
  b, t, n_kv, _ = k.shape
  if log_beta is None:
    log_beta = jnp.zeros((b, t, n_kv), jnp.float32)
  positions = jnp.arange(t, dtype=jnp.int32) if causal else jnp.zeros((t,), jnp.int32)
  return xla_decayed_attention(q, k, v, log_beta, jnp.broadcast_to(positions, (b, t)),
                               segment_ids=segment_ids, soft_cap=soft_cap, impl="blockwise",
                               remat=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend(cfg: FlashConfig, impl: str, q, k, v, log_beta, segments):
  return _KERNELS[impl].forward(cfg, q, k, v, log_beta, segments)[0]


def _attend_fwd(cfg, impl, q, k, v, log_beta, segments):
  out, lse = _KERNELS[impl].forward(cfg, q, k, v, log_beta, segments)
  return out, (q, k, v, log_beta, segments, out, lse)


def _attend_bwd(cfg, impl, residuals, do):
  q, k, v, log_beta, segments, out, lse = residuals
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  dq, dk, dv, dlog_beta = _KERNELS[impl].backward(cfg, q, k, v, log_beta, segments, do, lse,
                                                  delta)
  return dq, dk, dv, dlog_beta, None


_attend.defvjp(_attend_fwd, _attend_bwd)
