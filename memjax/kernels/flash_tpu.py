"""Retention-decayed flash attention as Pallas Mosaic (TPU) kernels: forward, dK/dV/dlog β, dQ.

Each grid step holds one (batch row, KV head) tile pair in VMEM: the G query heads of the
KV head stacked as rows ([G·block_q, D]) against block_k keys, so K/V are read once per
group and never repeated. The innermost grid axis walks the reduction ("arbitrary"); the
running statistics live in VMEM scratch and the output is written at its last step.
Causal tiles above the diagonal and tiles of pure padding are skipped, and their index
maps repeat the previous block so that no DMA is issued for them.

Status: verified only under the TPU interpreter on CPU (`pltpu.InterpretParams`, with race
detection and NaN-filled buffers); never compiled for or run on a real TPU. Block shapes
follow Mosaic's tiling rules (last two block dims divisible by (8, 128) or full), but the
lowering of the in-kernel reshapes and column vectors is unverified.

Tensor layouts are those of `flash_layout`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from memjax.kernels import flash_layout, tiles
from memjax.kernels.backend import interpret_params
from memjax.kernels.flash_layout import FlashConfig

_SQ = pl.squeezed


def _tile_needed(cfg: FlashConfig, i, j):
  needed = (j * cfg.block_k < cfg.kv_len) & (i * cfg.block_q < cfg.kv_len)
  if cfg.causal:
    needed &= j * cfg.block_k <= i * cfg.block_q + cfg.block_q - 1
  return needed


def _specs(cfg: FlashConfig, group: int, d: int, q_block, k_block, has_beta, has_seg):
  """BlockSpecs of (q, k, v, [log β], [q seg, k seg]) given grid -> (q block, k block) maps."""
  bq, bk = cfg.block_q, cfg.block_k
  specs = [_q_row_spec(cfg, group, d, q_block),
           pl.BlockSpec((_SQ, _SQ, bk, d), lambda b, h, *g: (b, h, k_block(*g), 0)),
           pl.BlockSpec((_SQ, _SQ, bk, d), lambda b, h, *g: (b, h, k_block(*g), 0))]
  if has_beta:
    specs.append(pl.BlockSpec((_SQ, _SQ, 1, bk), lambda b, h, *g: (b, h, 0, k_block(*g))))
  if has_seg:
    specs += [pl.BlockSpec((_SQ, bq, 1), lambda b, h, *g: (b, q_block(*g), 0)),
              pl.BlockSpec((_SQ, 1, bk), lambda b, h, *g: (b, 0, k_block(*g)))]
  return specs


def _q_row_spec(cfg, group, width, q_block):
  """Spec of a q-layout tensor [B, Hkv, G, Tp, width] (q, out, dO, dq, lse, delta)."""
  return pl.BlockSpec((_SQ, _SQ, group, cfg.block_q, width),
                      lambda b, h, *g: (b, h, 0, q_block(*g), 0))


def _load_tile(cfg, group, i, j, q_ref, k_ref, lb_ref, qseg_ref, kseg_ref):
  """Tile (i, j) from its refs: (q [R, D], logits, tanh, visible, distance)."""
  q_RxD = q_ref[...].reshape(group * cfg.block_q, q_ref.shape[-1])
  load = lambda ref: None if ref is None else ref[...]
  return (q_RxD, *tiles.flash_logits(cfg, group, i * cfg.block_q, j * cfg.block_k, q_RxD,
                                     k_ref[...], load(lb_ref), load(qseg_ref), load(kseg_ref)))


def _forward_kernel(*refs, cfg, group, has_beta, has_seg):
  (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), rest = flash_layout.split_refs(
      refs, has_beta, has_seg)
  o_ref, lse_ref, max_ref, sum_ref, acc_ref = rest
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(_tile_needed(cfg, i, j))
  def _step():
    _, s, _, _, _ = _load_tile(cfg, group, i, j, q_ref, k_ref, lb_ref, qseg_ref, kseg_ref)
    max_ref[...], sum_ref[...], acc_ref[...] = tiles.online_softmax(
        s, v_ref[...], max_ref[...], sum_ref[...], acc_ref[...])

  @pl.when(j == pl.num_programs(3) - 1)
  def _write():
    out_RxD, lse_Rx1 = tiles.finish(max_ref[...], sum_ref[...], acc_ref[...])
    o_ref[...] = out_RxD.reshape(o_ref.shape).astype(o_ref.dtype)
    lse_ref[...] = lse_Rx1.reshape(lse_ref.shape)


def _dkv_kernel(*refs, cfg, group, has_beta, has_seg):
  (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), rest = flash_layout.split_refs(
      refs, has_beta, has_seg)
  do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *rest = rest
  dlb_ref = rest.pop(0) if has_beta else None
  dk_acc, dv_acc, dlb_acc = rest
  j, i = pl.program_id(2), pl.program_id(3)
  rows = group * cfg.block_q

  @pl.when(i == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)
    dlb_acc[...] = jnp.zeros(dlb_acc.shape, jnp.float32)

  @pl.when(_tile_needed(cfg, i, j))
  def _step():
    q_RxD, s, tanh, visible, distance = _load_tile(cfg, group, i, j, q_ref, k_ref, lb_ref,
                                                   qseg_ref, kseg_ref)
    do_RxD = do_ref[...].reshape(rows, do_ref.shape[-1])
    p, ds, dscore = tiles.logit_grads(s, tanh, visible, v_ref[...], do_RxD,
                                      lse_ref[...].reshape(rows, 1),
                                      delta_ref[...].reshape(rows, 1))
    dv_acc[...] += tiles.matmul_tn(p.astype(do_RxD.dtype), do_RxD)
    dk_acc[...] += tiles.matmul_tn(dscore.astype(q_RxD.dtype), q_RxD)
    if has_beta:
      dlb_acc[...] += tiles.log_beta_grad(ds, distance)

  @pl.when(i == pl.num_programs(3) - 1)
  def _write():
    dk_ref[...] = (dk_acc[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)
    if has_beta:
      dlb_ref[...] = dlb_acc[...]


def _dq_kernel(*refs, cfg, group, has_beta, has_seg):
  (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), rest = flash_layout.split_refs(
      refs, has_beta, has_seg)
  do_ref, lse_ref, delta_ref, dq_ref, dq_acc = rest
  i, j = pl.program_id(2), pl.program_id(3)
  rows = group * cfg.block_q

  @pl.when(j == 0)
  def _init():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  @pl.when(_tile_needed(cfg, i, j))
  def _step():
    _, s, tanh, visible, _ = _load_tile(cfg, group, i, j, q_ref, k_ref, lb_ref, qseg_ref,
                                        kseg_ref)
    _, _, dscore = tiles.logit_grads(s, tanh, visible, v_ref[...],
                                     do_ref[...].reshape(rows, do_ref.shape[-1]),
                                     lse_ref[...].reshape(rows, 1),
                                     delta_ref[...].reshape(rows, 1))
    dq_acc[...] += tiles.matmul(dscore.astype(k_ref.dtype), k_ref[...])

  @pl.when(j == pl.num_programs(3) - 1)
  def _write():
    dq_ref[...] = (dq_acc[...] * cfg.scale).reshape(dq_ref.shape).astype(dq_ref.dtype)


def _query_major(cfg: FlashConfig, b, n_kv, tp):
  """Grid (B, Hkv, q blocks, k blocks) and the (q block, k block) index maps."""
  grid = (b, n_kv, tp // cfg.block_q, tp // cfg.block_k)
  q_block = lambda i, j: jnp.minimum(i, flash_layout.last_q_block(cfg))
  k_block = lambda i, j: jnp.minimum(j, flash_layout.last_k_block(cfg, i))
  return grid, q_block, k_block


def _own_q_block(i, j):
  """Outputs of a query-major grid go to the grid's own query block, padding included."""
  del j
  return i


