"""Imports among fedrec's modules point one way: no cycle, down the layers.

The graph is read statically with :mod:`ast` from every ``src/fedrec/**/*.py``:
each ``import`` and ``from ... import`` anywhere in a module counts, at module
level or inside a function (a lazy import is a dependency all the same).
Relative imports are resolved against the importing module's package. An
import names the deepest fedrec module it reaches (``from fedrec.flower
import split`` is an edge to ``fedrec.flower.split``; ``from fedrec.config
import load_config`` one to ``fedrec.config``); the packages above it, which
Python also runs, are not counted, so a package's ``__init__`` may import its
own submodules.

Left out: imports under ``if TYPE_CHECKING:``. They never run, and they are
how a module names a type from a module it must not depend on.

The layers are those of docs/design.md, "Module layers".
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("fedrec", "fedrec.errors", "fedrec.atomic", "fedrec.procs")),
    ("data, models, metrics", ("fedrec.data", "fedrec.models", "fedrec.metrics")),
    ("attacks", ("fedrec.attacks",)),
    ("config sections", ("fedrec.sections",)),
    (
        "federated types",
        (
            "fedrec.fl.protocols",
            "fedrec.fl.clients",
            "fedrec.fl.partition",
            "fedrec.fl.store",
            "fedrec.fl.guards",
            "fedrec.fl.mods",
            "fedrec.pretrain",
        ),
    ),
    ("tasks", ("fedrec.fl.task", "fedrec.fl.seq")),
    ("engines and strategies", ("fedrec.fl",)),
    ("method registry", ("fedrec.registry",)),
    ("methods", ("fedrec.methods",)),
    ("config loading", ("fedrec.config",)),
    ("builder", ("fedrec.build",)),
    (
        "runs",
        (
            "fedrec.rundir",
            "fedrec.references",
            "fedrec.runs",
            "fedrec.intervals",
            "fedrec.plots",
            "fedrec.tables",
        ),
    ),
    ("flower", ("fedrec.flower",)),
    ("entry points", ("fedrec.launch", "fedrec.cli")),
]

Graph = dict[str, dict[str, int]]  # module -> {imported module: first line}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``src/fedrec``."""
    out = {}
    for path in sorted((src / "fedrec").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _walk(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    yield node
    yield from _runtime_nodes(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement reaches (``from m import a``: ``m.a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names]


def _deepest_module(name: str, modules: set[str]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(src: Path = SRC) -> Graph:
    """Every fedrec module's imports of other fedrec modules, with a line each."""
    files = module_files(src)
    modules = set(files)
    graph: Graph = {m: {} for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            for name in _imported_names(node, module, is_package):
                target = _deepest_module(name, modules)
                if target is not None and target != module:
                    graph[module].setdefault(target, getattr(node, "lineno", 0))
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (each sorted)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module``'s longest matching prefix."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # "fedrec" is the package itself: a new top-level module needs a row
            nested = prefix != "fedrec" and module.startswith(prefix + ".")
            matches = module == prefix or nested
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "fedrec"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from fedrec.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fedrec.a\n"
    )
    graph = import_graph(tmp_path)
    assert graph["fedrec.a"] == {"fedrec.sub.b": 2}
    assert graph["fedrec.sub.b"] == {"fedrec.a": 1}
    assert graph["fedrec.c"] == {}
    assert ["fedrec.a", "fedrec.sub.b"] in strongly_connected(graph)


def test_no_import_cycle_among_fedrec_modules():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(f"cycle of {len(component)} modules:")
        lines += [
            f"  {a} -> {b} (line {line})"
            for a in component
            for b, line in sorted(graph[a].items())
            if b in members
        ]
    assert not cycles, "\n".join(lines)


def test_every_module_has_a_layer():
    assert [m for m in module_files() if layer_of(m) < 0] == []


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]}), line {line}"
        for a, targets in sorted(graph.items())
        for b, line in sorted(targets.items())
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)
