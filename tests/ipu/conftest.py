"""Put the poptorch test double (tests/ipu/emulator) on sys.path, on the lightning 2.0.x stack only.

Lightning 2.0.x looks for ``poptorch`` once, when ``lightning.pytorch`` is first imported, so the
emulator must be importable before that; running with ``PYTHONPATH=tests/ipu/emulator`` is the
reliable way. On any other stack (e.g. lightning 2.6, which has no in-tree IPU support) this file
changes nothing and ``test_emulator.py`` skips itself.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

EMULATOR_DIR = Path(__file__).resolve().parent / "emulator"


def lightning_version() -> str | None:
    """Return the installed ``lightning`` version without importing it (None if absent)."""
    try:
        return metadata.version("lightning")
    except metadata.PackageNotFoundError:
        return None


def is_lightning_2_0() -> bool:
    """Return whether the installed lightning is a 2.0.x release (the one with IPUStrategy)."""
    version = lightning_version()
    return version is not None and version.startswith("2.0.")


if is_lightning_2_0() and str(EMULATOR_DIR) not in sys.path:
    sys.path.insert(0, str(EMULATOR_DIR))
