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
    """Each swept key's name in run names: its last part (``optimizer.lr`` -> ``lr``), or,
    where last parts clash, the fewest last parts that tell the keys apart
    (``...linear.weight.width`` and ``...data_in.width`` -> ``weight.width``,
    ``data_in.width``), so a folder name stays short."""
    parts = {key: 1 for key in keys}
    while True:
        names = {key: ".".join(key.split(".")[-n:]) for key, n in parts.items()}
        counts: dict[str, int] = {}
        for name in names.values():
            counts[name] = counts.get(name, 0) + 1
        clashing = [k for k, name in names.items() if counts[name] > 1 and name != k]
        if not clashing:
            return names
        for key in clashing:
            parts[key] += 1


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
