"""Every memjax module imports, and the module import graph has no cycle.

The graph counts every import statement of a module, those inside functions included (a
function-level import is how a cycle usually hides). An edge `from memjax.a import b`
goes to the module memjax.a.b when that is a module, else to memjax.a.
"""

import ast
import importlib
import pathlib

import pytest

import memjax

ROOT = pathlib.Path(memjax.__file__).parent


def module_names() -> dict[str, pathlib.Path]:
  """Dotted name -> file of every module under memjax (a package by its __init__.py)."""
  names = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


def import_graph() -> dict[str, set[str]]:
  """Module -> the memjax modules its import statements name."""
  modules = module_names()
  graph = {}
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        edges |= {alias.name for alias in node.names if alias.name in modules}
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          package = name if is_package else name.rpartition(".")[0]
          for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
          base = ".".join(filter(None, [package, node.module]))
        else:
          base = node.module or ""
        for alias in node.names:
          target = f"{base}.{alias.name}"
          edges.add(target if target in modules else base)
    graph[name] = {e for e in edges if e in modules and e != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_a_cycle():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
  graph = import_graph()
  assert "memjax.models.llama" in graph and graph["memjax.kernels.flash"]
  assert cycles(graph) == []


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports(name):
  importlib.import_module(name)
