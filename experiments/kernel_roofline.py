"""Paper roofline of the Pallas attention kernels: FLOPs, HBM bytes, intensity, expected time.

Nothing here runs a kernel: it counts what the kernels in `memjax.kernels` would do at
training shapes (flash attention, forward and backward) and decode shapes (split-K decode)
with their default block sizes, from the same tile-visiting rules the kernels use, and
prices it on TPU v5e and H100 spec-sheet numbers. The kernels themselves have run only in
interpret mode on CPU.

    python experiments/kernel_roofline.py            # prints the tables
    python experiments/kernel_roofline.py --write    # also writes them into kernels.md

Model (per layer call):
  - executed FLOPs count whole tiles (diagonal tiles are computed in full); "useful" FLOPs
    use the FlashAttention convention (forward 4·D, backward 10·D per visible pair, so the
    backward recompute in two kernels counts as waste);
  - bytes count every block DMA (TPU: a block is fetched when its index changes between
    consecutive grid steps; GPU: every program reads its own K/V, an upper bound that L2
    reuse lowers), the layout copies [B,T,H,D] <-> [B,H,T,D] around the kernels, and TPU's
    tiled HBM layout (an f32 column [T, 1] occupies 128 lanes, a row [1, T] 8 sublanes);
  - time = max(executed FLOPs / peak, bytes / bandwidth[, exps / exp rate on H100])
    + grid steps × per-step overhead (TPU); "of peak" = useful-FLOP time / that time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib

from memjax.kernels.decode import DEFAULT_BLOCK_S, round_rows, round_slots
from memjax.kernels.flash import default_blocks, short_block
from memjax.kernels.flash_layout import FlashConfig, first_q_block, last_k_block, padded_length

RESULTS = pathlib.Path(__file__).parent / "results" / "kernels.md"
BEGIN, END = "<!-- roofline:begin -->", "<!-- roofline:end -->"


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  flops: float          # dense bf16 matmul FLOP/s
  bandwidth: float      # HBM bytes/s
  step_overhead: float  # seconds per grid step (TPU pipeline), 0 for GPU
  exp_rate: float       # exponentials/s, inf where not modelled
  column_bytes: int     # bytes an f32 [T, 1] column takes per row in HBM
  row_bytes: int        # bytes an f32/int32 [1, T] row takes per entry in HBM


# Spec sheets: v5e 197 TFLOP/s bf16, 819 GB/s; H100 SXM 989 TFLOP/s dense bf16, 3.35 TB/s.
# ~0.35 us per grid step: Pallas TPU pipelining docs. H100 exp rate 3.9e12/s (MUFU): the
# FlashAttention-3 paper. TPU exp/VPU throughput is not modelled (see kernels.md).
CHIPS = {"tpu": Chip("TPU v5e", 197e12, 819e9, 0.35e-6, math.inf, 512, 32),
         "gpu": Chip("H100 SXM", 989e12, 3.35e12, 0.0, 3.9e12, 4, 4)}
MODELS = {"SmolLM2-135M": (9, 3, 64), "8B-class": (32, 8, 128)}   # (Hq, Hkv, D)
BF16 = 2


def flash_counts(backend: str, t: int, n_heads: int, n_kv: int, d: int, blocks=None,
                 batch: int = 1):
  """(executed FLOPs, useful FLOPs, bytes, exps, grid steps) of forward + backward with
  tiles `blocks` = (block_q, block_k) (default: what `flash_attention` picks)."""
  chip = CHIPS[backend]
  bq, bk = blocks or default_blocks(backend, n_heads // n_kv)
  bq, bk = min(bq, short_block(t, backend)), min(bk, short_block(t, backend))
  cfg = FlashConfig(causal=True, soft_cap=None, scale=1.0, kv_len=t, block_q=bq, block_k=bk,
                    interpret=False)
  tp = padded_length(t, bq, bk)
  group, nq, nk = n_heads // n_kv, tp // bq, tp // bk
  real_q, real_k = (t - 1) // bq + 1, (t - 1) // bk + 1
  tiles = sum(int(last_k_block(cfg, i)) + 1 for i in range(real_q))
  tiles_by_key = sum(real_q - int(first_q_block(cfg, j)) for j in range(real_k))
  rows = group * bq
  q_block, kv_block = rows * d * BF16, 2 * bk * d * BF16     # q (or dO) of the group; K and V
  stats_block = rows * chip.column_bytes                       # lse or delta
  beta_block = bk * chip.row_bytes
  # Forward and dQ stream K/V per visited tile; dK/dV streams q, dO, lse, delta per visited
  # tile. On GPU the G programs of a query block read the same K/V tile (L2 reuse assumed).
  forward = real_q * q_block + tiles * (kv_block + beta_block) + nq * (q_block + stats_block)
  dkv = tiles_by_key * (2 * q_block + 2 * stats_block) + 2 * real_k * (kv_block + beta_block)
  dq = tiles * (kv_block + beta_block) + real_q * (2 * q_block + 2 * stats_block) + nq * q_block
  steps = 3 * nq * nk if backend == "tpu" else 0
  delta = 2 * group * t * d * BF16 + group * t * chip.column_bytes
  layout = 2 * 2 * t * d * BF16 * (2 * group + 2)       # [B,T,H,D] <-> [B,H,T,D], fwd and bwd
  per_head = batch * n_kv
  executed = per_head * (4 + 8 + 6) * rows * bk * d * tiles
  useful = per_head * (4 + 10) * d * t * (t + 1) / 2 * group
  exps = per_head * 3 * rows * bk * tiles
  total_bytes = per_head * (forward + dkv + dq + delta + layout)
  return executed, useful, total_bytes, exps, per_head * steps


def tpu_vmem_bytes(group: int, d: int, bq: int, bk: int) -> int:
  """VMEM working set of the dK/dV kernel (the largest): double-buffered blocks, scratch
  and the float32 tile temporaries (s, p, dp, ds)."""
  rows = group * bq
  blocks = 2 * (2 * rows * d * BF16 + 2 * rows * 512 + 2 * bk * d * BF16 + 32 * bk
                + 2 * bk * d * BF16 + 32 * bk)
  return blocks + 2 * bk * d * 4 + 32 * bk + 4 * rows * bk * 4


def decode_counts(backend: str, s: int, batch: int, n_heads: int, n_kv: int, d: int,
                  chunk: int = 1, slot_mass: bool = True):
  """(FLOPs, bytes, essential bytes, grid steps) of one decode call (kernel + combine) over
  the S + C candidate slots of a layer; essential = reading K, V and q, writing out."""
  chip = CHIPS[backend]
  group, slots = n_heads // n_kv, s + chunk
  block = min(DEFAULT_BLOCK_S[backend], round_slots(slots, backend))
  n_blocks = -(-slots // block)
  rows = round_rows(group * chunk, backend)
  per_head = batch * n_kv
  numerators = rows * slots * 4 if slot_mass else 0
  partials = n_blocks * rows * (d * 4 + 2 * chip.column_bytes)
  kernel = 2 * slots * d * BF16 + slots * chip.row_bytes + rows * d * BF16 + partials + numerators
  combine = partials + 2 * numerators + (chunk * slots * 4 if slot_mass else 0) + rows * d * BF16
  essential = 2 * slots * d * BF16 + 2 * rows * d * BF16
  flops = 4 * per_head * rows * n_blocks * block * d
  return flops, per_head * (kernel + combine), per_head * essential, per_head * n_blocks


def _time(chip: Chip, flops: float, nbytes: float, exps: float = 0.0, steps: int = 0) -> float:
  return max(flops / chip.flops, nbytes / chip.bandwidth, exps / chip.exp_rate) + (
      steps * chip.step_overhead)


def training_table() -> str:
  lines = ["| model | T | chip | blocks (q×k) | GFLOP exec / useful | GB | FLOP/B | "
           "model ms | of peak |", "|---|---|---|---|---|---|---|---|---|"]
  for model, (hq, hkv, d) in MODELS.items():
    for t in (4096, 8192, 16384, 32768):
      for backend, chip in CHIPS.items():
        executed, useful, nbytes, exps, steps = flash_counts(backend, t, hq, hkv, d)
        seconds = _time(chip, executed, nbytes, exps, steps)
        bq, bk = default_blocks(backend, hq // hkv)
        lines.append(
            f"| {model} | {t} | {chip.name} | {bq}×{bk} | {executed / 1e9:.0f} / "
            f"{useful / 1e9:.0f} | {nbytes / 1e9:.2f} | {executed / nbytes:.0f} | "
            f"{seconds * 1e3:.2f} | {useful / chip.flops / seconds:.0%} |")
  return "\n".join(lines)


BLOCK_CHOICES = {"tpu": [(128, 128), (256, 256), (256, 512), (512, 512), (512, 1024)],
                 "gpu": [(64, 64), (128, 64), (128, 128)]}


def block_table(t: int = 16384) -> str:
  """Model time of forward + backward for candidate tiles, one layer at T = t."""
  lines = ["| model | chip | blocks (q×k) | grid steps | GB | model ms | of peak | "
           "VMEM (dK/dV kernel) |", "|---|---|---|---|---|---|---|---|"]
  for model, (hq, hkv, d) in MODELS.items():
    for backend, chip in CHIPS.items():
      for bq, bk in BLOCK_CHOICES[backend]:
        executed, useful, nbytes, exps, steps = flash_counts(backend, t, hq, hkv, d, (bq, bk))
        seconds = _time(chip, executed, nbytes, exps, steps)
        vmem = (f"{tpu_vmem_bytes(hq // hkv, d, bq, bk) / 2**20:.1f} MiB"
                if backend == "tpu" else "n/a")
        chosen = " (default)" if (bq, bk) == default_blocks(backend, hq // hkv) else ""
        lines.append(f"| {model} | {chip.name} | {bq}×{bk}{chosen} | {steps} | "
                     f"{nbytes / 1e9:.2f} | {seconds * 1e3:.2f} | "
                     f"{useful / chip.flops / seconds:.0%} | {vmem} |")
  return "\n".join(lines)


def decode_table() -> str:
  lines = ["| model | S | batch | chip | block S | MFLOP | FLOP/B | MB (mass on / off) | "
           "model µs (on / off) | of HBM roofline (on / off) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for model, (hq, hkv, d) in MODELS.items():
    for s in (512, 2048, 8192):
      for batch in (1, 8, 64):
        for backend, chip in CHIPS.items():
          cells = []
          for mass in (True, False):
            flops, nbytes, essential, steps = decode_counts(backend, s, batch, hq, hkv, d,
                                                            slot_mass=mass)
            seconds = _time(chip, flops, nbytes, steps=steps)
            cells.append((nbytes, seconds, essential / chip.bandwidth / seconds))
          flops, nbytes, _, _ = decode_counts(backend, s, batch, hq, hkv, d)
          block = min(DEFAULT_BLOCK_S[backend], round_slots(s + 1, backend))
          lines.append(
              f"| {model} | {s} | {batch} | {chip.name} | {block} | {flops / 1e6:.1f} | "
              f"{flops / nbytes:.1f} | {cells[0][0] / 1e6:.2f} / {cells[1][0] / 1e6:.2f} | "
              f"{cells[0][1] * 1e6:.1f} / {cells[1][1] * 1e6:.1f} | "
              f"{cells[0][2]:.0%} / {cells[1][2]:.0%} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true", help="update experiments/results/kernels.md")
  args = parser.parse_args()
  sections = [
      ("Tile choice: forward + backward, one layer, T = 16384, batch 1, bf16", block_table()),
      ("Training: flash attention with decay, forward + backward, one layer, batch 1, bf16",
       training_table()),
      ("Decode: one query token (C = 1) over S + 1 candidate slots, one layer, bf16 cache, "
       "kernel + combine", decode_table())]
  body = "\n\n".join(f"### {title}\n\n{table}" for title, table in sections)
  tables = f"{BEGIN}\n\n{body}\n\n{END}"
  print(tables)
  if args.write:
    text = RESULTS.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    RESULTS.write_text(text[:start] + tables + text[end:])


if __name__ == "__main__":
  main()
