"""The package's shape: imports go one way (no circle, no layer importing a higher one), and no
module grows past ~400 lines (data tables excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "simoe"

# The layers of the README's architecture map, lowest first. A module may import its own layer
# or a lower one. Keys are the first component under simoe/ (a module or a subpackage).
LAYERS = [
    {"config", "gates", "runtime", "gguf_cache", "constraint"},
    {"loading"},
    {"gated_delta"},
    {"layers"},
    {"router", "objective", "targets"},
    {"persistence"},
    {"model"},
    {"data", "baselines"},
    {"training", "evaluation", "synthetic", "planning"},
    {"analysis", "sweep", "serving"},
    {"demo"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
LONG_DATA_TABLES = {"synthetic/tasks.py"}  # generated-task tables, exempt from the size rule
MAX_LINES = 420


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every simoe module that ``path`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from . import x` names modules; `from .x import y` also runs x (or its __init__)
            targets = ([mod] if node.module else []) + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_circle():
    graph = _graph()
    # Package __init__ files re-export their children; an edge child -> own package __init__ is
    # a real circle, so nothing is exempt.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_module_has_a_layer():
    missing = sorted({_layer(m) for m in _modules()} - set(RANK))
    assert not missing, f"add {missing} to LAYERS (and to the README's architecture map)"


def test_imports_go_down_the_layers():
    bad = []
    for module, deps in _graph().items():
        for dep in deps:
            if RANK[_layer(dep)] > RANK[_layer(module)]:
                bad.append(f"{module} imports {dep}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_baselines_know_nothing_of_training():
    for module, deps in _graph().items():
        if _layer(module) == "baselines":
            assert not [d for d in deps if _layer(d) in ("training", "evaluation")], module


def test_training_methods_are_one_module_each():
    from simoe.training.methods import METHODS

    assert set(METHODS) == {"simoe", "full", "lora", "upcycle", "btx"}
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.__module__.startswith("simoe.training.methods.")


def test_no_module_over_the_size_limit():
    long = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_DATA_TABLES:
            long.append(f"{rel}: {n} lines")
    assert not long, "split by reason to change: " + ", ".join(long)
