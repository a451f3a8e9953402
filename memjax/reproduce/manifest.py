"""What a reproduce run records next to its outputs: versions, git commit, devices, times."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import platform
import subprocess
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "memjax")


def now() -> str:
  """The current UTC time, ISO 8601 to the second."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
  """Python and PACKAGES versions (None for a package that is not installed)."""
  found: dict[str, str | None] = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def git_state(root: pathlib.Path) -> dict[str, Any]:
  """{"commit", "dirty"} of the repository at `root`; None values outside a git checkout."""
  def git(*args: str) -> str | None:
    try:
      done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      return None
    return done.stdout.strip() if done.returncode == 0 else None

  commit = git("rev-parse", "HEAD")
  status = git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info() -> dict[str, Any]:
  """{"platform", "kind", "count"} of the default JAX backend (e.g. "tpu", "TPU v2", 8)."""
  import jax
  devices = jax.devices()
  return {"platform": jax.default_backend(), "kind": devices[0].device_kind,
          "count": len(devices)}


def read(path: pathlib.Path) -> dict[str, Any]:
  """A manifest written by `write`, or {} when there is none."""
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write(path: pathlib.Path, manifest: dict[str, Any]) -> None:
  """Write `manifest` as indented JSON, atomically (a kill never leaves half a file)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix(".json.partial")
  partial.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
  partial.replace(path)
