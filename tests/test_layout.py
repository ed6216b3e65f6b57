"""The package's shape: no import circle, imports one way (DESIGN.md's layers), and a JAX worker that loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raytev"
# Lower layers never import higher ones; a package imports its own layer or lower (the root's API facade aside).
LAYERS = {"errors": 0, "staging": 0, "machine": 0, "ray_auth": 0, "bundled": 0, "progress": 0, "compat": 0,
          "config": 1, "model": 2, "data": 3, "modeling": 4, "tevax": 4, "cluster": 5, "training": 6, "encoding": 6, "reranking": 6,
          "index": 7, "eval": 7, "serving": 8, "workflows": 9, "diagnostics": 9, "cli": 10, "__main__": 10}


def module_names() -> dict[str, Path]:
    """Every raytev module by dotted name (a package by its __init__)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the raytev modules it imports, at module level or inside functions (both can close a circle)."""
    modules = module_names()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raytev"):
                targets = {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else
                           owner(node.module) for alias in node.names}
            elif isinstance(node, ast.Import):
                targets = {owner(alias.name) for alias in node.names if alias.name.startswith("raytev")}
            else:
                continue
            graph[name] |= targets - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_module_of_raytev_imports_itself_through_others():
    graph = import_graph()
    assert len(graph) > 90 and sum(map(len, graph.values())) > 200  # the graph was read, not empty
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_one_way():
    def layer(module: str) -> int:
        return LAYERS[module.split(".")[1]]

    upward = sorted(f"{module} -> {target}" for module, targets in import_graph().items() if module != "raytev"
                    for target in targets if target != "raytev" and layer(target) > layer(module))
    assert upward == []
    assert {module.split(".")[1] for module in module_names() if "." in module} <= set(LAYERS)  # every package placed


def test_the_jax_worker_imports_no_torch():
    pytest.importorskip("jax")
    code = ("import sys, raytev.training.worker, raytev.training.jax_backend; "
            "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers', 'peft')))")
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")]
    assert "raytev.training.jax_backend" in imported and "jax" in imported  # the trace covers the worker's imports
    assert [name for name in imported if name.split(".")[0] in ("torch", "transformers", "peft")] == []
    assert run.stdout.strip() == "[]"
