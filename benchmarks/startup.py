"""Startup benchmark: how long the light ``machlite`` commands take, against ``import torch``.

Everything is measured in ONE run, each command a fresh Python process, the commands
interleaved (the order rotates every round) and repeated (median of --rounds):
  (a) python -c "import torch"          the floor: ``machlite models`` needs torch
  (b) python -m machlite models         imports torch and the networks, no Lightning
  (c) python -m machlite --help         imports neither
  (d) python -m machlite fit --help     for information: imports Lightning and the CLI
Targets: (b) / (a) <= 1.3 and (c) / (a) <= 1.3.

    python benchmarks/startup.py --rounds 7 --json startup.json
"""

import argparse
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, report  # noqa: E402

#: Each measured command, as arguments to the Python interpreter.
COMMANDS: dict[str, list[str]] = {
    "import_torch": ["-c", "import torch"],
    "models": ["-m", "machlite", "models"],
    "help": ["-m", "machlite", "--help"],
    "fit_help": ["-m", "machlite", "fit", "--help"],
}
#: The ratios with a target, and the target (at most).
TARGETS: dict[str, float] = {
    "startup_models_over_import_torch": 1.3,
    "startup_help_over_import_torch": 1.3,
}


def run_seconds(args: list[str]) -> float:
    """Wall time of one fresh ``python ARGS`` process, from start to exit (must exit 0)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return seconds


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write the medians and ratios to this file")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the untimed first run of each command"
    )
    args = parser.parse_args()

    if not args.no_warmup:
        print("untimed warm-up (page cache, byte-code caches)", flush=True)
        for command in COMMANDS.values():
            run_seconds(command)
    med = interleaved(
        {name: partial(run_seconds, command) for name, command in COMMANDS.items()}, args.rounds
    )
    results: dict[str, float | int] = {"rounds": args.rounds}
    results |= {f"startup_{name}_s": seconds for name, seconds in med.items()}
    results["startup_models_over_import_torch"] = med["models"] / med["import_torch"]
    results["startup_help_over_import_torch"] = med["help"] / med["import_torch"]
    report(args.json, results, TARGETS)


if __name__ == "__main__":
    main()
