"""Import hygiene: every mtlkit module imports on its own, and no two modules import each other.

The graph is read from the source with ``ast``: a module-level import runs when the module is imported; a
function-level one (inside a ``def``) runs when the function is called. A cycle at module level breaks an import
outright (whichever side is imported first sees the other half-built); the function-level graph is kept apart and
checked too, since a cycle there means two modules that each need the other: the layers are wrong.
"""
from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtlkit"


def module_names() -> list[str]:
    """Every module of mtlkit as a dotted name (a package is its ``__init__``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = module_names()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(module-level, function-level) mtlkit modules that ``module`` imports.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    Imports under ``if TYPE_CHECKING:`` never run and are skipped.
    """
    is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
    path = PACKAGE.parent / (module.replace(".", "/") + ("/__init__.py" if is_package else ".py"))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for name in targets:
            while name and name not in known:  # "import mtlkit.data.real.base as b" or a name inside a module
                name = name.rpartition(".")[0]
            if name and name != module:
                (inner if in_function else top).add(name)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


@functools.cache
def import_graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = set(MODULES)
    top, inner = {}, {}
    for module in MODULES:
        top[module], inner[module] = imports_of(module, known)
    return top, inner


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_reader_sees_module_and_function_level_imports():
    top, inner = import_graphs()
    assert "mtlkit.meters" in top["mtlkit.tasks"]  # from mtlkit.meters import (...)
    assert "mtlkit.losses" in top["mtlkit.tasks"]  # from mtlkit import losses: a module, not the package
    assert "mtlkit.tasks" in inner["mtlkit.models.tiny"]  # imported inside a function
    assert "mtlkit.data.raycast" in top["mtlkit.data.synthetic"]  # from . import raycast (relative)
    assert "mtlkit.data.real.registry" in inner["mtlkit.data.datasets"]


def test_module_level_import_graph_is_acyclic():
    top, _ = import_graphs()
    cycle = find_cycle(top)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_cycle_even_counting_function_level_imports():
    top, inner = import_graphs()
    both = {m: top[m] | inner[m] for m in MODULES}
    cycle = find_cycle(both)
    assert cycle is None, ("import cycle through function-level imports: " + " -> ".join(cycle)
                           + "; move what both sides need into a lower module")


def test_tasks_and_metrics_layering():
    """losses -> meters -> tasks -> metrics: each imports only what lies below it."""
    top, inner = import_graphs()
    assert not (top["mtlkit.losses"] | inner["mtlkit.losses"]) & {"mtlkit.meters", "mtlkit.tasks", "mtlkit.metrics"}
    assert not (top["mtlkit.meters"] | inner["mtlkit.meters"]) & {"mtlkit.tasks", "mtlkit.metrics"}
    assert "mtlkit.metrics" not in top["mtlkit.tasks"] | inner["mtlkit.tasks"]


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module imported with no other mtlkit module loaded before it.

    One interpreter imports the heavy third-party libraries once, then forks one child per module: the child starts
    with no mtlkit module in ``sys.modules``, exactly like a fresh interpreter as far as mtlkit is concerned, at a
    fraction of the cost of starting ~100 interpreters that each import torch.
    """
    script = (
        "import importlib, os, sys, traceback\n"
        "import numpy, torch, torch.nn.functional  # shared by every child\n"
        "for lib in ('timm', 'matplotlib.pyplot', 'seaborn', 'pandas', 'PIL.Image', 'yaml', 'tqdm.auto'):\n"
        "    try:\n"
        "        importlib.import_module(lib)\n"
        "    except ImportError:\n"
        "        pass\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mtlkit']\n"
        "failed = []\n"
        f"for name in {MODULES!r}:\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(r)\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "            code = 0\n"
        "        except BaseException:\n"
        "            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())\n"
        "            code = 1\n"
        "        os._exit(code)\n"
        "    os.close(w)\n"
        "    message = os.read(r, 4096).decode()\n"
        "    os.close(r)\n"
        "    if os.waitpid(pid, 0)[1] != 0:\n"
        "        failed.append(f'{name}: {message}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, "modules that fail to import alone:\n" + result.stdout + result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_import_check_catches_a_broken_module(tmp_path):
    """The forked-child check reports a module whose import fails (here: a planted circular import)."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from cyc.a import A\nB = 2\n")
    code = ("import importlib, os\npid = os.fork()\nif pid == 0:\n    try:\n        importlib.import_module('cyc.a')\n"
            "        os._exit(0)\n    except ImportError:\n        os._exit(1)\n"
            "import sys; sys.exit(os.waitpid(pid, 0)[1] >> 8)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
