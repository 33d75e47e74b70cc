"""A search space: machlite config keys with distributions, and the objectives to optimise.

A space file is YAML::

    config: ../jsc_tiny.yaml              # optional: the base config (--config replaces it)
    params:                               # config key -> distribution
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      data.batch_size: {type: categorical, choices: [32, 64, 256]}
      trainer.max_epochs: {type: int, low: 2, high: 8, step: 2}
    objectives:                           # metric -> max or min; two or more: a Pareto front
      val/acc: max
    overrides:                            # optional: fixed settings of every trial
      trainer.max_epochs: 5
    pruner: {type: median, n_startup_trials: 3}   # optional (see machlite.search.study)
    hardware: {synth_timeout: 300}        # optional: the RTL flow's options (hardware objectives)

A key is any key ``machlite fit`` takes (``model.quantization.bits`` will be one more key).
This module only reads and checks the file's shape; whether each key and value fits
``machlite fit`` is checked by :func:`machlite.search.parsing.check_space`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from machlite.errors import ConfigError
from machlite.runs.hardware import HARDWARE_METRICS, HardwareOptions, parse_hardware

SPACE_FILE_KEYS = (
    "config",
    "name",
    "params",
    "objectives",
    "overrides",
    "pruner",
    "hardware",
    "description",
)
DISTRIBUTION_TYPES = ("float", "int", "categorical")
#: Objectives that are not logged scalars: read from the run folder instead.
SPECIAL_OBJECTIVES = {
    "epoch_time": "seconds per epoch, from the event files' wall times",
    "params": "the network's parameter count",
    "bits": "the model size in bits at its quantized formats (model.bits in HPARAMS)",
    "bops": "bit operations per sample at its quantized formats (model.bops in HPARAMS)",
    **HARDWARE_METRICS,  # from the run's hardware.json (machlite.runs.hardware)
}
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution.

    Attributes:
        key: The dotted config key, as on the ``machlite fit`` command line.
        type: ``float``, ``int`` or ``categorical``.
        low: Lowest value (ranges).
        high: Highest value (ranges, inclusive).
        log: Sample on a log scale (ranges).
        step: Grid step of a range, or None.
        choices: The values of a categorical.
    """

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The Optuna distribution (imports optuna)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            step = int(self.step) if self.step is not None else 1
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self) -> list[Any] | None:
        """Every value of the parameter, for the grid sampler; None for a float range
        without a step (it has no grid)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def probes(self) -> list[Any]:
        """Values to check against ``machlite fit`` before running: the ends of a range and
        a float in between that is not a whole number, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        if self.step is not None:
            return [float(self.low), float(self.high)]
        low, high = float(self.low), float(self.high)
        mid = math.sqrt(low * high) if self.log else low + 0.37 * (high - low)
        if float(mid).is_integer():
            mid = mid + min(0.5, (self.high - mid) / 2)
        return [float(self.low), float(mid), float(self.high)]


@dataclass
class Space:
    """What a search varies and optimises.

    Attributes:
        params: The searched keys, in file order.
        objectives: Metric to ``maximize`` or ``minimize``, in file order.
        overrides: Fixed ``(key, value)`` settings of every trial (command-line text).
        pruner: The pruner's settings (``type`` and its arguments), or None for the default.
        config: The base config from the file (resolved against it), or None.
        name: The file's ``name`` (default: its stem).
        hardware: The RTL flow's options when a trial measures its design (a hardware
            objective, or a ``hardware:`` block), else None.
    """

    params: list[Param]
    objectives: dict[str, str]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    pruner: dict[str, Any] | None = None
    config: Path | None = None
    name: str = "search"
    hardware: HardwareOptions | None = None

    @property
    def keys(self) -> list[str]:
        """The searched keys."""
        return [p.key for p in self.params]

    def distributions(self) -> dict[str, Any]:
        """Key to Optuna distribution."""
        return {p.key: p.distribution() for p in self.params}

    def signature(self) -> dict[str, Any]:
        """The space as plain data, kept in the study: resuming with another space is refused."""
        hardware = {} if self.hardware is None else {"hardware": self.hardware.to_dict()}
        return {
            **hardware,
            "params": {
                p.key: {
                    "type": p.type,
                    "low": p.low,
                    "high": p.high,
                    "log": p.log,
                    "step": p.step,
                    "choices": list(p.choices),
                }
                for p in self.params
            },
            "objectives": dict(self.objectives),
        }


