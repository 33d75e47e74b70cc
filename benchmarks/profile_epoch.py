"""Profile one machlite JSC training epoch: where a step's time goes, by package and function.

Runs machlite's own fit (the CLI's code path, default callbacks and logging) for one epoch
on a SYNTHETIC JSC file, after one unprofiled warm-up epoch. cProfile runs from the start
of the training epoch to the end of training (what the epoch benchmarks time). Prints the
time per optimizer step by package (each function's own time, not its callees'), then the
functions with the most cumulative time. cProfile slows Python code far more than C
kernels, so the shares overstate the Python side.

    python benchmarks/profile_epoch.py --batch-size 256
    python benchmarks/profile_epoch.py --batch-size 256 --plain    # the plain loop, to compare
    python benchmarks/profile_epoch.py --batch-size 32 -- --model.steps_per_call 1
"""

import argparse
import cProfile
import pstats
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import jsc_cli_args, machlite_epoch, plain_epoch  # noqa: E402

from machlite.accelerator import stop_gpu_probe  # noqa: E402
from machlite.datasets import JSCDataModule  # noqa: E402
from machlite.models import JSCTiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Where a function's file lives -> the name it is counted under.
PACKAGES = (
    ("/lightning/", "lightning"),
    ("/torchmetrics/", "torchmetrics"),
    ("/torch/", "torch (Python side)"),
    ("/machlite/", "machlite"),
    ("/datasets/", "machlite"),
    ("/models/", "machlite"),
)


def package(filename: str) -> str:
    """The package a profiled function belongs to (C functions count as ``builtins``)."""
    if filename == "~":
        return "builtins and C (torch kernels, autograd)"
    for part, name in PACKAGES:
        if part in filename:
            return name
    return "other Python"


def main() -> None:
    """Profile the epoch and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=400_000, help="synthetic file size")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--config", default=str(REPO / "configs" / "jsc_tiny.yaml"))
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument(
        "--plain", action="store_true", help="profile the plain PyTorch loop (JSC-Tiny) instead"
    )
    parser.add_argument("overrides", nargs="*", help="extra machlite overrides")
    args = parser.parse_args()

    stop_gpu_probe()  # as a machlite CPU run does, for the plain loop too (performance.md)
    work = Path(tempfile.mkdtemp(prefix="machlite-profile-"))
    data_dir = work / "data"
    dm = JSCDataModule(data_dir=str(data_dir), source="synthetic", synthetic_jets=args.jets)
    dm.prepare_data()
    dm.setup("fit")
    steps = -(-len(dm.splits["train"][1]) // args.batch_size)
    cli_args = jsc_cli_args(
        args.config, args.jets, data_dir, args.batch_size, work / "runs",
        "--trainer.enable_progress_bar", "false", *args.overrides,
    )  # fmt: skip
    x, y = dm.splits["train"]

    profiler = cProfile.Profile()

    def epoch(profile: bool) -> float:
        if args.plain:
            if profile:
                profiler.enable()
            seconds = plain_epoch(JSCTiny(), x, y, args.batch_size, seed=0)
            profiler.disable()
            return seconds
        return machlite_epoch(cli_args, validate=False, profiler=profiler if profile else None)

    epoch(profile=False)  # warm-up: imports, first-call costs
    seconds = epoch(profile=True)

    stats = pstats.Stats(profiler)
    own: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        own[package(filename)] += tottime
    total = sum(own.values())
    what = "plain PyTorch loop" if args.plain else "machlite fit"
    print(f"{what}, SYNTHETIC JSC, batch {args.batch_size}, {steps} optimizer steps")
    print(f"epoch under the profiler: {seconds:.2f} s ({seconds / steps * 1e6:.0f} us/step)")
    print("\n| package | own time | us per step | share |\n|---|---:|---:|---:|")
    for name, value in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {value:.2f} s | {value / steps * 1e6:.0f} | {value / total:.0%} |")
    print()
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
