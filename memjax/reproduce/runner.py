"""Run one ablation's steps, skip the ones already finished, and keep its manifest current."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable

from memjax.config import config_to_dict
from memjax.reproduce import manifest
from memjax.reproduce.registry import RESULTS, SMALL_RESULTS, get_ablation


class ReproduceError(RuntimeError):
  """A step of an ablation failed, or it did not write what it should."""


def repository_root() -> pathlib.Path:
  """The clone memjax was installed from (editable install), which holds experiments/.

  Raises:
    FileNotFoundError: memjax is not running from a clone of its repository.
  """
  root = pathlib.Path(__file__).resolve().parents[2]
  if not (root / "experiments").is_dir() or not (root / "configs").is_dir():
    raise FileNotFoundError(
        f"{root} has no experiments/ and configs/: `memjax reproduce` runs the scripts of a "
        "clone of the repository; clone it and `pip install -e .` there")
  return root


def output_dir(small: bool, out: str | pathlib.Path | None = None) -> pathlib.Path:
  """Where an ablation writes: `out` if given, else experiments/results(/small) of the clone."""
  if out is not None:
    return pathlib.Path(out).absolute()
  return repository_root() / (SMALL_RESULTS if small else RESULTS)


def manifest_path(name: str, out: pathlib.Path) -> pathlib.Path:
  """`out`/NAME.manifest.json."""
  return out / f"{name}.manifest.json"


def reproduce(name: str, small: bool = False, out: str | pathlib.Path | None = None,
              redo: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Run ablation `name` (full, or with tiny settings if `small`) and return its manifest.

  Steps that a previous call finished with the same command and configs are skipped
  (unless `redo`); an interrupted step resumes from its own row log or checkpoints. The
  manifest (`out`/NAME.manifest.json) is rewritten after every step.

  Raises:
    ValueError: unknown ablation name.
    ReproduceError: a step failed, or the ablation did not write one of its outputs.
  """
  ablation = get_ablation(name)
  root = repository_root()
  out = output_dir(small, out)
  path = manifest_path(name, out)
  finished = {} if redo else {step["key"]: step for step in manifest.read(path).get("steps", [])
                               if step["status"] == "finished"}
  record: dict[str, Any] = {
      "name": name, "compares": ablation.compares, "small": small, "out_dir": str(out),
      "command": f"memjax reproduce {name}{' --small' if small else ''}",
      "started": manifest.now(), "finished": None, "git": manifest.git_state(root),
      "versions": manifest.versions(), "device": None, "seeds": {}, "configs": {},
      "steps": [], "outputs": []}
  for step in ablation.steps(out, small):
    configs = {label: config_to_dict(cfg) for label, cfg in _in_dir(root, step.configs).items()}
    record["configs"].update(configs)
    record["seeds"].update({label: cfg.get("seed") for label, cfg in configs.items()})
    key = hashlib.sha256(json.dumps([step.argv, configs], sort_keys=True, default=str)
                         .encode()).hexdigest()[:16]
    if key in finished:
      log(f"[reproduce {name}] already finished, skipped: {' '.join(step.argv)}")
      record["steps"].append(dict(finished[key], skipped_at=manifest.now()))
      continue
    entry = {"argv": ["python", *step.argv], "key": key, "status": "running",
             "started": manifest.now(), "git_commit": record["git"]["commit"]}
    record["steps"].append(entry)
    manifest.write(path, record)
    log(f"[reproduce {name}] running: python {' '.join(step.argv)}")
    started = time.perf_counter()
    returncode = subprocess.run([sys.executable, *step.argv], cwd=root).returncode
    entry.update(seconds=round(time.perf_counter() - started, 1), ended=manifest.now(),
                 status="finished" if returncode == 0 else f"failed (exit code {returncode})")
    manifest.write(path, record)
    if returncode:
      raise ReproduceError(
          f"step `python {' '.join(step.argv)}` of {name} failed with exit code {returncode}; "
          "fix the cause and run the same command again: finished steps are skipped and the "
          "failed one resumes")
  record["outputs"] = _outputs(ablation.outputs, out, name)
  record.update(device=manifest.device_info(), finished=manifest.now())
  manifest.write(path, record)
  return record


def _in_dir(path: pathlib.Path, fn: Callable[[], Any]) -> Any:
  """fn() with `path` as the working directory (steps name files relative to the clone)."""
  before = os.getcwd()
  os.chdir(path)
  try:
    return fn()
  finally:
    os.chdir(before)


def _outputs(patterns: tuple[str, ...], out: pathlib.Path, name: str) -> list[str]:
  """The files matching `patterns` under `out` (sorted names).

  Raises:
    ReproduceError: a pattern matches nothing.
  """
  found = []
  for pattern in patterns:
    matches = sorted(glob.glob(str(out / pattern)))
    if not matches:
      raise ReproduceError(f"{name} finished its steps but wrote no {out / pattern}; its script "
                         "must write it (see memjax/reproduce/registry.py)")
    found += [pathlib.Path(m).name for m in matches]
  return found