def _number(where: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ConfigError(f"{where} must be a whole number for an int range, got {value!r}")
    return value


def parse_param(key: str, spec: Any, where: str = "space") -> Param:
    """One ``key: {type: ..., ...}`` entry of ``params``.

    Raises:
        ConfigError: An unknown type or field, or values that do not make a distribution.
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise ConfigError(f"{where}: {key!r} is not a config key like optimizer.lr")
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict) or spec.get("type") not in DISTRIBUTION_TYPES:
        raise ConfigError(
            f"{where}: {key} needs a distribution like {{type: float, low: 1.0e-4, high: 0.01, "
            f"log: true}}; type is one of {', '.join(DISTRIBUTION_TYPES)}"
        )
    kind = spec["type"]
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        raise ConfigError(
            f"{where}: {key}: unknown field(s) {', '.join(map(str, unknown))} for type {kind}; "
            f"allowed: {', '.join(sorted(_FIELDS[kind]))}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}: categorical needs choices: [A, B, ...]")
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(f"{where}: {key}: choices must be numbers, text, booleans or null")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: {key}: choices must differ: {choices}")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {key}: a {kind} range needs low and high")
    low = _number(f"{where}: {key}: low", spec["low"], integer)
    high = _number(f"{where}: {key}: high", spec["high"], integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{where}: {key}: step", step, integer)
        if step <= 0:
            raise ConfigError(f"{where}: {key}: step must be positive, got {step!r}")
    if not low < high:
        raise ConfigError(f"{where}: {key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log scale needs low > 0, got {low}")
    if log and step is not None and not (integer and step == 1):
        raise ConfigError(f"{where}: {key}: log and step cannot be combined")
    return Param(key, kind, low, high, log, step)


def parse_objectives(value: Any, where: str = "space") -> dict[str, str]:
    """``{val/acc: max, epoch_time: min}`` -> ``{"val/acc": "maximize", ...}``.

    Raises:
        ConfigError: None given, or a direction other than max/min.
    """
    if isinstance(value, str):
        value = {value: "max"}
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"{where}: objectives must map logged metrics to max or min, e.g. "
            "objectives: {val/acc: max}"
        )
    out = {}
    for metric, direction in value.items():
        if direction not in _DIRECTIONS:
            raise ConfigError(
                f"{where}: objective {metric}: direction must be max or min, got {direction!r}"
            )
        metric = str(metric)
        if "/" not in metric and metric not in SPECIAL_OBJECTIVES:
            raise ConfigError(
                f"{where}: objective {metric!r} is not a logged metric like val/acc or "
                f"test/acc, nor one of {', '.join(SPECIAL_OBJECTIVES)}"
            )
        out[metric] = _DIRECTIONS[direction]
    return out


def load_space(path: Path, cli_value: Any = str) -> Space:
    """Read a space file.

    Args:
        path: The YAML file.
        cli_value: Turns a YAML value into command-line text (for ``overrides``).

    Raises:
        ConfigError: A missing or malformed file, unknown keys, no params, bad distributions
            or objectives.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the space file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"space file {path} is not valid YAML: {err}".splitlines()[0]) from err
    where = f"space file {path}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(SPACE_FILE_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(SPACE_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPACE_FILE_KEYS)}"
        )
    params = data.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError(
            f"{where}: the space is empty: give params, e.g. params: {{optimizer.lr: {{type: "
            "float, low: 1.0e-4, high: 0.01, log: true}}"
        )
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a mapping of key: value")
    pruner = data.get("pruner")
    if pruner is not None and (not isinstance(pruner, dict) or "type" not in pruner):
        raise ConfigError(f"{where}: pruner must be a mapping like {{type: median}}")
    objectives = parse_objectives(data.get("objectives", {"val/acc": "max"}), where)
    hardware = None
    if "hardware" in data or any(m in HARDWARE_METRICS for m in objectives):
        hardware = parse_hardware(data.get("hardware"), where)
    config = None
    if data.get("config"):
        config = Path(str(data["config"]))
        config = config if config.is_absolute() else path.parent / config
    return Space(
        params=[parse_param(str(k), v, where) for k, v in params.items()],
        objectives=objectives,
        overrides=[(str(k), cli_value(v)) for k, v in overrides.items()],
        pruner=pruner,
        config=config,
        name=str(data.get("name") or path.stem),
        hardware=hardware,
    )
