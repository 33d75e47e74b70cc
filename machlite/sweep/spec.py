"""What a sweep runs: its definition, its runs, and each run's settings.

A :class:`Sweep` (base config, grid, seeds, fixed overrides, links) expands into runs
(:class:`Run`), one per setting and seed. Each run's settings (:class:`RunSettings`) are the
base config plus one nested override block: the fixed overrides, the run's grid values
and the links, in that order, as jsonargparse would merge them from a second ``--config``.
A finished run's record, ``done.json``, is read here too (:func:`read_done`); its signature
says whether the run was made with the current settings.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from machlite.errors import ConfigError
from machlite.events import is_synthetic_config

#: The file each run's override block is written to, in its run folder.
OVERRIDES_FILE = "overrides.yaml"
#: The file a run writes last, when it finished.
DONE_FILE = "done.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")


@dataclass
class Sweep:
    """What to run.

    Attributes:
        config: The base config file (absolute), or None.
        grid: Swept key (dotted, as on the ``machlite fit`` command line) to its values, as
            command-line text.
        seeds: Seeds; each setting runs once per seed (``--seed_everything``).
        overrides: Fixed ``(key, value)`` settings of every run, values as command-line text.
        link: Key set in each run to the value of a swept key (e.g. the cosine schedule's
            ``lr_scheduler.init_args.T_max`` to ``trainer.max_epochs``).
        name: The sweep's name.
        sweep_dir: Folder of the sweep's runs.
    """

    config: Path | None
    grid: dict[str, list[str]]
    seeds: list[int]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    link: dict[str, str] = field(default_factory=dict)
    name: str = "sweep"
    sweep_dir: Path = Path("sweeps/sweep")


@dataclass
class Run:
    """One setting with one seed.

    Attributes:
        setting: The setting's folder name, e.g. ``batch_size=32,lr=0.001``.
        values: Swept key to its value (command-line text) in this setting.
        seed: The seed.
    """

    setting: str
    values: dict[str, str]
    seed: int

    @property
    def name(self) -> str:
        """The run's folder under the sweep folder (TensorBoard's run name)."""
        return f"{self.setting}/seed_{self.seed}"


# -- names ------------------------------------------------------------------------------------
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
    return _UNSAFE.sub("_", value).strip("_") or "_"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each swept key's name in run names: its last part (``optimizer.lr`` -> ``lr``), or the
    whole key where two last parts would clash."""
    last = {key: key.rsplit(".", 1)[-1] for key in keys}
    counts: dict[str, int] = {}
    for name in last.values():
        counts[name] = counts.get(name, 0) + 1
    return {key: name if counts[name] == 1 else key for key, name in last.items()}


def expand(sweep: Sweep) -> list[Run]:
    """Every setting x seed, seed-major: all settings with the first seed come first, so an
    interrupted sweep already covers every setting once.

    Raises:
        ConfigError: Two values of a key give the same label.
    """
    keys = list(sweep.grid)
    names = short_keys(keys)
    labels: dict[str, dict[str, str]] = {}
    for key in keys:
        labels[key] = {v: value_label(v) for v in sweep.grid[key]}
        if len(set(labels[key].values())) != len(sweep.grid[key]):
            labels[key] = {v: _UNSAFE.sub("_", v) for v in sweep.grid[key]}
            if len(set(labels[key].values())) != len(sweep.grid[key]):
                raise ConfigError(f"grid values of {key} must differ: {sweep.grid[key]}")
    settings = []
    for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        name = ",".join(f"{names[k]}={labels[k][v]}" for k, v in values.items()) or "base"
        settings.append((name, values))
    return [Run(name, values, seed) for seed in sweep.seeds for name, values in settings]


# -- values and override blocks ---------------------------------------------------------------
def block_value(text: str) -> Any:
    """A command-line value as the override block holds it: as given, for jsonargparse to type.

    jsonargparse converts a config file's text values by the key's type exactly as it
    converts command-line values (``"32"`` for an int key is 32, ``"2024"`` for a text key
    stays text, ``"null"`` is None), so the block keeps them as given and a run sees what the
    same ``--key value`` flags would give. Only a mapping (``{...}``, e.g. a class path with
    its arguments) is read as YAML, so that its keys merge with other settings of the block.
    """
    if text.lstrip()[:1] == "{":
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(loaded, dict):
            return loaded
    return text


