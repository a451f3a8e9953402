"""Training checkpoints with orbax: the train state and the data iterator's position, checksummed.

Step N lives in `<directory>/<N>/` with two orbax items, "state" (step, trainable params,
optimiser state, rng) and "data" (the iterator's JSON state), and `manifest.json`: the
size and sha256 of every file of the step. orbax writes a step into a temporary directory;
once every item is complete the manifest is written into it, last, and orbax then renames
the directory to `<N>`. A run killed mid-save leaves only the temporary directory, which the
next start removes. The two files orbax itself writes while renaming, `_CHECKPOINT_METADATA`
(timestamps) and `commit_success.txt`, come after the manifest and are not in it; restoring
does not depend on them.

Restoring verifies a step's files against its manifest first. A step without a manifest
(its save did not finish, or memjax wrote it before manifests existed), with a missing file
or with a file whose size or checksum differs is rejected with a `CheckpointWarning` that
names the file and why, and the newest step that verifies is used instead; if none does,
`CheckpointError`. A save that fails (the directory cannot be written, the disk is full)
raises `CheckpointError` naming the directory, at the next save or `check`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import warnings
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp

MANIFEST = "manifest.json"
# Written by orbax after the manifest, while it renames the step's temporary directory.
_ORBAX_COMMIT_RECORDS = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt"})
_TMP_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX
_CHUNK_BYTES = 1 << 20
_NO_MANIFEST = (f"it has no {MANIFEST} (its save did not finish, or it was saved before "
                "memjax wrote manifests)")


class CheckpointError(OSError):
  """A checkpoint directory that cannot be written, a save that failed, or no checkpoint
  that verifies. The message names the directory (and the file) and what to do."""


class CheckpointWarning(UserWarning):
  """A checkpoint failed verification and an older one is used instead."""


def write_manifest(step_dir: str | pathlib.Path) -> pathlib.Path:
  """Write `step_dir`/manifest.json: the size and sha256 of every file below `step_dir`.

  The manifest is written under a temporary name and renamed, so it is whole or absent.
  `Checkpointer` calls this for every save. Call it yourself only to vouch for a step
  that was saved before memjax wrote manifests.

  Returns:
    The manifest's path.
  """
  step_dir = pathlib.Path(step_dir)
  files = {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
           for name, path in _checked_files(step_dir)}
  partial = step_dir / f"{MANIFEST}.partial"
  with open(partial, "w", encoding="utf-8") as f:
    json.dump({"version": 1, "files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, step_dir / MANIFEST)
  return step_dir / MANIFEST


def verify(step_dir: str | pathlib.Path) -> str | None:
  """Why the checkpoint in `step_dir` cannot be trusted, or None if every file in its
  manifest is there with the recorded size and sha256."""
  step_dir = pathlib.Path(step_dir)
  manifest = step_dir / MANIFEST
  if not manifest.is_file():
    return _NO_MANIFEST
  try:
    entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    expected = {str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in entries.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
    return f"its {MANIFEST} is unreadable ({type(err).__name__}: {err})"
  for name, (size, digest) in sorted(expected.items()):
    path = step_dir / name
    if not path.is_file():
      return f"{name} is missing"
    if path.stat().st_size != size:
      return (f"{name} has {path.stat().st_size} bytes where {size} were saved (truncated or "
              "overwritten)")
    if _sha256(path) != digest:
      return f"{name} does not match its sha256 checksum (the file was damaged)"
  return None


def select_step(directory: pathlib.Path, steps: Iterable[int],
                step: int | None = None) -> tuple[int, dict[int, str]]:
  """The step to restore: `step`, or the newest of `steps` that verifies.

  Returns:
    (that step, {each newer step that failed verification: why}).

  Raises:
    FileNotFoundError: there is no checkpoint (for `step`).
    CheckpointError: `step` fails verification, or (without `step`) no step verifies.
  """
  steps = sorted(steps, reverse=True)
  if not steps or (step is not None and step not in steps):
    which = f" for step {step}" if step is not None else ""
    raise FileNotFoundError(f"no checkpoint{which} in {directory}; train first")
  rejected = {}
  for candidate in ([step] if step is not None else steps):
    why = verify(directory / str(candidate))
    if why is None:
      return candidate, rejected
    rejected[candidate] = why
  vouch = (f" If a step was saved before memjax wrote manifests and you trust it, vouch for "
           f"it with memjax.train.checkpoint.write_manifest('{directory}/STEP')."
           if _NO_MANIFEST in rejected.values() else "")
  if step is not None:
    raise CheckpointError(f"checkpoint step {step} in {directory} fails verification: "
                          f"{rejected[step]}.{vouch}")
  failures = "; ".join(f"step {s}: {why}" for s, why in rejected.items())
  raise CheckpointError(f"no checkpoint in {directory} verifies ({failures}). Delete the "
                        "damaged steps to start again, or point checkpoint_dir elsewhere."
                        + vouch)


class Checkpointer:
  """Saves (asynchronously) and restores train states under one directory.

  Args:
    directory: checkpoint directory (created if missing).
    keep: newest checkpoints kept; older ones are deleted.

  Raises:
    CheckpointError: `directory` cannot be created or written.
  """

  def __init__(self, directory: str | pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    _check_writable(self.directory)
    self._saving: int | None = None  # the step of the newest save started
    self._in_flight = False  # whether that save may still be running or unreported
    # Step directories are created in `save` itself: created in a background thread, a
    # failure leaves orbax's other threads waiting for it forever, and the process hangs.
    async_options = ocp.AsyncOptions(create_directories_asynchronously=False,
                                     post_finalization_callback=self._seal)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           async_options=async_options)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints (verified or not), oldest first."""
    return sorted(self._manager.all_steps())

  def newest_verified_step(self) -> int | None:
    """The newest step whose files match its manifest, or None."""
    try:
      return select_step(self.directory, self.all_steps())[0]
    except (FileNotFoundError, CheckpointError):
      return None

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Start saving `state` (any pytree of arrays) and `data_state` as step `step`.

    Waits for the previous save first. The arrays are copied to host memory, so the
    caller may donate `state` to the next step while the files are written in the
    background. Arrays spread over several processes go to orbax as they are: every
    process writes its own shards (orbax copies them to host before returning), and every
    process must call `save`.

    Raises:
      CheckpointError: this save or the previous one failed (the message names the step
        and the directory).
    """
    self.wait()
    host_state = jax.tree.map(
        lambda a: np.array(a, copy=True) if _is_local(a) else a, state)
    self._saving, self._in_flight = step, True
    try:
      started = self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state), data=ocp.args.JsonSave(data_state)))
    except Exception as err:  # orbax and tensorstore raise OSError, ValueError, ...
      raise self._failed(err) from err
    if not started:  # orbax saves no step at or below its newest
      raise CheckpointError(f"checkpoint step {step} was not saved: {self.directory} already "
                            f"holds step {max(self.all_steps())} (is another run writing there?)")

  def check(self) -> None:
    """Raise CheckpointError if the save in flight has failed; never waits for it."""
    if self._in_flight and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Block until every started save is complete on disk.

    Raises:
      CheckpointError: the save failed (raised once per failure).
    """
    try:
      self._manager.wait_until_finished()
    except Exception as err:
      raise self._failed(err) from err
    finally:
      self._in_flight = False

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, data_state) of step `step`, or of the newest step that verifies, shaped like
    the pytree `like`.

    Newer steps that fail verification are reported (CheckpointWarning, naming the file
    and why) and renamed to `<N>.rejected` (kept for inspection), so the run can save
    step N again. Leaves of `like` that are jax Arrays are restored with their sharding
    (each process reads its own shards), whatever mesh or process count wrote the
    checkpoint.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      CheckpointError: `step`, or every step, fails verification.
      ValueError: the checkpoint does not fit `like` (say, other trainable parameters).
    """
    step, rejected = select_step(self.directory, self.all_steps(), step)
    self._set_aside(rejected, step)
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

  def close(self) -> None:
    """Wait for the save in flight, then stop orbax's threads.

    Raises:
      CheckpointError: that save failed (unless `wait` or `check` already said so).
    """
    try:
      self.wait()
    finally:
      self._manager.close()

  def _seal(self) -> None:
    """orbax's hook once every item of the save in flight is written, before the step's
    temporary directory is renamed: the manifest goes in last."""
    tmp_dir = self.directory / f"{self._saving}{_TMP_SUFFIX}"
    if not tmp_dir.is_dir():
      raise CheckpointError(f"orbax did not write step {self._saving} to {tmp_dir}; this "
                            "orbax-checkpoint version is not supported")
    write_manifest(tmp_dir)

  def _failed(self, err: Exception) -> CheckpointError:
    """The error for a failed save of step `self._saving`."""
    return CheckpointError(
        f"saving checkpoint step {self._saving} to {self.directory} failed: {err}. The run "
        "stopped; make the directory writable (or free space), or set checkpoint_dir "
        "elsewhere, then run again to resume from the last checkpoint")

  def _set_aside(self, rejected: dict[int, str], chosen: int) -> None:
    """Rename each rejected step directory to `<N>.rejected` (first free name), warn, and
    make orbax forget those steps."""
    if not rejected:
      return
    for step, why in rejected.items():
      if jax.process_index() == 0:  # the directory is shared: one process renames
        target = _free_path(self.directory / f"{step}.rejected")
        (self.directory / str(step)).rename(target)
        warnings.warn(f"checkpoint step {step} in {self.directory} fails verification: {why}; "
                      f"resuming from step {chosen} instead (step {step} moved to {target})",
                      CheckpointWarning, stacklevel=3)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("memjax checkpoint: rejected steps set aside")
    self._manager.reload()


def _checked_files(step_dir: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
  """(name relative to step_dir, path) of every file a manifest covers, sorted."""
  skipped = _ORBAX_COMMIT_RECORDS | {MANIFEST, f"{MANIFEST}.partial"}
  return sorted((path.relative_to(step_dir).as_posix(), path)
                for path in step_dir.rglob("*")
                if path.is_file() and not (path.parent == step_dir and path.name in skipped))


def _sha256(path: pathlib.Path) -> str:
  """Hex sha256 of a file, read in 1 MiB pieces."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while piece := f.read(_CHUNK_BYTES):
      digest.update(piece)
  return digest.hexdigest()


