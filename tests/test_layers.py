"""The package's import graph: layers point down, no circles, public names across packages.

Every import counts, the ones inside functions too (they hide circles, not remove them).
Layers, bottom to top; a module may import its own layer or a lower one:
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llmvm_ray"

LAYERS: list[tuple[str, ...]] = [
    ("config", "errors", "limits", "protocol", "ray_private", "runtime"),
    ("engine", "teachers", "store", "observability"),
    ("registry", "train", "synthesis", "dev"),
    ("optimizer",),
    ("agents",),
    ("agents.bench",),
    ("serve",),
    ("client", "demo", "cli"),
]
RAY_PRIVATE = "llmvm_ray.ray_private"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def _graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {
        _module_name(path): _imports(path, _module_name(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _resolve(target: str, names: list[str], modules: set[str]) -> list[str]:
    """The package modules an import reaches (``from pkg import mod`` reaches ``pkg.mod``)."""
    reached = [target] if target in modules else []
    reached += [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return reached


def layer_of(module: str) -> int:
    rel = module.removeprefix("llmvm_ray").lstrip(".")
    if not rel:
        return 0
    if rel.rpartition(".")[2] == "cli":  # every package's CLI sits with the `llmvm` command
        return len(LAYERS) - 1
    matches = [
        (len(prefix), index)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if rel == prefix or rel.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS")
    return max(matches)[1]  # the most specific prefix: agents.bench over agents


def test_every_module_has_a_layer():
    for module in _graph():
        layer_of(module)


def test_imports_point_down():
    graph = _graph()
    modules = set(graph)
    wrong = [
        f"{module}:{line} imports {reached} (layer {layer_of(reached)} > {layer_of(module)})"
        for module, imports in graph.items()
        for target, names, line in imports
        for reached in _resolve(target, names, modules)
        if layer_of(reached) > layer_of(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = _graph()
    modules = set(graph)
    edges = {
        module: {r for t, n, _ in imports for r in _resolve(t, n, modules) if r != module}
        for module, imports in graph.items()
    }
    # A package's __init__ is imported on the way to any of its modules; that is not an
    # edge of ours unless the __init__ itself imports something.
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def _top_package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_private_names_across_packages():
    wrong = [
        f"{module}:{line} takes {name} from {target}"
        for module, imports in _graph().items()
        for target, names, line in imports
        if target.startswith("llmvm_ray") and _top_package(target) != _top_package(module)
        for name in names
        if name.startswith("_")
    ]
    assert not wrong, "\n".join(wrong)


def test_product_never_imports_tests():
    wrong = [
        f"{module}:{line} imports {target}"
        for module, imports in _graph().items()
        for target, _, line in imports
        if target == "tests" or target.startswith("tests.")
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("root", ["llmvm_ray", "jobs", "benchmarks"])
def test_ray_private_apis_only_in_one_module(root):
    """Ray's private modules and underscore names go through ``ray_private`` only."""
    wrong = []
    for path in sorted((ROOT / root).rglob("*.py")):
        module = _module_name(path)
        if module == RAY_PRIVATE:
            continue
        text = path.read_text()
        for target, names, line in _imports(path, module):
            private_module = target.startswith("ray") and "._" in target
            private_name = target.startswith("ray") and any(n.startswith("_") for n in names)
            if private_module or private_name:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} {names}")
        if "ray._private" in text:
            wrong.append(f"{path.relative_to(ROOT)} names ray._private")
    assert not wrong, "\n".join(wrong)
