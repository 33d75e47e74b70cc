"""What a sweep runs: its definition, its runs, and each run's settings.

A :class:`Sweep` (base config, grid, seeds, fixed overrides, links) expands into runs
(:class:`Run`), one per setting and seed. Each run's settings
(:class:`~machlite.runs.settings.RunSettings`) are the base config plus one nested override
block: the fixed overrides, the run's grid values and the links, in that order, as
jsonargparse would merge them from a second ``--config``. A finished run's ``done.json``
(:func:`machlite.runs.records.read_done`) holds its signature, which says whether the run was
made with the current settings (:func:`is_finished`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machlite.errors import ConfigError
from machlite.runs.hardware import HardwareOptions, read_hardware
from machlite.runs.launcher import PlannedRun
from machlite.runs.names import run_name, safe_label, short_keys, value_label
from machlite.runs.settings import (
    RunSettings,
    is_synthetic_config,
    load_config,
    merge_config,
    override_block,
)


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
        hardware: The RTL flow's options when each run measures its tested checkpoint's
            design (``hardware.json``; a sweep file's ``hardware:`` block), else None.
    """

    config: Path | None
    grid: dict[str, list[str]]
    seeds: list[int]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    link: dict[str, str] = field(default_factory=dict)
    name: str = "sweep"
    sweep_dir: Path = Path("sweeps/sweep")
    hardware: HardwareOptions | None = None


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
        return run_name(self.setting, self.seed)


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
            labels[key] = {v: safe_label(v) for v in sweep.grid[key]}
            if len(set(labels[key].values())) != len(sweep.grid[key]):
                raise ConfigError(f"grid values of {key} must differ: {sweep.grid[key]}")
    settings = []
    for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        name = ",".join(f"{names[k]}={labels[k][v]}" for k, v in values.items()) or "base"
        settings.append((name, values))
    return [Run(name, values, seed) for seed in sweep.seeds for name, values in settings]


# -- one run's settings -----------------------------------------------------------------------
def run_settings(sweep: Sweep, run: Run) -> RunSettings:
    """A run's settings: the sweep's fixed overrides, then the run's values, then its links."""
    return RunSettings(sweep.config, override_block(_pairs(sweep, run)), run.seed)


def planned(sweep: Sweep, run: Run) -> PlannedRun:
    """The run, as the launcher runs it (measuring its design when the sweep asks)."""
    hardware = None if sweep.hardware is None else sweep.hardware.to_dict()
    return PlannedRun(run.name, run_settings(sweep, run), hardware=hardware)


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
    """Whether ``done`` (the run's ``done.json``) records this run with these settings (and,
    when the sweep asks for hardware, its ``hardware.json`` with the same options)."""
    if done is None:
        return False
    if sweep.hardware is not None:
        hardware = read_hardware(sweep.sweep_dir / run.name) or {}
        if hardware.get("options") != sweep.hardware.to_dict():
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
