"""Sharding across devices and hosts with JAX's own runtime.

A `MeshConfig` (the `mesh` section of a config) names mesh axes and their sizes ("data",
"fsdp", "tensor"; -1 takes the remaining devices) and maps logical axis names to them.
Every parameter, optimiser-state, batch and cache dimension carries a logical name
(`logical`); `rules` turns names into `NamedSharding`s that `jax.jit` takes as in/out
shardings. `distributed=true` joins `jax.distributed` first, so the same config runs on one
CPU, a TPU slice or several hosts.
"""

from memjax.sharding.config import DEFAULT_AXES, DEFAULT_RULES, MeshConfig
from memjax.sharding.layout import (batch_sharding, cache_shardings, param_shardings,
                                    state_shardings)
from memjax.sharding.mesh import build_mesh, initialize_distributed, mesh_shape
from memjax.sharding.placement import Placement, current, placed, traced_under
from memjax.sharding.rules import mesh_spec, put, replicated

__all__ = [
    "DEFAULT_AXES", "DEFAULT_RULES", "MeshConfig", "Placement", "batch_sharding", "build_mesh",
    "cache_shardings", "current", "initialize_distributed", "mesh_shape", "mesh_spec",
    "param_shardings", "placed", "put", "replicated", "state_shardings", "traced_under",
]