def _as_subclass(node: dict[str, Any]) -> dict[str, Any]:
    """A block with a class path keeps its arguments under ``init_args``."""
    if "class_path" not in node and "init_args" not in node:
        return node
    args = {k: v for k, v in node.items() if k not in _CLASS_KEYS}
    out = {k: node[k] for k in _CLASS_KEYS if k in node}
    if args:
        out["init_args"] = {**(out.get("init_args") or {}), **args}
    return out


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested override block, as ``--key value`` would.

    A class path given for a block that has arguments (or arguments given for a block that
    is a class path) becomes ``{class_path: ..., init_args: {...}}``, the form jsonargparse
    merges; other arguments are nested plainly (``data: {batch_size: 32}``), which
    jsonargparse merges into the base config's ``init_args``.
    """
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if isinstance(child, str):  # a class path, now given arguments
            child = {"class_path": child}
        elif not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    old = node.get(last)
    if isinstance(value, str) and isinstance(old, dict):  # a class path for a block
        value = {**old, "class_path": value}
    elif isinstance(value, dict) and isinstance(old, dict):
        value = {**old, **value}
    node[last] = value
    _normalize(tree)


def _normalize(tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _normalize(value)
            tree[key] = _as_subclass(value)


def override_block(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``[("data.batch_size", "32"), ("lr_scheduler.init_args.T_max", "5")]`` ->
    ``{"data": {"batch_size": "32"}, "lr_scheduler": {"init_args": {"T_max": "5"}}}``."""
    tree: dict[str, Any] = {}
    for key, text in pairs:
        set_key(tree, key, block_value(text))
    return tree


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base`` as jsonargparse merges a later ``--config``.

    Plain arguments of a block with a class path go into its ``init_args``; another class
    path replaces the block (its old arguments do not apply to the new class).
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and ("class_path" in old or "init_args" in old):
            if isinstance(value, str):
                value = {"class_path": value}
            if isinstance(value, dict):
                value = _as_subclass({"init_args": {}, **value})
                new_class = value.get("class_path", old.get("class_path"))
                if new_class != old.get("class_path"):
                    out[key] = copy.deepcopy(value)
                    continue
                merged = dict(old)
                merged["init_args"] = merge_config(old.get("init_args") or {}, value["init_args"])
                out[key] = merged
                continue
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge_config(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Path | None) -> dict[str, Any]:
    """A config file as a dict (empty when not given, unreadable or not a mapping)."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# -- one run's settings -----------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """What one run trains with.

    Attributes:
        config: The base config file, or None.
        overrides: The run's override block: nested, values as given, e.g.
            ``{"data": {"batch_size": 32}}``; given to ``machlite fit`` as a second
            ``--config`` after the base config.
        seed: The run's ``--seed_everything``.
    """

    config: Path | None
    overrides: dict[str, Any]
    seed: int

    def yaml(self) -> str:
        """The override block as a YAML file's text."""
        return yaml.safe_dump(self.overrides, sort_keys=False, default_flow_style=False)

    def inline(self) -> str:
        """The override block as one line of YAML, which ``--config`` also accepts."""
        return yaml.safe_dump(
            self.overrides, sort_keys=False, default_flow_style=True, width=10**9
        ).strip()

    def args(self, overrides_config: str | Path) -> list[str]:
        """The ``machlite fit`` arguments, with the override block in ``overrides_config``
        (a file, or the block's text; see :meth:`inline`)."""
        args = ["fit"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        return [*args, "--config", str(overrides_config), "--seed_everything", str(self.seed)]

    def signature(self) -> dict[str, Any]:
        """What the run is made of, as JSON: a finished run with another signature is redone."""
        return json.loads(
            json.dumps(
                {
                    "config": None if self.config is None else str(self.config),
                    "overrides": self.overrides,
                    "seed_everything": self.seed,
                }
            )
        )


def run_settings(sweep: Sweep, run: Run) -> RunSettings:
    """A run's settings: the sweep's fixed overrides, then the run's values, then its links."""
    return RunSettings(sweep.config, override_block(_pairs(sweep, run)), run.seed)


def _pairs(sweep: Sweep, run: Run) -> list[tuple[str, str]]:
    """The run's ``(key, value)`` settings as given: fixed, swept, then linked."""
    return [
        *sweep.overrides,
        *run.values.items(),
        *((target, run.values[source]) for target, source in sweep.link.items()),
    ]


def legacy_signature(sweep: Sweep, run: Run) -> list[str]:
    """A run's signature as ``done.json`` files written before version 0.2 stored it: the
    ``machlite fit`` arguments as flags, so sweeps started then keep their finished runs."""
    args = ["fit"]
    if sweep.config is not None:
        args += ["--config", str(sweep.config)]
    for key, value in _pairs(sweep, run):
        args += [f"--{key}", value]
    return [*args, "--seed_everything", str(run.seed)]


def is_finished(sweep: Sweep, run: Run, done: dict[str, Any] | None) -> bool:
    """Whether ``done`` (the run's ``done.json``) records this run with these settings."""
    if done is None:
        return False
    signature = done.get("signature")
    return signature in (run_settings(sweep, run).signature(), legacy_signature(sweep, run))


def is_synthetic_sweep(sweep: Sweep) -> bool:
    """True when any run of the sweep trains on synthetic data: the base config merged with
    the run's override block says so (:func:`machlite.events.is_synthetic_config`)."""
    base = load_config(sweep.config)
    settings = {run.setting: run for run in expand(sweep)}.values()  # seeds do not matter
    return any(
        is_synthetic_config(merge_config(base, run_settings(sweep, run).overrides))
        for run in settings
    )


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``done.json``, or None when it has not finished."""
    try:
        data = json.loads((Path(run_dir) / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
