"""The kernel-side layout of flash attention, shared by the TPU and GPU kernels.

Public tensors are [B, T, H, D]. Kernels see heads before time, the G query heads of a
KV head on their own axis, and the sequence padded to whole blocks:

  q, out, dq:         [B, Hkv, G, Tp, D]
  k, v, dk, dv:       [B, Hkv, Tp, D]
  log β, d log β:     [B, Hkv, 1, Tp] float32 (a row per KV head: keys run along lanes)
  lse, delta:         [B, Hkv, G, Tp, 1] float32 (a column: queries run along sublanes)
  query segment ids:  [B, Tp, 1] int32; key segment ids: [B, 1, Tp] int32
"""

from __future__ import annotations

import dataclasses
import math

import einops
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Static settings of one flash-attention call (hashable: a `custom_vjp` nondiff arg).

  kv_len is the real sequence length T (keys at or past it are padding); block_q and
  block_k are tile lengths in tokens; Tp is a multiple of both.
  """
  causal: bool
  soft_cap: float | None
  scale: float
  kv_len: int
  block_q: int
  block_k: int
  interpret: bool


def padded_length(t: int, block_q: int, block_k: int) -> int:
  step = math.lcm(block_q, block_k)
  return -(-t // step) * step


def _pad_time(x, axis: int, length: int, fill=0):
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, constant_values=fill)


def to_kernel(q_BxTxHqxD, k_BxTxHkvxD, v_BxTxHkvxD, log_beta_BxTxHkv, segment_ids_BxT,
              length: int):
  """Public tensors -> kernel layout (see module docstring), padded to `length` tokens."""
  n_kv = k_BxTxHkvxD.shape[2]
  q = _pad_time(einops.rearrange(q_BxTxHqxD, "b t (h g) d -> b h g t d", h=n_kv), 3, length)
  k = _pad_time(einops.rearrange(k_BxTxHkvxD, "b t h d -> b h t d"), 2, length)
  v = _pad_time(einops.rearrange(v_BxTxHkvxD, "b t h d -> b h t d"), 2, length)
  log_beta = None
  if log_beta_BxTxHkv is not None:
    log_beta = _pad_time(einops.rearrange(log_beta_BxTxHkv.astype(jnp.float32),
                                          "b t h -> b h 1 t"), 3, length)
  segments = None
  if segment_ids_BxT is not None:
    seg = _pad_time(segment_ids_BxT.astype(jnp.int32), 1, length, fill=-1)
    segments = (seg[:, :, None], seg[:, None, :])
  return q, k, v, log_beta, segments


def q_from_kernel(x_BxHkvxGxTpxD: jax.Array, t: int) -> jax.Array:
  """Kernel layout -> [B, T, Hq, D] for q-shaped tensors (output, dq)."""
  return einops.rearrange(x_BxHkvxGxTpxD[:, :, :, :t], "b h g t d -> b t (h g) d")


def kv_from_kernel(x_BxHkvxTpxD: jax.Array, t: int) -> jax.Array:
  """Kernel layout -> [B, T, Hkv, D] for k-shaped tensors (dk, dv)."""
  return einops.rearrange(x_BxHkvxTpxD[:, :, :t], "b h t d -> b t h d")


def log_beta_from_kernel(x_BxHkvx1xTp: jax.Array, t: int) -> jax.Array:
  """Kernel layout -> [B, T, Hkv] for d log β."""
  return einops.rearrange(x_BxHkvx1xTp[:, :, 0, :t], "b h t -> b t h")


def last_q_block(cfg: FlashConfig):
  """Last query block holding a real token."""
  return (cfg.kv_len - 1) // cfg.block_q


def last_k_block(cfg: FlashConfig, i):
  """Last key block query block i needs (the causal diagonal, the end of the real keys)."""
  last = (cfg.kv_len - 1) // cfg.block_k
  if cfg.causal:
    last = jnp.minimum(last, (i * cfg.block_q + cfg.block_q - 1) // cfg.block_k)
  return last


def first_q_block(cfg: FlashConfig, j):
  """First query block that sees key block j."""
  return (j * cfg.block_k) // cfg.block_q if cfg.causal else 0


def inputs(q, k, v, log_beta, segments) -> list[jax.Array]:
  """Kernel operands in their fixed order: q, k, v, [log β], [query seg, key seg]."""
  return ([q, k, v] + ([] if log_beta is None else [log_beta])
          + ([] if segments is None else list(segments)))


def split_refs(refs, has_beta: bool, has_seg: bool):
  """Kernel refs in `inputs` order -> ((q, k, v, log β, q seg, k seg), remaining refs);
  absent operands are None."""
  q_ref, k_ref, v_ref, *rest = refs
  lb_ref = rest.pop(0) if has_beta else None
  qseg_ref, kseg_ref = (rest.pop(0), rest.pop(0)) if has_seg else (None, None)
  return (q_ref, k_ref, v_ref, lb_ref, qseg_ref, kseg_ref), rest
