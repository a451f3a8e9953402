"""Typed dataclass configs: YAML files, `key=value` overrides, type checks, dumps.

Any dataclass works as a config. Field annotations drive the checks: bool, int,
float, str, None, list[X], tuple[X, ...], tuple[X, Y], dict[K, V], X | None,
Literal[...], Any, and nested dataclasses (addressed with dotted keys such as
`eval.budgets=[0.25,0.125]`). Override values are parsed as YAML, so `n=8` is an
int, `names=[a,b]` a list of strings and `flag=true` a bool. A dataclass's own
`__post_init__` does the value checks (ranges, non-empty lists) on top.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
import types
import typing
from typing import Any, Literal, Sequence, TypeVar

import yaml

T = TypeVar("T")

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
  """A config file or override that does not fit its dataclass."""


def load_config(cls: type[T], yaml_path: str | None = None, overrides: Sequence[str] = ()) -> T:
  """Build a `cls` instance from defaults, then a YAML file, then `key=value` overrides.

  Args:
    cls: a dataclass type.
    yaml_path: YAML mapping of field names to values (nested mappings for nested
      dataclasses), or None for defaults only.
    overrides: strings "dotted.key=value", applied in order; values are parsed as YAML.

  Returns:
    The config instance (its `__post_init__` has run).

  Raises:
    ConfigError: an unknown key (with the nearest valid key suggested), a value of
      the wrong type, a malformed override, YAML syntax errors (with the line), or a file
      that cannot be read.
    FileNotFoundError: `yaml_path` does not exist.
  """
  values: dict[str, Any] = {}
  sources: dict[str, str] = {}
  if yaml_path is not None:
    data = _parse_yaml(read_config_text(yaml_path), str(yaml_path), is_file=True)
    if data is not None and not isinstance(data, dict):
      raise ConfigError(
          f"{yaml_path} must hold a mapping of config keys, not {type(data).__name__}")
    for key, value in (data or {}).items():
      _set(cls, values, sources, str(key), value, f"in {yaml_path}")
  for override in overrides:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
      raise ConfigError(f"override {override!r} must look like key=value, e.g. seed=1")
    value = _parse_yaml(text, f"override {override!r}", is_file=False) if text.strip() else None
    _set(cls, values, sources, key.strip(), value, f"in override {override!r}")
  return _build(cls, values, sources, prefix="")


def read_config_text(path: str | pathlib.Path) -> str:
  """The text of the config file `path`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ConfigError: `path` is not a file, cannot be read, or is not UTF-8 text.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")
  if not path.is_file():
    raise ConfigError(f"config file {str(path)!r} is not a file")
  try:
    return path.read_text(encoding="utf-8")
  except UnicodeDecodeError as err:
    raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}: "
                      f"{err.reason})") from err
  except OSError as err:
    raise ConfigError(f"config file {str(path)!r} cannot be read ({err.strerror or err})"
                      ) from err


def _parse_yaml(text: str, source: str, is_file: bool) -> Any:
  """`text` parsed as YAML; a syntax error becomes a ConfigError naming `source` and where
  the error is: "FILE:LINE:COLUMN: ..." for a file, "OVERRIDE, column N: ..." otherwise."""
  try:
    return yaml.safe_load(text)
  except yaml.YAMLError as err:
    mark = getattr(err, "problem_mark", None)
    if mark is None:
      where = source
    elif is_file:
      where = f"{source}:{mark.line + 1}:{mark.column + 1}"
    else:
      where = f"{source}, column {mark.column + 1}"
    problem = getattr(err, "problem", None) or str(err)
    raise ConfigError(f"{where}: invalid YAML: {problem}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
  """A config as plain YAML-safe data: nested dicts, lists (tuples become lists), scalars."""
  if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
    return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, (list, tuple)):
    return [config_to_dict(v) for v in cfg]
  if isinstance(cfg, dict):
    return {k: config_to_dict(v) for k, v in cfg.items()}
  return cfg


def dump_config(cfg: Any, path: str | None = None) -> str:
  """YAML text of a config (fields in declaration order); also written to `path` if given.

  `load_config(type(cfg), path)` reads it back to an equal config.
  """
  text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
  if path is not None:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(text, encoding="utf-8")
  return text


def _set(cls: type, values: dict, sources: dict, key: str, value: Any, where: str):
  """Record `value` under the dotted `key` after checking that the key exists in `cls`.

  A mapping given for a nested dataclass is recorded key by key, so later
  sources replace single keys of a section rather than the whole section.
  """
  root, path = cls, key.split(".")
  for depth, part in enumerate(path):
    fields = _field_types(cls)
    if part not in fields:
      prefix = ".".join(path[:depth])
      raise ConfigError(f"unknown config key {'.'.join(path[:depth + 1])!r} {where}"
                        + _suggestion(part, fields, prefix))
    cls = fields[part]
    is_last = depth == len(path) - 1
    if not is_last and not _is_dataclass_type(cls):
      raise ConfigError(f"config key {'.'.join(path[:depth + 1])!r} {where} is not a section; "
                        f"it has no sub-key {path[depth + 1]!r}")
  if _is_dataclass_type(cls) and isinstance(value, dict):
    for sub_key, sub_value in value.items():
      _set(root, values, sources, f"{key}.{sub_key}", sub_value, where)
  else:
    values[key] = value
    sources[key] = where


