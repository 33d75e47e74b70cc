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
