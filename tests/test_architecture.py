"""The package's shape: no import cycle (lazy imports inside functions count, since they only hide a cycle until
the function runs) and no module over the line limit, so a module holds one concern and the stages layer cleanly."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fishr_tune"
MAX_LINES = 400



def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name `from ... import` reads from, relative imports included."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `module` imports anywhere in its body (module level, functions, TYPE_CHECKING blocks).

    `from a import b` is an edge to a.b when that is a module, else to a. Implicit parent-package imports are not
    edges: every submodule would otherwise depend on fishr_tune/__init__ and the graph would say nothing.
    A package's `importlib.import_module(f"{__name__}.{...}")` over its own directory counts as importing each of
    its submodules (the algorithms registry does this).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in known else source)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and path.name == "__init__.py"
        ):
            targets.update(name for name in known if name.startswith(module + ".") and name.count(".") == module.count(".") + 1)
    edges = set()
    for target in targets:
        # `import fishr_tune.data.images` names the module itself; keep the longest prefix that is ours.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one cycle through it (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, set(component)) for component in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, start module repeated at the end."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if succ not in parents:
                    parents[succ] = node
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no cycle through {sorted(component)}")


def line_counts() -> dict[str, int]:
    return {name: len(path.read_text().splitlines()) for name, path in _modules().items()}


def test_graph_sees_lazy_relative_and_dynamic_imports():
    """The parser must see what the cycle check relies on, or an empty cycle list would prove nothing."""
    graph = import_graph()
    assert "fishr_tune.algorithms.base" in graph["fishr_tune.algorithms"]
    assert "fishr_tune.algorithms.erm" in graph["fishr_tune.algorithms"]  # importlib over the package
    lazy = {target for name, targets in graph.items() if name == "fishr_tune.cli.sweep" for target in targets}
    assert "fishr_tune.sweep.runner" in lazy  # the sweep command imports the runner inside its function


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_over_the_line_limit():
    counts = line_counts()
    over = {name: n for name, n in sorted(counts.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(f"{name} ({n})" for name, n in over.items())
