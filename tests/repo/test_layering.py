"""The package's dependency rule, checked on the source: one layering, no cycles.

    cli -> engine -> {training, runtime} -> export -> evaluation -> {data, models} -> utils -> ops

A module may import from its own layer or any layer to its right, never to its left, and the
module graph has no cycles. Every ``import`` counts: top-level, inside functions (lazy imports
that keep start-up fast) and under ``TYPE_CHECKING`` alike, because a cycle hidden in a function
still breaks when a helper moves. ``from package import submodule`` depends on the submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "efyolo"

# Left to right: a layer imports only from its own layer and those after it.
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("engine",),
    ("training", "runtime"),
    ("export",),
    ("evaluation",),
    ("data", "models"),
    ("utils", "errors", "__init__"),  # "__init__": efyolo itself (version, lazy public names)
    ("ops",),
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("efyolo",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # from pkg import submodule -> the submodule; from module import name -> the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                if target.split(".")[0] == "efyolo":
                    resolved = resolve(target)
                    if resolved and resolved != module:
                        graph[module].add(resolved)
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_has_a_layer() -> None:
    unknown = sorted({layer_of(m) for m in module_files()} - set(RANK))
    assert not unknown, f"packages without a layer in LAYERS: {unknown}"


def test_no_import_goes_against_the_layers() -> None:
    wrong = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if RANK[layer_of(target)] < RANK[layer_of(source)]
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_lazy_imports_and_cycles() -> None:
    """The checker itself: a function-local import is an edge, and a two-module loop is a cycle."""
    graph = import_graph()
    assert "efyolo.engine.validator" in graph["efyolo.engine.predictor"]  # Detector.val's lazy import
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
