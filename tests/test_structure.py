"""The package's import graph runs one way (cli -> pipeline -> stages -> core), with no circle
and no private name taken from another package."""

from __future__ import annotations

import ast
from pathlib import Path

import cellsynth

SRC = Path(cellsynth.__file__).parent
#: the layers, outermost first: a module may import its own layer or those after it
LAYERS = [
    {"__main__", "cli", "cli_logging", "cli_parser", "cli_signals"},
    {"api", "pipeline"},
    {"evaluation", "benchmark", "benchmark_kept", "holdout", "info", "report", "pl"},
    {"models", "classify", "features", "explain", "metrics", "cells"},
    {"data"},
    {"config", "config_rules", "config_sources", "errors", "keys", "seeds", "runtime", "resume", "outputs", "presets", "options", "checksums", "paths", "figure_io", "heartbeat", "run_log"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["cellsynth", *parts])] = path
    return out


def _imports(name: str, path: Path, *, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every cellsynth import in ``path`` (absolute module names)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks do not run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("cellsynth"):
                found.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("cellsynth")]
    return found


def _resolve(mod: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The modules an import reaches: ``from pkg import sub`` reaches ``pkg.sub``."""
    subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in modules]
    return subs or ([mod] if mod in modules else [])


def _layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{mod} is in no layer of tests/test_structure.py: add it")


def test_no_import_circle():
    modules = _modules()
    graph = {m: {t for mod, names in _imports(m, p, top_level_only=True)
                 for t in _resolve(mod, names, modules) if t != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] if t in stack else [t]
                raise AssertionError(f"import circle: {' -> '.join([*cycle, t])}")
            if t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_imports_run_one_way():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        if m == "cellsynth":
            continue
        for mod, names in _imports(m, p, top_level_only=False):
            for t in _resolve(mod, names, modules):
                if t != "cellsynth" and _layer(t) < _layer(m):
                    bad.append(f"{m} imports {t}")
    assert not bad, "imports against the layers (cli -> pipeline -> stages -> core):\n" + \
        "\n".join(bad)


def test_no_private_name_from_another_package():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        home = m.rsplit(".", 1)[0] if p.name != "__init__.py" else m
        for mod, names in _imports(m, p, top_level_only=False):
            for n in names:
                target = mod if f"{mod}.{n}" not in modules else f"{mod}.{n}"
                target_home = target.rsplit(".", 1)[0] if target in modules and \
                    modules[target].name != "__init__.py" else target
                private = n.startswith("_") or any(part.startswith("_")
                                                   for part in target.split("."))
                if private and not target_home.startswith(home) and not home.startswith(
                        target_home):
                    bad.append(f"{m}: from {mod} import {n}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)
