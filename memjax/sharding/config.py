"""The `mesh` section of a config: mesh axis sizes, logical axis rules, multi-process setup."""

from __future__ import annotations

import dataclasses
import difflib

from memjax.sharding.logical import LOGICAL_NAMES

DEFAULT_AXES = {"data": -1, "fsdp": 1, "tensor": 1}
DEFAULT_RULES = {
    "batch": ["data", "fsdp"],
    "embed": ["fsdp"],
    "heads": ["tensor"],
    "kv_heads": ["tensor"],
    "mlp": ["tensor"],
    "vocab": ["tensor"],
    "gate_hidden": ["tensor"],
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """A device mesh and how arrays are laid out on it.

  Attributes:
    axes: mesh axis name -> size, in mesh order (the last axis varies fastest over devices,
      so put the axis with the most communication, "tensor", last). One size may be -1: it
      takes all remaining devices. The sizes must multiply to the number of devices.
    rules: logical axis name (memjax.sharding.logical.LOGICAL_NAMES) -> the mesh axes it is
      split over. Names without a rule are replicated. A dimension that its mesh axes do not
      divide falls back to replication over the axes that do not fit (see
      `memjax.sharding.rules.mesh_spec`), so a small model still runs on a large mesh.
    distributed: initialise `jax.distributed` (several processes or hosts) before the run.
    coordinator_address: "host:port" of process 0; None: from the environment
      (JAX_COORDINATOR_ADDRESS) or JAX's cluster auto-detection (TPU pods, SLURM, ...).
    num_processes: processes in the run; None: from JAX_NUM_PROCESSES or auto-detection.
    process_id: this process's index; None: from JAX_PROCESS_ID or auto-detection.
  """

  axes: dict[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_AXES))
  rules: dict[str, list[str]] = dataclasses.field(
      default_factory=lambda: {k: list(v) for k, v in DEFAULT_RULES.items()})
  distributed: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def __post_init__(self):
    if not self.axes:
      raise ValueError("mesh.axes is empty; give at least one axis, e.g. {data: -1}")
    bad = {name: size for name, size in self.axes.items() if size != -1 and size < 1}
    if bad or list(self.axes.values()).count(-1) > 1:
      raise ValueError(f"mesh.axes={self.axes}: sizes must be >= 1, with at most one -1 "
                       "(auto-filled from the device count)")
    for name in self.rules:
      if name not in LOGICAL_NAMES:
        raise ValueError(f"mesh.rules has an unknown logical axis {name!r}"
                         f"{_did_you_mean(name, LOGICAL_NAMES)}; logical axes are "
                         f"{list(LOGICAL_NAMES)}")
    used = {axis for mesh_axes in self.rules.values() for axis in mesh_axes}
    for axis in self.axes:
      if axis not in used:
        raise ValueError(f"mesh axis {axis!r} is used by no rule in mesh.rules, so nothing "
                         f"would be split over it{_did_you_mean(axis, used)}; map a logical "
                         f"axis to it (e.g. mesh.rules.batch=[{axis}]) or remove it")
    for name, mesh_axes in self.rules.items():
      for axis in mesh_axes:
        if axis not in self.axes:
          raise ValueError(f"mesh.rules.{name} uses mesh axis {axis!r}, which is not in "
                           f"mesh.axes {list(self.axes)}{_did_you_mean(axis, self.axes)}")


def _did_you_mean(name: str, choices) -> str:
  close = difflib.get_close_matches(name, list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""
