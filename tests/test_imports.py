"""machlite's import structure: no import cycle, and light commands that stay light.

The cycle check reads the source with ``ast`` (nothing is imported): every import of a
machlite module, at module level or inside a function, absolute or relative, is an edge.
Imports under ``if TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where each top-level package of machlite's source lives (setup.cfg's package_dir).
PACKAGE_DIRS = {
    "machlite": REPO / "machlite",
    "machlite.models": REPO / "models",
    "machlite.datasets": REPO / "datasets",
}
#: What ``machlite models`` and ``machlite --help`` must not import (``models`` needs torch).
HEAVY = (
    "lightning",
    "pytorch_lightning",
    "torchvision",
    "torchmetrics",
    "tensorboard",
    "matplotlib",
)


def machlite_modules() -> dict[str, Path]:
    """Every module of the machlite package by dotted name (a package by its ``__init__``)."""
    modules: dict[str, Path] = {}
    for package, root in PACKAGE_DIRS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, outside ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Which machlite modules each machlite module imports."""
    modules = machlite_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                # ``from pkg import x``: pkg's __init__ runs, and x may be a submodule.
                targets = [source, *(f"{source}.{alias.name}" for alias in node.names)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_every_package() -> None:
    modules = machlite_modules()
    for name in ("machlite", "machlite.commands", "machlite.models", "machlite.datasets"):
        assert name in modules
    assert any(name.startswith("machlite.models.") for name in modules)
    assert any(name.startswith("machlite.datasets.") for name in modules)
    graph = import_graph()
    assert "machlite.errors" in graph["machlite.commands"]
    assert "machlite.models.jsc" in graph["machlite.models"]  # relative: from .jsc import ...


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("args", [["models"], ["--help"]], ids=" ".join)
def test_light_commands_import_nothing_heavy(args: list[str]) -> None:
    code = (
        "import sys; from machlite.commands import main; "
        f"main({args!r}); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    heavy = proc.stdout.strip().splitlines()[-1]
    assert heavy == "[]", (
        f"machlite {' '.join(args)} imported {heavy}; find the chain with: "
        f"python -X importtime -c 'from machlite.commands import main; main({args!r})'"
    )


def command_modules() -> list[str]:
    """The module of each subcommand in ``machlite.commands.COMMANDS`` other than the shared
    Lightning entry (``machlite.cli``) and ``machlite.commands`` itself."""
    from machlite.commands import COMMANDS

    targets = {command.target.partition(":")[0] for command in COMMANDS.values()}
    return sorted(targets - {"machlite.cli", "machlite.commands"})


def _family(module: str, command: str) -> bool:
    return module == command or module.startswith(command + ".")


def test_no_command_imports_another() -> None:
    commands = command_modules()
    assert {"machlite.sweep", "machlite.search", "machlite.plot", "machlite.export"} <= set(
        commands
    )
    graph = import_graph()
    crossings = [
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        for a in commands
        for b in commands
        if a != b and _family(source, a) and _family(target, b)
    ]
    assert not crossings, (
        "a command imports another command's modules (move what they share into the ground "
        f"they stand on, e.g. machlite.runs): {crossings}"
    )