def _build(cls: type[T], values: dict, sources: dict, prefix: str, base: Any = None) -> T:
  """Instantiate `cls` from the flat `values` whose keys start with `prefix`.

  Fields without a value keep the class defaults, or those of `base` (the
  default instance of a nested section) when given.
  """
  kwargs, annotations = {}, _field_types(cls)
  for field in (f for f in dataclasses.fields(cls) if f.init):
    name, tp = field.name, annotations[field.name]
    key = prefix + name
    if _is_dataclass_type(tp):
      if key in values:
        raise ConfigError(f"config key {key!r} {sources[key]} is a section; set its keys "
                          f"(e.g. {key}.<name>=...) or give a mapping")
      if any(k.startswith(key + ".") for k in values):
        kwargs[name] = _build(tp, values, sources, key + ".", _default(field))
    elif key in values:
      kwargs[name] = _check(values[key], tp, key, sources[key])
  missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if missing and base is None:
    raise ConfigError(f"config {cls.__name__} needs a value for {[prefix + m for m in missing]}")
  try:
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
  except (TypeError, ValueError) as err:
    if isinstance(err, ConfigError):
      raise
    section = f" section {prefix[:-1]}" if prefix else ""
    raise ConfigError(f"invalid {cls.__name__}{section}: {err}") from err


def _default(field: dataclasses.Field) -> Any:
  """The default value of a dataclass field, or None if it has none."""
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return None if field.default is dataclasses.MISSING else field.default


def _check(value: Any, tp: Any, key: str, where: str) -> Any:
  """`value` converted to annotation `tp` (int -> float, list -> tuple), or ConfigError."""
  converted = _convert(value, tp)
  if converted is _MISMATCH:
    raise ConfigError(f"config key {key!r} {where} expects {_type_name(tp)}, "
                      f"got {value!r} ({type(value).__name__})" + _hint(value, tp, key))
  return converted


_MISMATCH = object()


def _convert(value: Any, tp: Any) -> Any:
  """`value` as type `tp`, or _MISMATCH."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if tp is Any:
    return value
  if tp is type(None) or tp is None:
    return None if value is None else _MISMATCH
  if origin is Literal:
    return value if any(value == a and type(value) is type(a) for a in args) else _MISMATCH
  if origin in (typing.Union, types.UnionType):
    for arm in args:
      converted = _convert(value, arm)
      if converted is not _MISMATCH:
        return converted
    return _MISMATCH
  if tp is bool:
    return value if isinstance(value, bool) else _MISMATCH
  if tp is int:
    return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
  if tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    # PyYAML reads "1e-3" (no dot) as a string.
    return float(value) if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value) else _MISMATCH
  if tp is str:
    return value if isinstance(value, str) else _MISMATCH
  if origin in (list, tuple) or tp in (list, tuple):
    return _convert_sequence(value, origin or tp, args)
  if origin is dict or tp is dict:
    if not isinstance(value, dict):
      return _MISMATCH
    key_tp, value_tp = args or (Any, Any)
    out = {_convert(k, key_tp): _convert(v, value_tp) for k, v in value.items()}
    return _MISMATCH if _MISMATCH in out or _MISMATCH in out.values() else out
  raise TypeError(f"config fields of type {tp!r} are not supported by memjax.config")


def _convert_sequence(value: Any, container: Any, args: tuple) -> Any:
  """A list/tuple `value` with each item converted, as a list or a tuple."""
  if not isinstance(value, (list, tuple)):
    return _MISMATCH
  if container is tuple and args and args[-1] is not Ellipsis:
    if len(value) != len(args):
      return _MISMATCH
    items = [_convert(v, a) for v, a in zip(value, args)]
  else:
    item_tp = args[0] if args else Any
    items = [_convert(v, item_tp) for v in value]
  if any(item is _MISMATCH for item in items):
    return _MISMATCH
  return tuple(items) if container is tuple else list(items)


def _field_types(cls: type) -> dict[str, Any]:
  """Field name -> resolved annotation, for a dataclass type."""
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_dataclass_type(tp: Any) -> bool:
  return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
  """Readable name of an annotation: 'list[float]', 'int | None', "one of 'a', 'b'"."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is Literal:
    return "one of " + ", ".join(repr(a) for a in args)
  if origin in (typing.Union, types.UnionType):
    return " | ".join(_type_name(a) for a in args)
  if tp is type(None):
    return "None"
  if origin is not None:
    inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
    return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
  return getattr(tp, "__name__", str(tp))


def _suggestion(word: str, choices, prefix: str = "") -> str:
  """A "did you mean" ending naming the closest choice, or else the list of valid keys."""
  close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
  if close:
    return f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"
  return f"; valid keys{' of ' + repr(prefix) if prefix else ''} are {sorted(choices)}"


def _hint(value: Any, tp: Any, key: str) -> str:
  """How to fix a common mistake: a misspelt choice, or a scalar where a list is due."""
  origin = typing.get_origin(tp)
  if origin is Literal and isinstance(value, str):
    choices = [a for a in typing.get_args(tp) if isinstance(a, str)]
    close = difflib.get_close_matches(value, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
  if origin in (list, tuple) and not isinstance(value, (list, tuple, dict)):
    return f"; write a list, e.g. {key}=[{value}]"
  return ""
