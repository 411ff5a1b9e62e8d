"""The engine's shape: no import cycle, layers that import only downwards, no Streamlit in
the core, and no comment that points outside the repository.

Every import counts, function-level and ``TYPE_CHECKING`` ones included: a lazy import
hides a cycle from the interpreter, not from the next engineer. docs/ARCHITECTURE.md draws
the same layers as ``LAYERS`` below; change both together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mneme_core"

# Bottom first. A module may import from its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("common",),
    ("run",),
    ("collect", "benchmarks"),
    ("dictionary", "interventions"),
    ("analysis", "interp"),
    ("evaluation",),
    ("views",),
    ("demo", "cli"),
]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the mneme_core modules it imports (``from pkg import sub`` counts as ``sub``)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "mneme_core"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "mneme_core":
                    continue
                subs = {f"{target}.{a.name}" for a in node.names} & modules.keys()
                deps |= subs or {target}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def layer_of(module: str) -> int | None:
    """The layer index of a module below mneme_core; None for the package itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for i, group in enumerate(LAYERS):
        if parts[1] in group:
            return i
    raise AssertionError(f"{module} is in no layer; add its folder to LAYERS and docs/ARCHITECTURE.md")


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "mneme_core"
    (pkg / "x").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x" / "__init__.py").write_text("")
    (pkg / "x" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mneme_core.x.b import B\n"
    )
    (pkg / "x" / "b.py").write_text("def f():\n    from mneme_core.x import a\n")
    modules = {_module_name(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    graph = import_graph(modules)
    assert graph["mneme_core.x.a"] == {"mneme_core.x.b"}
    assert graph["mneme_core.x.b"] == {"mneme_core.x.a"}
    assert cycles(graph) == [["mneme_core.x.a", "mneme_core.x.b"]]


def test_no_import_cycle_in_mneme_core():
    graph = import_graph(_modules())
    assert len(graph) > 50  # the walk really saw the engine
    assert cycles(graph) == []


def test_layers_import_only_downwards():
    graph = import_graph(_modules())
    upward = []
    for module, deps in sorted(graph.items()):
        here = layer_of(module)
        if here is None:
            continue
        for dep in sorted(deps):
            there = layer_of(dep)
            if there is not None and there > here:
                upward.append(f"{module} (layer {here}) imports {dep} (layer {there})")
    assert upward == []


def test_common_and_run_import_no_stage():
    graph = import_graph(_modules())
    for module, deps in graph.items():
        if module.startswith("mneme_core.common"):
            assert {d for d in deps if not d.startswith("mneme_core.common")} == set(), module
        if module.startswith("mneme_core.run"):
            assert {d for d in deps if not d.startswith(("mneme_core.common", "mneme_core.run"))} == set(), module


def test_core_never_imports_streamlit():
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_every_folder_says_what_it_holds():
    for init in CORE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 10, f"{init.parent.name}/ needs a docstring saying what it holds"


OUTSIDE = re.compile(r"DESIGN(\.md)?\s*§|\.\./shared|shared/DESIGN|shared/paper")


@pytest.mark.parametrize("folder", ["mneme_core", "mneme_dashboard", "tests", "bench", "docs", "examples"])
def test_no_comment_points_outside_the_repository(folder):
    here = Path(__file__).resolve()
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / folder).rglob("*"))
        if p.suffix in {".py", ".md", ".yaml", ".toml"} and p != here
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []
