"""A `jax.sharding.Mesh` from a MeshConfig, after `jax.distributed` when the run needs it."""

from __future__ import annotations

import math
import os

import jax
from jax.sharding import AxisType, Mesh

from memjax.sharding.config import MeshConfig

# Read when a MeshConfig with distributed=true leaves the setting at None.
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(cfg: MeshConfig) -> None:
  """Join the multi-process run described by `cfg` (once; later calls do nothing).

  Settings left at None come from the environment, then from JAX's own cluster detection
  (Cloud TPU pods, SLURM, ...). Must run before any JAX computation in the process.
  """
  if not cfg.distributed or jax.distributed.is_initialized():
    return
  env_int = lambda name: int(os.environ[name]) if name in os.environ else None
  jax.distributed.initialize(
      coordinator_address=cfg.coordinator_address or os.environ.get(ENV_COORDINATOR),
      num_processes=cfg.num_processes if cfg.num_processes is not None
      else env_int(ENV_NUM_PROCESSES),
      process_id=cfg.process_id if cfg.process_id is not None else env_int(ENV_PROCESS_ID))


def mesh_shape(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
  """Axis sizes with the -1 filled in, checked against `n_devices`.

  Raises:
    ValueError: the sizes do not multiply to the device count (no compilation has happened).
  """
  fixed = math.prod(size for size in cfg.axes.values() if size != -1)
  auto = [name for name, size in cfg.axes.items() if size == -1]
  hint = (f"mesh.axes={cfg.axes} does not fit the {n_devices} devices "
          f"(jax.device_count()); ")
  if auto:
    if n_devices % fixed:
      raise ValueError(hint + f"the fixed sizes multiply to {fixed}, which does not divide "
                       f"{n_devices}; pick sizes whose product divides it")
    return {name: n_devices // fixed if name in auto else size
            for name, size in cfg.axes.items()}
  if fixed != n_devices:
    raise ValueError(hint + f"the sizes multiply to {fixed}; make the product {n_devices} "
                     "or set one axis to -1 to take the remaining devices")
  return dict(cfg.axes)


def build_mesh(cfg: MeshConfig) -> Mesh:
  """The mesh over every device of every process (joining `jax.distributed` first if asked).

  Axes are `Auto`: jit propagates shardings from the in/out shardings we give it.
  """
  initialize_distributed(cfg)
  shape = mesh_shape(cfg, jax.device_count())
  return jax.make_mesh(tuple(shape.values()), tuple(shape),
                       axis_types=(AxisType.Auto,) * len(shape))
