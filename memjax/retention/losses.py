"""The TRIM-KV objective: distil the frozen model into its gated self under a memory budget.

    loss = (w_ce · CE + w_kl · KL) / (w_ce + w_kl) + w_cap · capacity

CE is the student's next-token cross-entropy, KL the forward KL(teacher ‖ student) per
token, capacity the hinge on S_t above the budget M (`capacity.capacity_loss`). With the
default weights (1, 1, 1) this is the paper's mean(CE, KL) + λ·capacity with λ = 1;
ablations zero a weight (e.g. (1, 0, 1) is CE + capacity). The teacher is the same
frozen model without gates. Only the gates train: they are the first, differentiated
argument, and the frozen params pass through `stop_gradient`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from memjax.models import llama
from memjax.models.config import ModelConfig
from memjax.retention import capacity, gate
from memjax.retention.decayed_attention import Impl
from memjax.retention.model import forward_gated
from memjax.sharding.rules import Rules


def target_ce(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
              mask_BxT: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy (nats) of targets [B, T] under logits [B, T, V] at the same place,
  over the positions where `mask_BxT` is True (all by default)."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  logp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return -jnp.mean(logp_BxT, where=mask_BxT)


def next_token_ce(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  """Mean cross-entropy (nats) of predicting token t + 1 from logits at t."""
  return target_ce(logits_BxTxV[:, :-1], tokens_BxT[:, 1:])


def forward_kl(teacher_logits_BxTxV: jax.Array, student_logits_BxTxV: jax.Array) -> jax.Array:
  """Mean over tokens of KL(teacher ‖ student) = Σ_v p_T (log p_T − log p_S), in nats."""
  teacher_logp = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32), axis=-1)
  student_logp = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1))


def trimkv_loss(gate_params: gate.GateParams, frozen_params: llama.Params,
                tokens_BxT: jax.Array, cfg: ModelConfig, *, memory_M: int,
                weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                teacher_logits: jax.Array | None = None, impl: Impl = "blockwise",
                block: int = 128, remat: bool = False, mesh: Mesh | None = None,
                rules: Rules | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The TRIM-KV loss of the gates on one batch; differentiate w.r.t. `gate_params` only.

  Args:
    gate_params: stacked gates (`gate.init_gate_params`), the trained parameters.
    frozen_params: the model's own params (any gates in them are replaced).
    tokens_BxT: int32 token ids, one sequence per row.
    memory_M: the KV budget M (tokens per layer and head) of the capacity term.
    weights: Python floats (w_ce, w_kl, w_cap), see the module docstring.
    teacher_logits: float32 [B, T, V] of the ungated model, if already computed.
    impl, block, remat: passed to `decayed_attention` (block also tiles the capacity sums).
    mesh, rules: under a `jit` sharded on `mesh`, Pallas attention runs per device block
      (student and teacher).

  Returns:
    loss: float32 scalar.
    metrics: float32 scalars "ce", "kl", "capacity" (unweighted).
  """
  frozen_params = jax.lax.stop_gradient(frozen_params)
  logits_BxTxV, log_beta_LxBxTxHkv = forward_gated(
      gate.add_gates(frozen_params, gate_params), tokens_BxT, cfg, impl=impl, block=block,
      remat=remat, mesh=mesh, rules=rules)
  if teacher_logits is None:
    teacher_logits = llama.forward(frozen_params, tokens_BxT, cfg, mesh=mesh, rules=rules)
  metrics = {
      "ce": next_token_ce(logits_BxTxV, tokens_BxT),
      "kl": forward_kl(jax.lax.stop_gradient(teacher_logits), logits_BxTxV),
      "capacity": capacity.capacity_loss(log_beta_LxBxTxHkv, memory_M, block),
  }
  w_ce, w_kl, w_cap = weights
  distill = (w_ce * metrics["ce"] + w_kl * metrics["kl"]) / (w_ce + w_kl) if w_ce + w_kl else 0.0
  return distill + w_cap * metrics["capacity"], metrics
