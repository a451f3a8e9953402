"""Retention-decayed attention: the TRIM-KV training path.

Causal GQA attention with the additive logit bias log β_j · (t − j) (see
`memjax.attention.decayed` for the math and its two XLA paths). A `backend` other than
"xla" routes the call to the Pallas kernels of `memjax.kernels` (forward and backward),
which take positions to be 0..T-1 in every row.
"""

from __future__ import annotations

import jax

from memjax import kernels
from memjax.attention.decayed import Impl, xla_decayed_attention
from memjax.sharding import kernels as mesh_kernels

__all__ = ["Impl", "decayed_attention"]


def decayed_attention(q_BxTxHqxDh: jax.Array, k_BxTxHkvxDh: jax.Array, v_BxTxHkvxDh: jax.Array,
                      log_beta_BxTxHkv: jax.Array, positions_BxT: jax.Array, *,
                      segment_ids: jax.Array | None = None, soft_cap: float | None = None,
                      impl: Impl = "blockwise", block: int = 128, remat: bool = False,
                      backend: str = "xla") -> jax.Array:
  """Causal GQA attention with the retention bias log β_j · (t − j) on the logits.

  Args:
    q_BxTxHqxDh: queries, already rotated.
    k_BxTxHkvxDh: keys, already rotated.
    v_BxTxHkvxDh: values.
    log_beta_BxTxHkv: log retention (<= 0) of every key, per KV head.
    positions_BxT: int32 token positions; t and j in the bias are these positions.
    segment_ids: optional int32 [B, T]; tokens attend only within their segment.
    soft_cap: optional cap c on the scaled q·k logits, c · tanh(s / c), applied before the
      retention bias is added.
    impl: "reference" (explicit T×T) or "blockwise" (online softmax over tiles).
    block: tile length (tokens) of the blockwise path, for queries and keys alike.
    remat: blockwise only: recompute each query block in the backward pass
      (`jax.checkpoint`), so that backward memory is O(block × T) per head, not O(T²).
    backend: "xla" runs `impl`; "auto", "tpu" or "gpu" (a `ModelConfig.attention_impl`)
      runs `memjax.kernels.flash_attention` when it resolves to a Pallas kernel, which
      requires positions_BxT = 0..T-1 in every row (packed documents via segment ids).
      Traced under a placement with a mesh, the kernel runs per device block of batch rows
      and KV heads (`memjax.sharding.kernels`).

  Returns:
    out_BxTxHqxDh in the dtype of q; softmax and accumulation run in float32.
  """
  if backend != "xla" and kernels.resolve(backend) != "xla":
    return mesh_kernels.flash_attention(q_BxTxHqxDh, k_BxTxHkvxDh, v_BxTxHkvxDh,
                                        log_beta_BxTxHkv, segment_ids=segment_ids,
                                        soft_cap=soft_cap, backend=backend)
  return xla_decayed_attention(q_BxTxHqxDh, k_BxTxHkvxDh, v_BxTxHkvxDh, log_beta_BxTxHkv,
                               positions_BxT, segment_ids=segment_ids, soft_cap=soft_cap,
                               impl=impl, block=block, remat=remat)
