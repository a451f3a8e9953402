"""TRIM-KV retention gates: a small MLP per layer mapping the normed hidden state to log β.

One retention rate β ∈ (0, 1) per token and KV head says how slowly the token fades:
seen from step t, token j keeps weight β_j^(t−j). The gate of one layer is

    log β = log_sigmoid(silu(h @ w1 + b1) @ w2 + bias)        h: [B, T, D] -> [B, T, Hkv]

computed in float32. Gate parameters live inside the model params, stacked per layer like
every other layer weight, as `params["layers"]["gate"]`, so `llama.run_layers` hands each
block its own slice (`p["gate"]`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from memjax.models.config import ModelConfig

GateParams = dict[str, jax.Array]


def init_gate_params(cfg: ModelConfig, hidden: int, key: jax.Array, bias_init: float = 12.0,
                     scale: float = 0.02) -> GateParams:
  """Float32 gates for every layer: w1 [L, D, Hg], b1 [L, Hg], w2 [L, Hg, Hkv], bias [L, Hkv].

  Weights are N(0, scale), b1 is zero and the per-head bias is `bias_init`: a large bias
  (the paper uses 10 to 18) starts β ≈ 1, so the gated model starts equal to the ungated one.
  """
  L = cfg.n_layers
  k1, k2 = jax.random.split(key)
  return {
      "w1": scale * jax.random.normal(k1, (L, cfg.d_model, hidden), jnp.float32),
      "b1": jnp.zeros((L, hidden), jnp.float32),
      "w2": scale * jax.random.normal(k2, (L, hidden, cfg.n_kv_heads), jnp.float32),
      "bias": jnp.full((L, cfg.n_kv_heads), bias_init, jnp.float32),
  }


def add_gates(params: dict[str, Any], gate_params: GateParams) -> dict[str, Any]:
  """A copy of `params` whose layers carry `gate_params` (replacing any gates already there)."""
  return {**params, "layers": {**params["layers"], "gate": gate_params}}


def split_gates(params: dict[str, Any]) -> tuple[GateParams, dict[str, Any]]:
  """(gate params, the remaining params): the inverse of `add_gates`."""
  layers = dict(params["layers"])
  gate_params = layers.pop("gate")
  return gate_params, {**params, "layers": layers}


def layer_gate(layer_params: dict[str, Any], needed_by: str) -> GateParams:
  """The gate of one layer's params, or a clear error naming who needed it."""
  if "gate" not in layer_params:
    raise ValueError(
        f"{needed_by} needs retention gates, but the params have none (params['layers']['gate']):"
        f" attach trained gates with memjax.retention.add_gates(params, gate_params), or train"
        f" them with memjax.retention.trimkv_loss")
  return layer_params["gate"]


def log_beta(p_gate: GateParams, h_BxTxD: jax.Array) -> jax.Array:
  """float32 log β [B, T, Hkv] of one layer from its normed hidden state h [B, T, D]."""
  h = h_BxTxD.astype(jnp.float32)
  hidden_BxTxHg = jax.nn.silu(h @ p_gate["w1"].astype(jnp.float32) + p_gate["b1"])
  logit_BxTxHkv = hidden_BxTxHg @ p_gate["w2"].astype(jnp.float32) + p_gate["bias"]
  return jax.nn.log_sigmoid(logit_BxTxHkv)
