"""Where a run's attention kernels lie: its device mesh and logical axis rules, decided once.

A run builds one `Placement` (`Placement.of(mesh_config)`, or `Placement.on(mesh, rules)`)
and traces its programs under it: `with placed(placement): ...` around the code that
traces, or `traced_under(placement, fn)` for a function handed to `jax.jit` (its tracing
sees the placement whenever it happens). The model code never takes a mesh: the kernel
wrappers of `memjax.sharding.kernels` read `current()` while they are traced.

A compiled program keeps the placement it was traced under, so a jitted function that may
run on several placements is built once per placement (`sharded_chunk_step` keys its
programs by mesh and rules; the one-device chunk step is traced under `Placement()`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator, TypeVar

import jax
from jax.sharding import Mesh

from memjax.sharding.config import DEFAULT_RULES, MeshConfig
from memjax.sharding.rules import Rules

F = TypeVar("F", bound=Callable)


@dataclasses.dataclass(frozen=True)
class Placement:
  """A device mesh (None: one device, nothing split) and its logical axis rules.

  rules: (logical name, mesh axes) pairs, hashable; `logical_rules` as a mapping
  (`DEFAULT_RULES` when empty).
  """
  mesh: Mesh | None = None
  rules: tuple[tuple[str, tuple[str, ...]], ...] = ()

  @classmethod
  def on(cls, mesh: Mesh | None, rules: Rules | None = None) -> "Placement":
    """The placement on `mesh` under `rules` (default `DEFAULT_RULES`)."""
    frozen = tuple((name, tuple(axes)) for name, axes in (rules or DEFAULT_RULES).items())
    return cls(mesh, frozen if mesh is not None else ())

  @classmethod
  def of(cls, config: MeshConfig) -> "Placement":
    """The placement of a run's `mesh` config: no mesh on one device, else the mesh it
    describes over every device."""
    if jax.device_count() == 1:
      return cls()
    from memjax.sharding.mesh import build_mesh
    return cls.on(build_mesh(config), config.rules)

  @property
  def logical_rules(self) -> Rules:
    return {name: list(axes) for name, axes in self.rules} if self.rules else DEFAULT_RULES


_CURRENT: contextvars.ContextVar[Placement] = contextvars.ContextVar("memjax_placement",
                                                                    default=Placement())


def current() -> Placement:
  """The placement code is being traced under (`Placement()` outside any `placed`)."""
  return _CURRENT.get()


@contextlib.contextmanager
def placed(placement: Placement) -> Iterator[Placement]:
  """Trace everything inside under `placement`."""
  token = _CURRENT.set(placement)
  try:
    yield placement
  finally:
    _CURRENT.reset(token)


def traced_under(placement: Placement, fn: F) -> F:
  """`fn`, run (and so traced, inside `jax.jit`) under `placement`."""
  @functools.wraps(fn)
  def run(*args, **kwargs):
    with placed(placement):
      return fn(*args, **kwargs)

  return run  # type: ignore[return-value]
