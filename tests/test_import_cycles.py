"""No import circles among `interp`'s subpackages and `models`' modules.

Every `import` / `from ... import` in every file counts, including those inside functions
(a lazy import only hides a circle until the day someone hoists it). Nodes are the first
level under each package: `interp.tasks` (the whole subpackage), `interp.cache`,
`models.transformer`, `models.hf`, ...; imports inside one node are its own business."""

from __future__ import annotations

import ast
from pathlib import Path

import interp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("interp", "models")

# Circles tolerated for now, each a frozenset of nodes with the reason beside it. Empty: the last
# one (models.generation <-> models.transformer) was broken in e1e0aa1.
ALLOWED: set[frozenset[str]] = set()


def node_of(module: str) -> str | None:
    """`interp.tasks.text` -> `interp.tasks`; `models` -> `models`; outside -> None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    return ".".join(parts[:2])


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, module: str) -> set[str]:
    """Dotted names of every module `path` (the module `module`) imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for stmt in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import):
            found.update(alias.name for alias in stmt.names)
        elif isinstance(stmt, ast.ImportFrom):
            base = stmt.module or ""
            if stmt.level:  # relative: climb `level - 1` packages above this module's package
                anchor = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in stmt.names:
                sub = f"{base}.{alias.name}"
                if is_module(sub):
                    found.add(sub)
                elif base == "interp" and alias.name in interp._FROM_CHECKPOINT:
                    found.add("interp.checkpoint")  # interp's lazy attributes live there
                else:
                    found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            src = node_of(module)
            for target in imported_modules(path, module):
                dst = node_of(target)
                if dst is not None and dst != src and dst not in PACKAGES:
                    graph.setdefault(src, set()).add(dst)
            graph.setdefault(src, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_circle():
    """A circle made by hand is found, including one that closes through a lazy import."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "interp.training" in graph["interp.cli"]  # cli imports training inside its commands
    assert "models.transformer" in graph["models.hf"]


def test_no_import_circles():
    found = [c for c in cycles(import_graph()) if frozenset(c) not in ALLOWED]
    detail = {tuple(c): {n: sorted(set(import_graph()[n]) & set(c)) for n in c} for c in found}
    assert not found, f"import circles (node -> the members it imports): {detail}"
