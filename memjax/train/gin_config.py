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

A gin `import` line imports its module, running that module's code, while the file is read
and before memjax checks anything. memjax configs need no imports, so a file whose `import`
lines (its own or those of the files it includes) are not allowed explicitly
(`allow_imports=True`, `memjax train --gin-imports`) is refused before gin reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tokenize
import typing
from typing import Any, Sequence, TypeVar

import gin
import yaml
from gin import config_parser

from memjax.config import ConfigError, load_config, read_config_text

T = TypeVar("T")

_GIN_MODULE = "memjax"
# Where gin's messages say an error is (gin.utils appends it); the first one is the innermost.
_GIN_LOCATION = re.compile(r'\n  In (?:file "(?P<file>[^"]*)",|bindings string) line '
                           r'(?P<line>\d+)\n    (?P<text>[^\n]*)')
_registered: dict[str, type] = {}  # gin name -> dataclass registered under it
_seen_keys: list[tuple[str, str]] = []  # (scope, selector) of the last finalized gin config


@gin.config.register_finalize_hook
def _record_keys(config: dict) -> None:
  """Remember which (scope, selector) pairs a finalized gin config binds."""
  _seen_keys[:] = list(config)


def load_gin_config(cls: type[T], gin_path: str, overrides: Sequence[str] = (),
                    allow_imports: bool = False) -> T:
  """A `cls` config from defaults, then the bindings of a `.gin` file, then overrides.

  Args:
    cls: a dataclass config type (its nested dataclasses are its sections).
    gin_path: gin file; `include` statements and macros work as in gin.
    overrides: "dotted.key=value" strings applied after the file, as in `load_config`.
    allow_imports: run the file's `import` lines (gin imports each module, running its
      code); without it a file with an `import` line is refused before gin reads it.

  gin's global config is cleared before parsing and again after reading the bindings.

  Raises:
    ConfigError: gin syntax errors, `import` lines without allow_imports, unknown
      configurables or keys, scoped bindings, non-literal values, wrong types, missing
      includes (each message names the file, and the line or the binding).
    FileNotFoundError: `gin_path` does not exist.
  """
  imports = gin_imports(gin_path)
  if imports and not allow_imports:
    path, line, statement = imports[0]
    more = f" (and {len(imports) - 1} more)" if len(imports) > 1 else ""
    raise ConfigError(f"{path}:{line}: `{statement}`{more} would import a Python module, "
                      "running its code, while the config is read; memjax configs need no "
                      "imports. Remove the line, or if you trust the file, allow its imports "
                      "with --gin-imports (allow_imports=True)")
  sections = _sections(cls)
  _register(sections)
  gin.clear_config()
  try:
    gin.parse_config_file(gin_path)
    gin.finalize()
    bindings = {name: gin.get_bindings(f"{_GIN_MODULE}.{name}") for name in sections}
  except (SyntaxError, tokenize.TokenError) as err:
    raise _syntax_error(err, gin_path) from err
  except (ValueError, TypeError, LookupError, NameError, AttributeError, ImportError,
          OSError) as err:
    raise ConfigError(f"{_located(str(err), gin_path)}{_configurable_hint(str(err), sections)}"
                      ) from err
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


def gin_imports(gin_path: str) -> list[tuple[str, int, str]]:
  """(file, line, statement) of each `import` line of a gin file and of the files it
  includes (found as gin finds them, relative to the working directory), read without
  importing anything. `from __gin__ import ...` lines switch on gin features and are left out.

  Raises:
    FileNotFoundError: `gin_path` does not exist.
    ConfigError: a file cannot be read, an included file does not exist, or a gin syntax
      error (each naming the file and line).
  """
  found, pending, seen = [], [(str(gin_path), None)], set()
  while pending:
    path, included_at = pending.pop()
    if path in seen:
      continue
    seen.add(path)
    if included_at is not None and not os.path.isfile(path):
      raise ConfigError(f"{included_at}: `include {path!r}`: no such file (relative paths "
                        "start from the working directory)")
    try:
      for statement in config_parser.ConfigParser(read_config_text(path), _InertDelegate()):
        if isinstance(statement, config_parser.IncludeStatement):
          pending.append((statement.filename, f"{path}:{statement.location.line_num}"))
        elif (isinstance(statement, config_parser.ImportStatement)
              and not statement.module.startswith("__gin__.")):
          found.append((path, statement.location.line_num, statement.format()))
    except (SyntaxError, tokenize.TokenError) as err:
      raise _syntax_error(err, path) from err
  return found


class _InertDelegate(config_parser.ParserDelegate):
  """Parses `@references` and `%macros` into nothing: for reading a file's statements."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return None

  def macro(self, macro_name):
    return None


def _syntax_error(err: SyntaxError | tokenize.TokenError, gin_path: str) -> ConfigError:
  """A gin syntax error as a ConfigError "FILE:LINE: gin syntax error: ..."."""
  if isinstance(err, SyntaxError):
    return ConfigError(f"{err.filename or gin_path}:{err.lineno}: gin syntax error: {err.msg}")
  message, (line, _) = err.args  # tokenize reached the end of the file inside a statement
  return ConfigError(f"{gin_path}:{line}: gin syntax error: {message} (an unclosed bracket "
                     "or string?)")


def _located(message: str, gin_path: str) -> str:
  """A gin error message with its location suffix ('\n  In file "F", line N\n    TEXT')
  turned into a "F:N: message (in `TEXT`)" prefix, or prefixed with `gin_path`."""
  match = _GIN_LOCATION.search(message)
  if match is None:
    return f"{gin_path}: {message}"
  return (f"{match['file'] or gin_path}:{match['line']}: {message[:match.start()]} "
          f"(in `{match['text'].strip()}`)")


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
