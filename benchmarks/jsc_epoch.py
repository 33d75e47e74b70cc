"""JSC epoch benchmark: machlite vs a plain PyTorch loop vs a machop-style pipeline.

Everything is measured in ONE run, variants interleaved and repeated (median of --repeats),
on SYNTHETIC JSC data of the real size (about 789,600 training jets):
  (a) machlite fit, default callbacks and logging, training epoch only
  (b) the same plus validation
  (c) a plain PyTorch loop (same network, Adam, in-memory tensors, one index per batch)
  (d) machop-style: TensorDataset + DataLoader(2 workers) in a Lightning Trainer with
      per-step logging and progress bar, validating on the training set
at batch sizes 256 and 32, plus the data setup time, first run vs cached.

    python benchmarks/jsc_epoch.py --json jsc.json
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    compare,
    interleaved,
    jsc_cli_args,
    report,
)

from machlite.accelerator import stop_gpu_probe  # noqa: E402
from machlite.datasets import JSCDataModule  # noqa: E402
from machlite.models import NETWORKS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Jets in the synthetic file so that deduplication, the 80% split and a 10% validation
#: hold-out leave about 789,600 training jets, the real file's training-set size.
REAL_SIZE_JETS = 1_119_048


def setup_seconds(data_dir: Path, jets: int, cached: bool) -> float:
    """Time prepare_data + setup of the JSC datamodule, with or without its cache."""
    dm = JSCDataModule(data_dir=str(data_dir), source="synthetic", synthetic_jets=jets)
    if not cached and dm.file_path.exists():
        dm.cache_path.unlink(missing_ok=True)
    start = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    return time.perf_counter() - start


def jsc_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every JSC benchmark takes: data size, rounds, batch sizes, config, JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jets", type=int, default=REAL_SIZE_JETS, help="synthetic file size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--config", default=str(REPO / "configs" / "jsc_tiny.yaml"))
    parser.add_argument(
        "--network", default="JSCTiny", choices=sorted(NETWORKS), help="the plain loop's network"
    )
    parser.add_argument("--json", help="write the ratios and times to this file")
    return parser


def main() -> None:
    """Run the benchmark and print the table."""
    parser = jsc_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "overrides", nargs="*", help="extra machlite overrides, e.g. --model.steps_per_call 1"
    )
    args = parser.parse_args()

    stop_gpu_probe()  # as a machlite CPU run does, for every variant (performance.md)
    work = Path(tempfile.mkdtemp(prefix="machlite-bench-"))
    data_dir = work / "data"
    print(f"SYNTHETIC JSC data, {args.jets} jets, in {data_dir}", flush=True)
    setup_seconds(data_dir, args.jets, cached=False)  # writes the synthetic file once
    setup = interleaved(
        {
            "setup_first": lambda: setup_seconds(data_dir, args.jets, cached=False),
            "setup_cached": lambda: setup_seconds(data_dir, args.jets, cached=True),
        },
        args.repeats,
    )
    dm = JSCDataModule(data_dir=str(data_dir), source="synthetic", synthetic_jets=args.jets)
    dm.setup("fit")
    x, y = dm.splits["train"]
    print(f"training jets: {len(y)}", flush=True)

    results: dict[str, float | int] = {
        "train_jets": len(y),
        "setup_first_s": setup["setup_first"],
        "setup_cached_s": setup["setup_cached"],
        "jsc_cache_speedup": setup["setup_first"] / setup["setup_cached"],
    }
    for bs in args.batch_sizes:
        cli_args = jsc_cli_args(
            args.config, args.jets, data_dir, bs, work / "runs", *args.overrides
        )
        results |= compare(
            "jsc", cli_args, NETWORKS[args.network], x, y, TensorDataset(x, y), bs, 5,
            work / "runs", args.repeats,
        )  # fmt: skip

    report(args.json, results)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