def _check_writable(directory: pathlib.Path) -> None:
  """Create `directory` and write and delete a file in it, or raise CheckpointError."""
  probe = directory / f".memjax-write-test-{socket.gethostname()}-{os.getpid()}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as err:
    raise CheckpointError(f"checkpoint directory {directory} cannot be written "
                          f"({err.strerror or err}); make it writable or set checkpoint_dir "
                          "elsewhere") from err


def _free_path(path: pathlib.Path) -> pathlib.Path:
  """`path`, or `path`-1, `path`-2, ... : the first that does not exist."""
  candidate, n = path, 0
  while candidate.exists():
    n += 1
    candidate = path.with_name(f"{path.name}-{n}")
  return candidate


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
  resumes through `Checkpointer.restore`, which rebuilds the exact pytree types. Loads
  `step`, or the newest step that verifies (newer ones that fail are reported with a
  CheckpointWarning and left as they are).

  Raises:
    FileNotFoundError: no checkpoint (for that step) in `directory`.
    CheckpointError: `step`, or every step, fails verification.
  """
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step, rejected = select_step(directory, manager.all_steps(), step)
    for bad, why in rejected.items():
      warnings.warn(f"checkpoint step {bad} in {directory} fails verification: {why}; "
                    f"loading step {step} instead", CheckpointWarning, stacklevel=2)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored.state), step
  finally:
    manager.close()


def load_trainable(directory: str | pathlib.Path, step: int | None = None) -> tuple[dict, int]:
  """(trainable params as numpy arrays, step) of a checkpoint; see `load_state`."""
  state, step = load_state(directory, step)
  return state["trainable"], step
