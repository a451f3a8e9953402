"""The frozen teacher's outputs computed once per training row and kept on disk.

TRIM-KV distils the frozen model into its gated self, so every step used to run the teacher's
forward pass beside the student's. Batch i is a pure function of (seed, i), and so are the
teacher's outputs: `TeacherCache` stores its top-k log-probabilities per batch index as
`DIR/<i>.npz` ("ids" int32 [B, T, k], "logp" float32 [B, T, k]) the first time batch i is
seen, and reads them after that. Runs that share data (the variants of one fast experiment
loop, a resumed run, a second epoch) skip the teacher entirely; a step then runs only the
gated student. The distillation term becomes the KL between the teacher and the student
coarsened to the teacher's top-k tokens plus one "everything else" bucket
(`memjax.retention.losses.topk_kl`), a
lower bound of the full KL that is tight when the top k hold almost all the mass.

Files are written under a temporary name and renamed, so a run killed mid-write leaves no
partial file; a file whose shapes do not fit the batch is an error that names it.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from memjax.models import llama
from memjax.models.config import ModelConfig


def teacher_topk(params, tokens_BxT: jax.Array, cfg: ModelConfig,
                 k: int) -> tuple[jax.Array, jax.Array]:
  """(ids int32 [B, T, k], log-probabilities float32 [B, T, k]) of the model's k most
  likely next tokens at every position, most likely first."""
  logp_BxTxV = jax.nn.log_softmax(llama.forward(params, tokens_BxT, cfg).astype(jnp.float32))
  logp, ids = jax.lax.top_k(logp_BxTxV, k)
  return ids.astype(jnp.int32), logp


class TeacherCache:
  """Top-k teacher outputs per batch index under `directory`, computed on first use.

  Args:
    directory: where `<index>.npz` files live (created if missing).
    compute: tokens int32 [B, T] -> (ids [B, T, k], logp [B, T, k]), e.g. a jitted
      `teacher_topk` with the frozen params bound.
    k: the number of tokens kept per position.
  """

  def __init__(self, directory: str | pathlib.Path, compute: Callable, k: int):
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.compute, self.k = compute, k
    self.hits = self.misses = 0

  def get(self, index: int, tokens_BxT: np.ndarray) -> dict[str, np.ndarray]:
    """{"teacher_ids", "teacher_logp"} of batch `index` (whose tokens are `tokens_BxT`)."""
    path = self.directory / f"{index}.npz"
    if path.exists():
      with np.load(path) as f:
        ids, logp = f["ids"], f["logp"]
      if ids.shape != (*tokens_BxT.shape, self.k) or logp.shape != ids.shape:
        raise ValueError(f"teacher cache file {str(path)!r} holds shape {ids.shape}, not "
                         f"{(*tokens_BxT.shape, self.k)}: it belongs to other settings; "
                         "delete the directory or set another teacher_cache_dir")
      self.hits += 1
    else:
      ids, logp = (np.asarray(a) for a in self.compute(tokens_BxT))
      tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
      with tmp.open("wb") as f:
        np.savez(f, ids=ids, logp=logp.astype(np.float32))
      tmp.replace(path)
      self.misses += 1
    return {"teacher_ids": ids, "teacher_logp": logp}


class WithTeacher:
  """A resumable batch iterator whose batches also carry the cached teacher outputs."""

  def __init__(self, batches: Any, cache: TeacherCache):
    self.batches, self.cache = batches, cache

  def __next__(self) -> dict[str, np.ndarray]:
    index = self.batches.get_state()["position"]
    batch = next(self.batches)
    return {**batch, **self.cache.get(index, batch["tokens"])}

  def get_state(self) -> dict[str, Any]:
    return self.batches.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self.batches.set_state(state)


def cached_teacher_batches(batches: Any, frozen_params, cfg: ModelConfig, k: int,
                           directory: str | pathlib.Path) -> WithTeacher:
  """`batches` with the frozen model's top-k outputs from (or written to) `directory`."""
  compute = jax.jit(functools.partial(teacher_topk, cfg=cfg, k=k))
  return WithTeacher(batches, TeacherCache(directory, lambda x: compute(frozen_params, x), k))
