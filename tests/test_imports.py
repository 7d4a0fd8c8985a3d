"""No import circle among the project's modules (issue #24): config <-> recipes used to import each
other (recipes took `read_yaml` back from config inside a function); `benchmark.yaml_io` broke it.

The graph counts every import, also those inside functions: a lazy import only hides a circle
from the interpreter until the day someone moves it to the top of the file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods")


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            parts = p.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (top level or in a function)."""
    files = _module_files()
    graph = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from benchmark import recipes` imports a module; `from benchmark.x import f` the module x
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_reports_a_two_module_circle():
    """The checker itself: a -> b -> a is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_sees_function_level_imports_of_config_and_recipes():
    """config imports recipes inside functions (to expand recipes); the graph must see that edge,
    or the next test would pass on a graph that misses the lazy imports."""
    g = import_graph()
    assert "benchmark.recipes" in g["benchmark.config"]
    assert "benchmark.yaml_io" in g["benchmark.recipes"] and "benchmark.yaml_io" in g["benchmark.config"]


def test_no_import_circle_among_the_project_modules():
    assert "benchmark.config" not in import_graph()["benchmark.recipes"]
    assert cycles(import_graph()) == []


def test_recipes_imports_in_a_fresh_interpreter_without_loading_config():
    """A fresh interpreter: importing recipes loads neither config nor torch (validation and recipes
    stay cheap for the Snakefile's DAG build)."""
    code = ("import sys, benchmark.recipes; "
            "print(sorted(m for m in ('benchmark.config', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
