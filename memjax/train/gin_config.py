"""Typed dataclass configs bound from `.gin` files (gin-config syntax, memjax.config checks).

Every dataclass in a config's tree is a gin configurable named after its class, so a
TrainConfig file reads

    LR = 2e-4                        # gin macros work
    TrainConfig.lr = %LR
    TrainConfig.steps = 500
    MethodConfig.name = 'next_token'
    TrimKVConfig.memory_M = 128

Gin only parses; each binding becomes the override `dotted.key=value` of
`memjax.config.load_config`, so types, value checks and "did you mean" suggestions are
exactly those of a YAML file. Scoped bindings (`scope/TrainConfig.lr`) are rejected: nothing
would ever enter the scope.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import pathlib
import typing
from typing import Any, Sequence, TypeVar

import gin
import yaml

from memjax.config import ConfigError, load_config

T = TypeVar("T")

_GIN_MODULE = "memjax"
_registered: dict[str, type] = {}  # gin name -> dataclass registered under it
_seen_keys: list[tuple[str, str]] = []  # (scope, selector) of the last finalized gin config


@gin.config.register_finalize_hook
def _record_keys(config: dict) -> None:
  """Remember which (scope, selector) pairs a finalized gin config binds."""
  _seen_keys[:] = list(config)


def load_gin_config(cls: type[T], gin_path: str, overrides: Sequence[str] = ()) -> T:
  """A `cls` config from defaults, then the bindings of a `.gin` file, then overrides.

  Args:
    cls: a dataclass config type (its nested dataclasses are its sections).
    gin_path: gin file; `include` and `import` statements and macros work as in gin.
    overrides: "dotted.key=value" strings applied after the file, as in `load_config`.

  gin's global config is cleared before parsing and again after reading the bindings.

  Raises:
    ConfigError: gin syntax errors, unknown configurables or keys, scoped bindings,
      non-literal values, wrong types (each message names the file and the binding).
    FileNotFoundError: `gin_path` does not exist.
  """
  if not pathlib.Path(gin_path).is_file():
    raise FileNotFoundError(f"config file {gin_path!r} does not exist")
  sections = _sections(cls)
  _register(sections)
  gin.clear_config()
  try:
    gin.parse_config_file(gin_path)
    gin.finalize()
    bindings = {name: gin.get_bindings(f"{_GIN_MODULE}.{name}") for name in sections}
  except (ValueError, TypeError, LookupError) as err:
    raise ConfigError(f"{gin_path}: {err}{_configurable_hint(str(err), sections)}") from err
  finally:
    gin.clear_config()
  scoped = [f"{scope}/{selector.rsplit('.', 1)[-1]}" for scope, selector in _seen_keys
            if scope and selector.rsplit(".", 1)[-1] in sections]
  if scoped:
    raise ConfigError(f"{gin_path}: scoped bindings {scoped} are never used; "
                      "drop the scope (write e.g. TrainConfig.lr = ...)")
  gin_overrides, names = [], []
  try:
    for name, values in bindings.items():
      for key, value in values.items():
        gin_overrides.append(f"{sections[name][1]}{key}={_yaml_text(value, f'{name}.{key}')}")
        names.append(f"{name}.{key}")
    return load_config(cls, None, gin_overrides + list(overrides))
  except ConfigError as err:
    binding = next((n for n, o in zip(names, gin_overrides) if repr(o) in str(err)), None)
    where = f" (gin binding {binding})" if binding else ""
    raise ConfigError(f"{gin_path}{where}: {err}") from err


def _sections(cls: type) -> dict[str, tuple[type, str]]:
  """Class name -> (dataclass, dotted key prefix) for `cls` and every nested section."""
  out: dict[str, tuple[type, str]] = {}

  def visit(tp: type, prefix: str) -> None:
    if tp.__name__ in out:
      raise ConfigError(f"{tp.__name__} appears twice in {cls.__name__}; gin cannot tell the "
                        "two sections apart")
    out[tp.__name__] = (tp, prefix)
    hints = typing.get_type_hints(tp)
    for field in dataclasses.fields(tp):
      sub = hints[field.name]
      if isinstance(sub, type) and dataclasses.is_dataclass(sub):
        visit(sub, f"{prefix}{field.name}.")

  visit(cls, "")
  return out


def _register(sections: dict[str, tuple[type, str]]) -> None:
  """Make each section a gin configurable that accepts any key (load_config checks keys).

  The configurable returns its bindings as a dict, so `TrainConfig.method =
  @MethodConfig()` also works: it becomes a section mapping.
  """
  for name, (tp, _) in sections.items():
    if name in _registered:
      if _registered[name] is not tp:
        raise ConfigError(f"two config classes are named {name}; gin needs distinct names")
      continue

    def fields(**values: Any) -> dict[str, Any]:
      return values

    gin.external_configurable(fields, name=name, module=_GIN_MODULE)
    _registered[name] = tp


def _yaml_text(value: Any, binding: str) -> str:
  """`value` as one line of YAML (tuples become lists), for a `key=value` override."""
  def plain(v):
    if isinstance(v, (list, tuple)):
      return [plain(x) for x in v]
    if isinstance(v, dict):
      return {k: plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
      return v
    raise ConfigError(f"gin binding {binding} = {v!r} is not a literal value; bind numbers, "
                      "strings, booleans, None or lists of them")

  text = yaml.safe_dump(plain(value), default_flow_style=True, width=math.inf)
  return text.strip().removesuffix("...").strip()


def _configurable_hint(message: str, sections: dict) -> str:
  """A "did you mean" for a misspelt configurable name in a gin error message."""
  if "No configurable matching reference" in message:
    return "\nbind literal values (numbers, strings, booleans, None, lists), not @references"
  if "No configurable matching" not in message:
    return ""
  word = message.split("'")[1] if message.count("'") >= 2 else ""
  close = difflib.get_close_matches(word.rsplit(".", 1)[-1], list(sections), n=1)
  return (f"\ndid you mean {close[0]!r}?" if close
          else f"\nconfigurables are {sorted(sections)}")
