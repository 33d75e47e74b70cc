"""The names of runs in a sweep or search folder: ``SETTING/seed_S``.

A setting's name lists its values, ``batch_size=32,lr=0.001`` (:func:`value_label`,
:func:`short_keys`); each seed of it runs in ``seed_S`` below. :func:`setting_of` and
:func:`parse_setting` read such names back (``machlite plot`` groups runs by setting).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
SEED_DIR = re.compile(r"seed_(-?\d+)$")


def run_name(setting: str, seed: int) -> str:
    """A run's folder under its sweep or search folder: ``SETTING/seed_S``."""
    return f"{setting}/seed_{seed}"


def seed_of(folder: Path) -> int | None:
    """The seed from a ``seed_S`` folder name, else None."""
    match = SEED_DIR.match(Path(folder).name)
    return int(match.group(1)) if match else None


def safe_label(value: str) -> str:
    """``value`` with every run of characters unsafe in a file name replaced by ``_``."""
    return _UNSAFE.sub("_", value)


def value_label(value: str) -> str:
    """A short, file-name-safe label: numbers in shortest form, class paths by class name."""
    try:
        return str(int(value))
    except ValueError:
        pass
    try:
        number = float(value)
        if math.isfinite(number):
            return repr(number)
    except ValueError:
        pass
    if "/" in value or value.endswith((".yaml", ".yml")):
        value = Path(value).stem
    elif re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", value):
        value = value.rsplit(".", 1)[1]
    return safe_label(value).strip("_") or "_"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each swept key's name in run names: its last part (``optimizer.lr`` -> ``lr``), or the
    whole key where two last parts would clash."""
    last = {key: key.rsplit(".", 1)[-1] for key in keys}
    counts: dict[str, int] = {}
    for name in last.values():
        counts[name] = counts.get(name, 0) + 1
    return {key: name if counts[name] == 1 else key for key, name in last.items()}


def setting_of(name: str) -> str:
    """The setting a run belongs to, from its name without a final ``seed_N`` part."""
    parent, _, last = name.rpartition("/")
    if SEED_DIR.match(last):
        return parent or "."
    return name


def parse_setting(name: str) -> dict[str, str]:
    """``"batch_size=32,lr=0.001"`` -> ``{"batch_size": "32", "lr": "0.001"}``; else ``{}``."""
    parts = [p for p in name.split(",") if p]
    if not parts or not all("=" in p for p in parts):
        return {}
    return dict(p.split("=", 1) for p in parts)
