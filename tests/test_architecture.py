"""docs/architecture.md stays true: every module it names exists, and it names every module."""

import re

from .conftest import REPO

DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("machlite", "models", "datasets")


def _named_in_doc() -> set[str]:
    return set(re.findall(r"`((?:machlite|models|datasets)/[\w/]+\.py)`", DOC.read_text()))


def _modules_on_disk() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_every_module_the_page_names_exists() -> None:
    missing = sorted(_named_in_doc() - _modules_on_disk())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_the_page_names_every_module() -> None:
    unnamed = sorted(_modules_on_disk() - _named_in_doc())
    assert not unnamed, f"modules missing from docs/architecture.md's map: {unnamed}"


#: The longest a module may be: one concept, readable top to bottom.
MAX_LINES = 450


def test_no_module_is_over_the_limit() -> None:
    long = {
        path: n
        for path in _modules_on_disk()
        if (n := len((REPO / path).read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_run_folder_names_are_spelled_in_one_module() -> None:
    """Every file name of a run folder is a string literal only in machlite/runs/layout.py."""
    import ast

    from machlite.runs import layout

    names = {
        layout.CONFIG_FILE,
        layout.CHECKPOINTS_DIR,
        layout.LAST_CHECKPOINT,
        layout.OVERRIDES_FILE,
        layout.DONE_FILE,
        layout.PRUNED_FILE,
        layout.HARDWARE_FILE,
        layout.HARDWARE_DIR,
        layout.WARNINGS_FILE,
        layout.LOG_FILE,
        layout.VERSION_PREFIX,
    }
    found = []
    for path in sorted(_modules_on_disk()):
        if path == "machlite/runs/layout.py":
            continue
        for node in ast.walk(ast.parse((REPO / path).read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path}:{node.lineno}: {node.value!r}")
    assert not found, f"run-folder names spelled outside machlite/runs/layout.py: {found}"
