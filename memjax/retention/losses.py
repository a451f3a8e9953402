"""The TRIM-KV objective: distil the frozen model into its gated self under a memory budget.

    loss = D(all tokens) + w_ans · D(answer tokens) + w_cap · capacity + w_fact · fade
    D = (w_ce · CE + w_kl · KL) / (w_ce + w_kl)

CE is the student's next-token cross-entropy, KL the forward KL(teacher ‖ student) per
token, capacity the hinge on S_t above the budget M (`capacity.capacity_loss`). D(answer
tokens) averages over the answer spans of synthetic rows only (the tokens that need a fact
from far back). fade supervises the gates directly where the data knows what must last: the
mean over layers, heads and the fact tokens of synthetic rows of −log β · T, the log of how
much a fact fades across the row (0 when β = 1). With w_ans = w_fact = 0 (the defaults) the
loss is the paper's: with weights (1, 1, 1) it is mean(CE, KL) + λ·capacity with λ = 1;
ablations zero a weight (e.g. (1, 0, 1) is CE + capacity). The teacher is the same
frozen model without gates. Only the gates train: they are the first, differentiated
argument, and the frozen params pass through `stop_gradient`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax.models import llama
from memjax.models.config import ModelConfig
from memjax.retention import capacity, gate
from memjax.retention.decayed_attention import Impl
from memjax.retention.model import forward_gated


def target_ce(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
              mask_BxT: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy (nats) of targets [B, T] under logits [B, T, V] at the same place,
  over the positions where `mask_BxT` is True (all by default)."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  logp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return -jnp.mean(logp_BxT, where=mask_BxT)


def token_kl(teacher_logits_BxTxV: jax.Array, student_logits_BxTxV: jax.Array) -> jax.Array:
  """float32 [B, T]: KL(teacher ‖ student) = Σ_v p_T (log p_T − log p_S) per token, in nats."""
  teacher_logp = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32), axis=-1)
  student_logp = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)


def topk_kl(teacher_ids_BxTxK: jax.Array, teacher_logp_BxTxK: jax.Array,
            student_logits_BxTxV: jax.Array) -> jax.Array:
  """float32 [B, T]: KL(teacher ‖ student) over the teacher's top k tokens and one bucket
  for the rest of the vocabulary, in nats (≤ the full KL; equal when the top k hold all the
  teacher's mass)."""
  student_logp = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32), axis=-1)
  s_top = jnp.take_along_axis(student_logp, teacher_ids_BxTxK, axis=-1)
  t_top = teacher_logp_BxTxK.astype(jnp.float32)
  rest = lambda logp: jnp.log(jnp.clip(1.0 - jnp.sum(jnp.exp(logp), axis=-1), 1e-12, 1.0))
  t_rest, s_rest = rest(t_top), rest(s_top)
  return (jnp.sum(jnp.exp(t_top) * (t_top - s_top), axis=-1)
          + jnp.exp(t_rest) * (t_rest - s_rest))


def forward_kl(teacher_logits_BxTxV: jax.Array, student_logits_BxTxV: jax.Array) -> jax.Array:
  """Mean over tokens of KL(teacher ‖ student), in nats."""
  return jnp.mean(token_kl(teacher_logits_BxTxV, student_logits_BxTxV))


