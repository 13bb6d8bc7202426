"""The import graph of `cream/` has no cycle, between modules or between packages, and follows the layering.

Every import statement counts: module level, inside functions and under `if TYPE_CHECKING:`. The plug-in loader's
`importlib` imports (the modules of `cream.methods`, the built-in plug-ins) are not statements, so not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cream"

# Each package (or top-level module) of cream/ imports only from its own layer or lower ones.
LAYERS = [
    ("cream.errors", "cream.config"),
    ("cream.runs",),
    ("cream.data",),
    ("cream.engine",),
    ("cream.plugins",),
    ("cream.rewards", "cream.training", "cream.eval"),
    ("cream.methods",),  # plug-ins, loaded by `cream.plugins.registry.load_plugins`
    ("cream.stages",),
    ("cream.preflight", "cream.loop", "cream.evaluate", "cream.diagnose"),  # the loop, its checks, the programs
]
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the import}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The modules of `known` that the file imports, with the line of each import."""
    found: dict[str, int] = {}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` the module itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                found.setdefault(target, node.lineno)
    return found


def module_graph() -> Graph:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def package_of(module: str) -> str:
    """`cream.rewards.pairing` -> `cream.rewards`; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: Graph) -> dict[str, dict[str, str]]:
    """package -> {imported package: one import that makes the edge, as `module -> module:line`}."""
    out: dict[str, dict[str, str]] = {}
    for module, targets in graph.items():
        edges = out.setdefault(package_of(module), {})
        for target, line in targets.items():
            if package_of(target) != package_of(module):
                edges.setdefault(package_of(target), f"{module} -> {target} (line {line})")
    return out


def find_cycle(graph: dict[str, dict]) -> Optional[list[str]]:
    """A cycle of the directed graph as [a, b, ..., a], or None when there is none (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> Optional[list[str]]:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict]) -> str:
    return "import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"  {a} -> {b}: {graph[a][b]}" for a, b in zip(cycle, cycle[1:]))


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1, "d": 1}, "c": {"a": 1}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    del graph["c"]["a"]
    assert find_cycle(graph) is None
    assert find_cycle({"a": {"a": 1}}) == ["a", "a"]


def test_the_walk_sees_type_checking_and_function_level_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cream.x import T\n"
                    "def f():\n    import cream.y\n    from cream import z\n")
    assert imports("cream.m", path, {"cream.x", "cream.y", "cream.z"}) == {"cream.x": 3, "cream.y": 5, "cream.z": 6}


def test_no_module_cycle():
    graph = module_graph()
    assert len(graph) > 50  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def test_no_package_cycle():
    graph = package_graph(module_graph())
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def test_packages_import_only_their_own_layer_or_lower():
    graph = package_graph(module_graph())
    assert set(graph) <= set(LAYER) | {"cream"}, f"packages with no layer: {sorted(set(graph) - set(LAYER))}"
    upward = [f"{package} imports {target}: {why}" for package, targets in graph.items()
              for target, why in targets.items() if LAYER[target] > LAYER.get(package, len(LAYERS))]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)