def _params(cfg):
  return dict(compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
              interpret=interpret_params("tpu", cfg.interpret))


def forward(cfg: FlashConfig, q, k, v, log_beta, segments):
  """(out [B, Hkv, G, Tp, D] in q's dtype, lse [B, Hkv, G, Tp, 1] float32)."""
  b, n_kv, group, tp, d = q.shape
  has_beta, has_seg = log_beta is not None, segments is not None
  grid, q_block, k_block = _query_major(cfg, b, n_kv, tp)
  rows = group * cfg.block_q
  kernel = functools.partial(_forward_kernel, cfg=cfg, group=group, has_beta=has_beta,
                             has_seg=has_seg)
  inputs = flash_layout.inputs(q, k, v, log_beta, segments)
  return pl.pallas_call(
      kernel, grid=grid,
      in_specs=_specs(cfg, group, d, q_block, k_block, has_beta, has_seg),
      out_specs=[_q_row_spec(cfg, group, d, _own_q_block),
                 _q_row_spec(cfg, group, 1, _own_q_block)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct(q.shape[:-1] + (1,), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((rows, 1), jnp.float32), pltpu.VMEM((rows, 1), jnp.float32),
                      pltpu.VMEM((rows, d), jnp.float32)],
      **_params(cfg))(*inputs)


def backward(cfg: FlashConfig, q, k, v, log_beta, segments, do, lse, delta):
  """(dq, dk, dv, d log β or None) in the kernel layout, from dO and the forward residuals."""
  dk, dv, dlog_beta = backward_dkv(cfg, q, k, v, log_beta, segments, do, lse, delta)
  return backward_dq(cfg, q, k, v, log_beta, segments, do, lse, delta), dk, dv, dlog_beta


def backward_dkv(cfg: FlashConfig, q, k, v, log_beta, segments, do, lse, delta):
  """(dk, dv, d log β or None): grid (B, Hkv, key blocks, query blocks), reducing over
  query blocks in VMEM."""
  b, n_kv, group, tp, d = q.shape
  has_beta, has_seg = log_beta is not None, segments is not None
  grid = (b, n_kv, tp // cfg.block_k, tp // cfg.block_q)
  q_block = lambda j, i: jnp.minimum(jnp.maximum(i, flash_layout.first_q_block(cfg, j)),
                                     flash_layout.last_q_block(cfg))
  k_block = lambda j, i: j
  kv_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_k, d), lambda b, h, j, i: (b, h, j, 0))
  out_specs = [kv_spec, kv_spec]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if has_beta:
    out_specs.append(pl.BlockSpec((_SQ, _SQ, 1, cfg.block_k), lambda b, h, j, i: (b, h, 0, j)))
    out_shape.append(jax.ShapeDtypeStruct(log_beta.shape, jnp.float32))
  row_specs = [_q_row_spec(cfg, group, d, q_block), _q_row_spec(cfg, group, 1, q_block),
               _q_row_spec(cfg, group, 1, q_block)]
  dk, dv, *dlog_beta = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, group=group, has_beta=has_beta, has_seg=has_seg),
      grid=grid, in_specs=_specs(cfg, group, d, q_block, k_block, has_beta, has_seg) + row_specs,
      out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((cfg.block_k, d), jnp.float32),
                      pltpu.VMEM((cfg.block_k, d), jnp.float32),
                      pltpu.VMEM((1, cfg.block_k), jnp.float32)],
      **_params(cfg))(*flash_layout.inputs(q, k, v, log_beta, segments), do, lse, delta)
  return dk, dv, (dlog_beta[0] if has_beta else None)


def backward_dq(cfg: FlashConfig, q, k, v, log_beta, segments, do, lse, delta):
  """dq: grid (B, Hkv, query blocks, key blocks), reducing over key blocks in VMEM."""
  b, n_kv, group, tp, d = q.shape
  has_beta, has_seg = log_beta is not None, segments is not None
  grid, q_block, k_block = _query_major(cfg, b, n_kv, tp)
  row_specs = [_q_row_spec(cfg, group, d, q_block), _q_row_spec(cfg, group, 1, q_block),
               _q_row_spec(cfg, group, 1, q_block)]
  return pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, group=group, has_beta=has_beta, has_seg=has_seg),
      grid=grid, in_specs=_specs(cfg, group, d, q_block, k_block, has_beta, has_seg) + row_specs,
      out_specs=_q_row_spec(cfg, group, d, _own_q_block),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      scratch_shapes=[pltpu.VMEM((group * cfg.block_q, d), jnp.float32)],
      **_params(cfg))(*flash_layout.inputs(q, k, v, log_beta, segments), do, lse, delta)