def token_ce(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  """float32 [B, T − 1]: cross-entropy (nats) of token t + 1 under the logits at t."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x where mask is True; 0 where the mask is empty (no NaN)."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def trimkv_loss(gate_params: gate.GateParams, frozen_params: llama.Params,
                tokens_BxT: jax.Array, cfg: ModelConfig, *, memory_M: int,
                weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                teacher_logits: jax.Array | None = None, impl: Impl = "blockwise",
                block: int = 128, remat: bool = False, answer_BxT: jax.Array | None = None,
                answer_weight: float = 0.0, memory_ratio: float = 0.0,
                fact_BxT: jax.Array | None = None, fact_weight: float = 0.0,
                teacher_topk: tuple[jax.Array, jax.Array] | None = None,
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The TRIM-KV loss of the gates on one batch; differentiate w.r.t. `gate_params` only.

  Args:
    gate_params: stacked gates (`gate.init_gate_params`), the trained parameters.
    frozen_params: the model's own params (any gates in them are replaced).
    tokens_BxT: int32 token ids, one sequence per row.
    memory_M: the KV budget M (tokens per layer and head) of the capacity term.
    weights: Python floats (w_ce, w_kl, w_cap), see the module docstring.
    teacher_logits: float32 [B, T, V] of the ungated model, if already computed.
    teacher_topk: (ids int32 [B, T, k], log-probabilities [B, T, k]) of the ungated model's
      top k next tokens (`memjax.train.teacher`): the teacher is not run and the KL is
      `topk_kl` (coarsened to those k tokens plus the rest).
    impl, block, remat: passed to `decayed_attention` (block also tiles the capacity sums).
    answer_BxT: bool, True on answer-span tokens (`memjax.train.data.TrainData`); needed
      when answer_weight > 0.
    answer_weight: w_ans, the weight of the distillation terms on the answer span.
    memory_ratio: if > 0, the capacity budget is M_t = max(memory_M, memory_ratio · (t + 1)).
    fact_BxT: bool, True on the tokens that must be kept (synthetic rows' facts); needed
      when fact_weight > 0.
    fact_weight: w_fact, the weight of the fade term.

  Returns:
    loss: float32 scalar.
    metrics: float32 scalars "ce", "kl", "capacity" (unweighted), with answer_weight > 0
      "answer_ce", "answer_kl", with fact_weight > 0 "fact_fade" (0 for a batch without
      answers or facts).
  """
  if answer_weight > 0 and answer_BxT is None:
    raise ValueError("answer_weight > 0 needs the answer mask (answer_BxT)")
  if fact_weight > 0 and fact_BxT is None:
    raise ValueError("fact_weight > 0 needs the fact mask (fact_BxT)")
  frozen_params = jax.lax.stop_gradient(frozen_params)
  logits_BxTxV, log_beta_LxBxTxHkv = forward_gated(
      gate.add_gates(frozen_params, gate_params), tokens_BxT, cfg, impl=impl, block=block,
      remat=remat)
  if teacher_topk is not None:
    ids, logp = (jax.lax.stop_gradient(a) for a in teacher_topk)
    kl_BxT1 = topk_kl(ids, logp, logits_BxTxV)[:, :-1]
  else:
    if teacher_logits is None:
      teacher_logits = llama.forward(frozen_params, tokens_BxT, cfg)
    kl_BxT1 = token_kl(jax.lax.stop_gradient(teacher_logits), logits_BxTxV)[:, :-1]
  ce_BxT1 = token_ce(logits_BxTxV, tokens_BxT)
  metrics = {
      "ce": jnp.mean(ce_BxT1),
      "kl": jnp.mean(kl_BxT1),
      "capacity": capacity.capacity_loss(log_beta_LxBxTxHkv, memory_M, block, memory_ratio),
  }
  w_ce, w_kl, w_cap = weights
  mix = lambda ce, kl: (w_ce * ce + w_kl * kl) / (w_ce + w_kl) if w_ce + w_kl else 0.0
  loss = mix(metrics["ce"], metrics["kl"]) + w_cap * metrics["capacity"]
  if answer_weight > 0:
    # The logits at t predict token t + 1: position t counts when token t + 1 is an answer.
    on_answer = answer_BxT[:, 1:]
    metrics["answer_ce"] = masked_mean(ce_BxT1, on_answer)
    metrics["answer_kl"] = masked_mean(kl_BxT1, on_answer)
    loss = loss + answer_weight * mix(metrics["answer_ce"], metrics["answer_kl"])
  if fact_weight > 0:
    fade_LxBxTxHkv = -log_beta_LxBxTxHkv * tokens_BxT.shape[1]
    on_fact = jnp.broadcast_to(fact_BxT[None, :, :, None], fade_LxBxTxHkv.shape)
    metrics["fact_fade"] = masked_mean(fade_LxBxTxHkv, on_fact)
    loss = loss + fact_weight * metrics["fact_fade"]
  return loss, metrics
