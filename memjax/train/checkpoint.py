"""Training checkpoints with orbax: the train state and the data iterator's position.

Step N lives in `<directory>/<N>/` with two items: "state" (step, trainable params,
optimiser state, rng) and "data" (the iterator's JSON state). orbax writes each step to a
temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact, and the unfinished one is cleaned up on the next start.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves (asynchronously) and restores train states under one directory.

  Args:
    directory: checkpoint directory (created if missing).
    keep: newest checkpoints kept; older ones are deleted.
  """

  def __init__(self, directory: str | pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Start saving `state` (any pytree of arrays) and `data_state` as step `step`.

    The arrays are copied to host memory first, so the caller may donate `state` to the
    next step while the files are written in the background. Arrays spread over several
    processes go to orbax as they are: every process writes its own shards (orbax copies
    them to host before returning), and every process must call `save`.
    """
    host_state = jax.tree.map(
        lambda a: np.array(a, copy=True) if _is_local(a) else a, state)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state), data=ocp.args.JsonSave(data_state)))

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, data_state) of step `step` (default: newest), shaped like the pytree `like`.

    Leaves of `like` that are jax Arrays are restored with their sharding (each process
    reads its own shards), whatever mesh or process count wrote the checkpoint.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      ValueError: the checkpoint does not fit `like` (say, other trainable parameters).
    """
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
    mismatch = (f"the checkpoint of step {step} in {self.directory} does not fit this run "
                "(other trainable params or optimiser?); train with the config it was made "
                "with, or point checkpoint_dir elsewhere")
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                       sharding=a.sharding if isinstance(a, jax.Array) else None),
        like)
    saved = {leaf.name: leaf.shape
             for leaf in jax.tree.leaves(self._manager.item_metadata(step).state.tree)}
    for path, want in jax.tree_util.tree_leaves_with_path(abstract):
      got = saved.get(_orbax_name(path), want.shape)  # a missing leaf: orbax says so below
      if tuple(got) != want.shape:
        raise ValueError(f"{mismatch}: {jax.tree_util.keystr(path)} is saved with shape "
                         f"{list(got)}, expected {list(want.shape)}")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    except ValueError as err:
      raise ValueError(f"{mismatch}: {err}") from err
    state = jax.tree.unflatten(jax.tree.structure(like),
                               [jax.numpy.asarray(a) for a in jax.tree.leaves(restored.state)])
    return state, restored.data

  def wait(self) -> None:
    """Block until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _orbax_name(key_path) -> str:
  """The name orbax gives a leaf in its metadata: keys, indices and fields joined by "."."""
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in key_path)


def _is_local(a: Any) -> bool:
  """Whether this process holds all of `a` (then it can be copied to host memory)."""
  return not isinstance(a, jax.Array) or a.is_fully_addressable


def load_state(directory: str | pathlib.Path, step: int | None = None) -> tuple[dict, int]:
  """(saved train state as nested dicts of numpy arrays, step), without knowing its shapes.

  For evaluation and inspection (keys "step", "trainable", "opt_state", "rng"); training
  resumes through `Checkpointer.restore`, which rebuilds the exact pytree types.

  Raises:
    FileNotFoundError: no checkpoint (for that step) in `directory`.
  """
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; train first")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored.state), step
  finally:
    manager.close()


def load_trainable(directory: str | pathlib.Path, step: int | None = None) -> tuple[dict, int]:
  """(trainable params as numpy arrays, step) of a checkpoint; see `load_state`."""
  state, step = load_state(directory, step)
  return state["trainable"], step
