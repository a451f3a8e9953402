"""Tile arithmetic shared by every attention kernel (TPU and GPU, forward and backward).

A tile is R query rows against K keys. Rows of a tile may stack the G query heads of one
KV head ("g-major": row = g · Q + i for Q query positions), so one K/V tile serves the
whole group and K/V are never repeated in memory. Functions here take and return plain
arrays (loaded from refs by the caller) and never touch memory, so the same math runs
inside Mosaic TPU kernels, Triton kernels and their interpreters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NT = (((1,), (1,)), ((), ()))   # a @ b.T
_TN = (((0,), (0,)), ((), ()))   # a.T @ b


def matmul(a, b, dims=None):
  """a @ b (or the contraction `dims`) with float32 accumulation."""
  dims = dims or (((1,), (0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def matmul_nt(a_RxD, b_KxD):
  """a @ b.T in float32: [R, K]."""
  return matmul(a_RxD, b_KxD, _NT)


def matmul_tn(a_RxK, b_RxD):
  """a.T @ b in float32: [K, D]."""
  return matmul(a_RxK, b_RxD, _TN)


def stack_group(x_QxK: jax.Array, group: int) -> jax.Array:
  """[G·Q, K]: a per-position tile repeated for the G query heads stacked in the rows."""
  return x_QxK if group == 1 else jnp.concatenate([x_QxK] * group, axis=0)


def scores(q_RxD, k_KxD, *, scale: float, soft_cap: float | None):
  """Scaled logits [R, K] in float32, soft-capped (cap · tanh(s / cap)) when asked.

  Returns (logits, tanh) where tanh is the capped ratio (None without a cap), kept for the
  backward pass: d cap·tanh(s/cap) / ds = 1 − tanh².
  """
  s_RxK = matmul_nt(q_RxD, k_KxD) * scale
  if soft_cap is None:
    return s_RxK, None
  tanh_RxK = jnp.tanh(s_RxK / soft_cap)
  return soft_cap * tanh_RxK, tanh_RxK


def mask_and_distance(q_start, k_start, n_q: int, n_k: int, *, causal: bool, kv_len: int,
                      q_seg_Qx1=None, k_seg_1xK=None):
  """Visibility [Q, K] (bool) and clamped distance max(t − j, 0) [Q, K] (float32).

  t = q_start + row and j = k_start + column are token indices in the sequence. Keys at or
  past `kv_len` are padding and never visible; with `causal`, keys after the query are
  hidden; with segment ids, only keys of the query's segment are visible.
  """
  t_Qx1 = q_start + jax.lax.broadcasted_iota(jnp.int32, (n_q, 1), 0)
  j_1xK = k_start + jax.lax.broadcasted_iota(jnp.int32, (1, n_k), 1)
  visible_QxK = jnp.broadcast_to(j_1xK < kv_len, (n_q, n_k))
  if causal:
    visible_QxK &= j_1xK <= t_Qx1
  if q_seg_Qx1 is not None:
    visible_QxK &= q_seg_Qx1 == k_seg_1xK
  distance_QxK = jnp.maximum(t_Qx1 - j_1xK, 0).astype(jnp.float32)
  return visible_QxK, distance_QxK


def logits(q_RxD, k_KxD, log_beta_1xK, visible_QxK, distance_QxK, *, group: int,
           scale: float, soft_cap: float | None):
  """Tile logits [R, K] with the retention bias log β_j · (t − j); -inf where hidden.

  Returns (logits, tanh, visible_RxK, distance_RxK); see `scores` for tanh.
  """
  s_RxK, tanh_RxK = scores(q_RxD, k_KxD, scale=scale, soft_cap=soft_cap)
  visible_RxK = stack_group(visible_QxK, group)
  distance_RxK = stack_group(distance_QxK, group)
  if log_beta_1xK is not None:
    s_RxK = s_RxK + log_beta_1xK * distance_RxK
  return jnp.where(visible_RxK, s_RxK, -jnp.inf), tanh_RxK, visible_RxK, distance_RxK


def exp_shifted(s_RxK, max_Rx1):
  """Softmax numerators of a tile against a running max (-inf where nothing was seen).

  Returns (new max [R, 1], p = exp(s − new max) [R, K], rescale = exp(max − new max) [R, 1]);
  hidden logits (-inf) give p = 0, and rows with no visible key keep max = -inf.
  """
  new_max_Rx1 = jnp.maximum(max_Rx1, jnp.max(s_RxK, axis=1, keepdims=True))
  shift_Rx1 = jnp.where(new_max_Rx1 == -jnp.inf, 0.0, new_max_Rx1)
  return new_max_Rx1, jnp.exp(s_RxK - shift_Rx1), jnp.exp(max_Rx1 - shift_Rx1)


def online_softmax(s_RxK, v_KxD, max_Rx1, sum_Rx1, acc_RxD):
  """Fold one tile of logits (-inf where hidden) into the running max, sum and output.

  Returns the new (max, sum, acc); acc is the unnormalised output Σ exp(s − max) v.
  """
  new_max_Rx1, p_RxK, rescale_Rx1 = exp_shifted(s_RxK, max_Rx1)
  new_sum_Rx1 = rescale_Rx1 * sum_Rx1 + jnp.sum(p_RxK, axis=1, keepdims=True)
  new_acc_RxD = rescale_Rx1 * acc_RxD + matmul(p_RxK.astype(v_KxD.dtype), v_KxD)
  return new_max_Rx1, new_sum_Rx1, new_acc_RxD


def finish(max_Rx1, sum_Rx1, acc_RxD):
  """Normalised output [R, D] (zero for rows that saw no key) and the log-sum-exp [R, 1]
  (+inf for those rows, so that the backward pass gives them zero probability)."""
  seen_Rx1 = sum_Rx1 > 0
  out_RxD = acc_RxD / jnp.where(seen_Rx1, sum_Rx1, 1.0)
  lse_Rx1 = jnp.where(seen_Rx1, max_Rx1 + jnp.log(jnp.where(seen_Rx1, sum_Rx1, 1.0)), jnp.inf)
  return out_RxD, lse_Rx1


def logit_grads(s_RxK, tanh_RxK, visible_RxK, v_KxD, do_RxD, lse_Rx1, delta_Rx1):
  """Backward through softmax for one tile.

  Args:
    s_RxK: the forward logits (-inf where hidden); lse_Rx1: their log-sum-exp per row.
    delta_Rx1: Σ_d dO · O per row (the softmax Jacobian's diagonal correction).

  Returns:
    p_RxK: probabilities (float32).
    ds_RxK: d loss / d logits (what the retention bias receives).
    dscore_RxK: d loss / d scaled q·k, i.e. ds through the soft-cap (equal to ds without).
  """
  p_RxK = jnp.where(visible_RxK, jnp.exp(s_RxK - lse_Rx1), 0.0)
  dp_RxK = matmul_nt(do_RxD, v_KxD)
  ds_RxK = p_RxK * (dp_RxK - delta_Rx1)
  dscore_RxK = ds_RxK if tanh_RxK is None else ds_RxK * (1.0 - tanh_RxK * tanh_RxK)
  return p_RxK, ds_RxK, dscore_RxK


def log_beta_grad(ds_RxK, distance_RxK):
  """[1, K]: d loss / d log β_j = Σ_rows ds · (t − j) for one tile."""
  return jnp.sum(ds_RxK * distance_RxK, axis=0, keepdims=True)


def flash_logits(cfg, group: int, q_start, k_start, q_RxD, k_KxD, log_beta_1xK=None,
                 q_seg_Qx1=None, k_seg_1xK=None):
  """One flash-attention tile from loaded blocks: (logits, tanh, visible, distance), [R, K].

  `cfg` is a `flash_layout.FlashConfig`; q_start and k_start are the token indices of the
  tile's first query and key; rows stack `group` query heads.
  """
  visible_QxK, distance_QxK = mask_and_distance(
      q_start, k_start, q_RxD.shape[0] // group, k_KxD.shape[0], causal=cfg.causal,
      kv_len=cfg.kv_len, q_seg_Qx1=q_seg_Qx1, k_seg_1xK=k_seg_1xK)
  return logits(q_RxD, k_KxD, log_beta_1xK, visible_QxK, distance_QxK, group=group,
                scale=cfg.scale, soft_cap=cfg.soft_cap)
