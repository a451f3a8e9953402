"""The gated decoder: every block attends with retention-decayed attention.

Same parameters and layer loop as `llama.forward`, plus `params["layers"]["gate"]`: each
block computes log β from its normed hidden state and adds log β_j · (t − j) to its
attention logits. With the gate bias initialised large (β ≈ 1) it equals `llama.forward`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax.models import llama
from memjax.models.config import ModelConfig
from memjax.retention import gate
from memjax.retention.decayed_attention import Impl, decayed_attention


def forward_gated(params: llama.Params, tokens_BxT: jax.Array, cfg: ModelConfig, *,
                  impl: Impl = "blockwise", block: int = 128,
                  remat: bool = False, decay: bool = True) -> tuple[jax.Array, jax.Array]:
  """Full causal forward with decayed attention in every layer.

  Args:
    params: model params with gates (`gate.add_gates`).
    tokens_BxT: int32 token ids, one sequence per row.
    impl, block, remat: passed to `decayed_attention`.
    decay: add the decay to the attention logits (training); False attends like the
      ungated model and only reports log β, as the `learned` policy sees it before any
      eviction.

  Returns:
    logits_BxTxV: float32 logits.
    log_beta_LxBxTxHkv: float32 log β of every layer, token and KV head.
  """
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

  def mix(spec, p, h_BxTxD, q, k, v, positions, state):
    del state
    if spec.window is not None:
      raise ValueError("forward_gated has no sliding-window attention; its layers must all "
                       "be global")
    log_beta_BxTxHkv = gate.log_beta(gate.layer_gate(p, "forward_gated"), h_BxTxD)
    applied = log_beta_BxTxHkv if decay else jnp.zeros_like(log_beta_BxTxHkv)
    out = decayed_attention(q, k, v, applied, positions, soft_cap=spec.attn_soft_cap,
                            impl=impl, block=block, remat=remat, backend=cfg.attention_impl)
    return out, log_beta_BxTxHkv

  x_BxTxD, log_beta_LxBxTxHkv = llama.run_layers(
      params, llama.embed(params, tokens_BxT, cfg), positions_BxT, None, mix, cfg)
  return llama.unembed(params, x_BxTxD, cfg), log_beta_LxBxTxHkv
