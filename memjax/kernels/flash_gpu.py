"""Retention-decayed flash attention as Pallas Triton (GPU) kernels: forward, dK/dV/dlog β, dQ.

One program per (batch row, KV head, query head of the group, query block) for the forward
and dQ passes, looping over key blocks in registers; one program per (batch row, KV head,
key block) for dK/dV/dlog β, looping over the group's query heads and query blocks, so the
key gradients of a group are summed in the kernel and K/V are never repeated in memory.
Loop bounds skip causal tiles above the diagonal and pure padding.

Status: verified only with `interpret=True` (the HLO interpreter) on CPU; never compiled
by Triton or run on a GPU. Triton needs power-of-two block shapes of at least 16 and a
power-of-two head dim; the interpreter does not check this. Pallas's Triton backend is
deprecated from JAX 0.11 (Mosaic GPU replaces it).

Tensor layouts are those of `flash_layout`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from memjax.kernels import flash_layout, tiles
from memjax.kernels.backend import interpret_params
from memjax.kernels.flash_layout import FlashConfig

_SQ = pl.squeezed


def _block(ref, start, size):
  """Rows [start, start + size) of a [T, D] ref, or columns of a [1, T] ref; None stays None."""
  if ref is None:
    return None
  if ref.shape[0] == 1:
    return ref[:, pl.ds(start, size)]
  return ref[pl.ds(start, size), :]


def _over_key_blocks(cfg, i, q_RxD, q_seg_Qx1, k_ref, v_ref, lb_ref, kseg_ref, step, init):
  """fori over the key blocks query block i needs; step(carry, tile, k_KxD, v_KxD) -> carry,
  where tile = (logits, tanh, visible, distance)."""
  def body(j, carry):
    start = j * cfg.block_k
    k_KxD = _block(k_ref, start, cfg.block_k)
    tile = tiles.flash_logits(cfg, 1, i * cfg.block_q, start, q_RxD, k_KxD,
                              _block(lb_ref, start, cfg.block_k), q_seg_Qx1,
                              _block(kseg_ref, start, cfg.block_k))
    return step(carry, tile, k_KxD, _block(v_ref, start, cfg.block_k))

  return jax.lax.fori_loop(0, flash_layout.last_k_block(cfg, i) + 1, body, init)


def _load(ref):
  return None if ref is None else ref[...]


def _forward_kernel(*refs, cfg, has_beta, has_seg):
  (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), (o_ref, lse_ref) = flash_layout.split_refs(
      refs, has_beta, has_seg)
  rows, d = q_ref.shape
  init = (jnp.full((rows, 1), -jnp.inf, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
          jnp.zeros((rows, d), jnp.float32))
  step = lambda carry, tile, k_KxD, v_KxD: tiles.online_softmax(tile[0], v_KxD, *carry)
  carry = _over_key_blocks(cfg, pl.program_id(3), q_ref[...], _load(qseg_ref), k_ref, v_ref,
                           lb_ref, kseg_ref, step, init)
  out_RxD, lse_Rx1 = tiles.finish(*carry)
  o_ref[...] = out_RxD.astype(o_ref.dtype)
  lse_ref[...] = lse_Rx1


def _dq_kernel(*refs, cfg, has_beta, has_seg):
  (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), rest = flash_layout.split_refs(
      refs, has_beta, has_seg)
  do_ref, lse_ref, delta_ref, dq_ref = rest
  do_RxD, lse_Rx1, delta_Rx1 = do_ref[...], lse_ref[...], delta_ref[...]

  def step(dq_RxD, tile, k_KxD, v_KxD):
    s, tanh, visible, _ = tile
    _, _, dscore = tiles.logit_grads(s, tanh, visible, v_KxD, do_RxD, lse_Rx1, delta_Rx1)
    return dq_RxD + tiles.matmul(dscore.astype(k_KxD.dtype), k_KxD)

  dq_RxD = _over_key_blocks(cfg, pl.program_id(3), q_ref[...], _load(qseg_ref), k_ref, v_ref,
                            lb_ref, kseg_ref, step, jnp.zeros(q_ref.shape, jnp.float32))
  dq_ref[...] = (dq_RxD * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg, group, has_beta, has_seg):
  (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), rest = flash_layout.split_refs(
      refs, has_beta, has_seg)
  do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *dlb_ref = rest
  j = pl.program_id(2)
  k_KxD, v_KxD, lb_1xK, kseg_1xK = k_ref[...], v_ref[...], _load(lb_ref), _load(kseg_ref)
  first = flash_layout.first_q_block(cfg, j)
  n_q = flash_layout.last_q_block(cfg) + 1 - first

  def body(n, carry):
    dk_KxD, dv_KxD, dlb_1xK = carry
    g, i = n // n_q, first + n % n_q
    rows = pl.ds(i * cfg.block_q, cfg.block_q)
    q_RxD, do_RxD = q_ref[g, rows, :], do_ref[g, rows, :]
    s, tanh, visible, distance = tiles.flash_logits(
        cfg, 1, i * cfg.block_q, j * cfg.block_k, q_RxD, k_KxD, lb_1xK,
        None if qseg_ref is None else qseg_ref[rows, :], kseg_1xK)
    p, ds, dscore = tiles.logit_grads(s, tanh, visible, v_KxD, do_RxD, lse_ref[g, rows, :],
                                      delta_ref[g, rows, :])
    return (dk_KxD + tiles.matmul_tn(dscore.astype(q_RxD.dtype), q_RxD),
            dv_KxD + tiles.matmul_tn(p.astype(do_RxD.dtype), do_RxD),
            dlb_1xK + tiles.log_beta_grad(ds, distance))

  zeros = jnp.zeros(k_KxD.shape, jnp.float32)
  init = (zeros, zeros, jnp.zeros((1, cfg.block_k), jnp.float32))
  dk_KxD, dv_KxD, dlb_1xK = jax.lax.fori_loop(0, group * jnp.maximum(n_q, 0), body, init)
  dk_ref[...] = (dk_KxD * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_KxD.astype(dv_ref.dtype)
  if has_beta:
    dlb_ref[0][...] = dlb_1xK


def _whole_sequence_specs(cfg, group, tp, d, has_beta, has_seg):
  """Specs of (q, k, v, [log β], [segs]) for a query-block grid (b, h, g, i): the query
  block of its program, whole-sequence keys of its KV head."""
  specs = [pl.BlockSpec((_SQ, _SQ, _SQ, cfg.block_q, d), lambda b, h, g, i: (b, h, g, i, 0)),
           pl.BlockSpec((_SQ, _SQ, tp, d), lambda b, h, g, i: (b, h, 0, 0)),
           pl.BlockSpec((_SQ, _SQ, tp, d), lambda b, h, g, i: (b, h, 0, 0))]
  if has_beta:
    specs.append(pl.BlockSpec((_SQ, _SQ, 1, tp), lambda b, h, g, i: (b, h, 0, 0)))
  if has_seg:
    specs += [pl.BlockSpec((_SQ, cfg.block_q, 1), lambda b, h, g, i: (b, i, 0)),
              pl.BlockSpec((_SQ, 1, tp), lambda b, h, g, i: (b, 0, 0))]
  return specs


def _row_spec(cfg, width):
  """Spec of a q-layout tensor [B, Hkv, G, Tp, width] on a query-block grid."""
  return pl.BlockSpec((_SQ, _SQ, _SQ, cfg.block_q, width), lambda b, h, g, i: (b, h, g, i, 0))


def _params(cfg):
  return dict(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
              interpret=interpret_params("gpu", cfg.interpret))


def forward(cfg: FlashConfig, q, k, v, log_beta, segments):
  """(out [B, Hkv, G, Tp, D] in q's dtype, lse [B, Hkv, G, Tp, 1] float32)."""
  b, n_kv, group, tp, d = q.shape
  has_beta, has_seg = log_beta is not None, segments is not None
  return pl.pallas_call(
      functools.partial(_forward_kernel, cfg=cfg, has_beta=has_beta, has_seg=has_seg),
      grid=(b, n_kv, group, tp // cfg.block_q),
      in_specs=_whole_sequence_specs(cfg, group, tp, d, has_beta, has_seg),
      out_specs=[_row_spec(cfg, d), _row_spec(cfg, 1)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct(q.shape[:-1] + (1,), jnp.float32)],
      **_params(cfg))(*flash_layout.inputs(q, k, v, log_beta, segments))


def backward(cfg: FlashConfig, q, k, v, log_beta, segments, do, lse, delta):
  """(dq, dk, dv, d log β or None) in the kernel layout, from dO and the forward residuals."""
  b, n_kv, group, tp, d = q.shape
  has_beta, has_seg = log_beta is not None, segments is not None
  inputs = flash_layout.inputs(q, k, v, log_beta, segments) + [do, lse, delta]

  # dK, dV, d log β: one program per key block; queries of the whole group in one block.
  kv_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_k, d), lambda b, h, j: (b, h, j, 0))
  group_spec = lambda width: pl.BlockSpec((_SQ, _SQ, group, tp, width),
                                          lambda b, h, j: (b, h, 0, 0, 0))
  in_specs = [group_spec(d), kv_spec, kv_spec]
  out_specs = [kv_spec, kv_spec]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if has_beta:
    beta_spec = pl.BlockSpec((_SQ, _SQ, 1, cfg.block_k), lambda b, h, j: (b, h, 0, j))
    in_specs.append(beta_spec)
    out_specs.append(beta_spec)
    out_shape.append(jax.ShapeDtypeStruct(log_beta.shape, jnp.float32))
  if has_seg:
    in_specs += [pl.BlockSpec((_SQ, tp, 1), lambda b, h, j: (b, 0, 0)),
                 pl.BlockSpec((_SQ, 1, cfg.block_k), lambda b, h, j: (b, 0, j))]
  in_specs += [group_spec(d), group_spec(1), group_spec(1)]
  dk, dv, *dlb = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, group=group, has_beta=has_beta, has_seg=has_seg),
      grid=(b, n_kv, tp // cfg.block_k), in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, **_params(cfg))(*inputs)

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, has_beta=has_beta, has_seg=has_seg),
      grid=(b, n_kv, group, tp // cfg.block_q),
      in_specs=(_whole_sequence_specs(cfg, group, tp, d, has_beta, has_seg)
                + [_row_spec(cfg, d), _row_spec(cfg, 1), _row_spec(cfg, 1)]),
      out_specs=_row_spec(cfg, d), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      **_params(cfg))(*inputs)
  return dq, dk, dv, (dlb[0] if has_beta else None)
