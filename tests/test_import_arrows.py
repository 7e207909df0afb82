"""The arrows of the code base, checked from the source: experiments -> train -> models ->
sparse_ops, inside experiments stats <- tasks <- spec <- evaluation <- runs <- {tools, analysis}
<- cli, nothing but the CLI imports the analysis (which reads study folders only through
runs.files and runs.results), and no import circle between modules. Function-level imports
count: a circle through one is a circle in the design."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"sparse_ops": 0, "models": 1, "train": 2, "experiments": 3}
# Layers inside experiments: a module may import its own layer and those below it.
LAYERS = {"stats": 0, "tasks": 1, "spec": 2, "evaluation": 3, "runs": 4, "tools": 5,
          "analysis": 5, "cli": 6, "__main__": 7}
# What the analysis may read of the run store: the JAX-free file and schema modules.
ANALYSIS_MAY_READ = {"experiments.runs.files", "experiments.runs.results", "experiments.runs"}


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, Path]:
  return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
  """Our modules that `name` imports, module- or function-level (`from a import b` counts as
  a.b when that is a module, else as a)."""
  is_pkg = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        here = here[:len(here) - node.level + 1]
        base = ".".join(here + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in known:  # `import experiments.tasks.scoring.x` -> the module part
        t = t.rpartition(".")[0]
      if t and t != name:
        out.add(t)
  return out


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _edges(g: dict[str, set[str]]) -> list[tuple[str, str]]:
  return sorted((a, b) for a, bs in g.items() for b in bs)


def _circles(g: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected groups of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in g.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        out.append(sorted(group))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def _layer(mod: str) -> tuple[int, int | None, str]:
  parts = mod.split(".")
  sub = parts[1] if parts[0] == "experiments" and len(parts) > 1 else None
  return PACKAGES[parts[0]], LAYERS.get(sub) if sub else None, sub or ""


def _violations(g: dict[str, set[str]]) -> list[str]:
  bad = []
  for a, b in _edges(g):
    (pa, la, sa), (pb, lb, sb) = _layer(a), _layer(b)
    if pb > pa:
      bad.append(f"{a} -> {b}: against experiments -> train -> models -> sparse_ops")
    elif pa == pb == 3 and la is not None and lb is not None and sa != sb:
      if sb == "analysis" and sa not in ("cli", "__main__"):
        bad.append(f"{a} -> {b}: only the CLI imports experiments.analysis")
      elif lb >= la:
        bad.append(f"{a} -> {b}: against the layers of experiments {LAYERS}")
      elif sa == "analysis" and sb == "runs" and b not in ANALYSIS_MAY_READ:
        bad.append(f"{a} -> {b}: the analysis reads study folders through "
                   f"{sorted(ANALYSIS_MAY_READ)} only")
  return bad


def test_no_import_against_the_arrows():
  assert _violations(_graph()) == []


def _without_package_inits(g: dict[str, set[str]]) -> dict[str, set[str]]:
  """A package's __init__ re-exporting its modules, which import each other through the
  package, is how Python packages work, not a circle between modules: drop package nodes."""
  pkgs = {m for m in g if (REPO / m.replace(".", "/") / "__init__.py").exists()}
  return {a: {b for b in bs if b not in pkgs} for a, bs in g.items() if a not in pkgs}


def test_no_import_circles():
  assert _circles(_without_package_inits(_graph())) == []


def test_the_checker_catches_what_it_looks_for():
  """Constructed graphs: each rule fires on the edge it forbids and not on allowed ones."""
  edges = [("models.config", "train.loop"), ("experiments.runs.job",
           "experiments.analysis.report"), ("experiments.spec.grid",
           "experiments.evaluation.evaluate"), ("experiments.analysis.report",
           "experiments.runs.store"), ("experiments.runs.job", "experiments.spec.grid"),
           ("experiments.analysis.report", "experiments.runs.results"),
           ("experiments.cli", "experiments.analysis.report")]
  g: dict[str, set[str]] = {}
  for a, b in edges:
    g.setdefault(a, set()).add(b)
  bad = _violations(g)
  assert len(bad) == 4, bad
  assert sorted(b.split(":")[0] for b in bad) == [
      "experiments.analysis.report -> experiments.runs.store",
      "experiments.runs.job -> experiments.analysis.report",
      "experiments.spec.grid -> experiments.evaluation.evaluate",
      "models.config -> train.loop"]


def test_circles_are_found():
  g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
  assert _circles(g) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["experiments.analysis.report", "experiments.runs.results",
                                    "experiments.stats"])
def test_the_analysis_imports_no_jax(module):
  code = f"import sys, {module}; print('jax' in sys.modules, 'models' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ["False", "False"], f"importing {module} loads jax/models: {out}"
