"""``machlite export --format verilog``: its command-line options.

The flow itself (trace, both checks, synthesis) is :func:`machlite.hw.design.verilog_design`,
which hardware search objectives use too. docs/hardware.md.
"""

from __future__ import annotations

import argparse
from typing import Any

#: The result file, written last: a folder without it is not a finished export.
RESULT = "export_verilog.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The verilog format's options on the ``machlite export`` command line."""
    flag = {"true": True, "false": False}
    g = p.add_argument_group("--format verilog (docs/hardware.md)")
    g.add_argument(
        "--latency_cutoff",
        type=float,
        default=0.0,
        help="Pipeline the design: at most this many ns of combinational delay per stage "
        "(alkaid's delay model); 0: one combinational design (default)",
    )
    g.add_argument(
        "--rtl_sim",
        type=str.lower,
        choices=flag,
        default="true",
        help="Simulate the emitted Verilog with Verilator on the test split (default true)",
    )
    g.add_argument(
        "--synth",
        type=str.lower,
        choices=flag,
        default="true",
        help="Synthesize with yosys for Xilinx 7-series (synth_xilinx) (default true)",
    )
    g.add_argument(
        "--synth_timeout",
        type=float,
        default=1800.0,
        help="Seconds before yosys is stopped (default 1800)",
    )


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The verilog options of a parsed ``machlite export`` command line."""
    return {
        "latency_cutoff": args.latency_cutoff,
        "rtl_sim": args.rtl_sim == "true",
        "synth": args.synth == "true",
        "synth_timeout": args.synth_timeout,
    }


__all__ = ["RESULT", "add_arguments", "options_of"]
