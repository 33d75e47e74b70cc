"""MNIST epoch benchmark: machlite vs a plain PyTorch loop vs a machop-style pipeline.

Measured in ONE run, variants interleaved and repeated (median of --repeats), on the real
MNIST files (55,000 training images):
  (a) machlite fit (configs/mnist.yaml without its random shifts, which the other variants
      do not do either), default callbacks and logging, training epoch only
  (b) the same plus validation
  (c) a plain PyTorch loop (same network, Adam, pre-normalised tensors, one index per batch)
  (d) machop-style: torchvision MNIST (the same 55,000 training images) with per-sample
      ToTensor + Normalize transforms and a DataLoader with 2 workers in a Lightning Trainer
      with per-step logging and progress bar, validating on those training images
at batch sizes 64 and 8.

    python benchmarks/mnist_epoch.py --mnist ../shared/data/mnist --json mnist.json
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import Subset
from torchvision import transforms
from torchvision.datasets import MNIST

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    compare,
    report,
)

from machlite.accelerator import stop_gpu_probe  # noqa: E402
from machlite.datasets import MNISTDataModule  # noqa: E402
from machlite.datasets.mnist import MNIST_FILES, MNIST_MEAN, MNIST_STD  # noqa: E402
from machlite.models import MNISTNet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mnist",
        default=str(REPO.parent / "shared" / "data" / "mnist"),
        help="folder with the four MNIST .gz files",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 8])
    parser.add_argument("--json", help="write the ratios and times to this file")
    parser.add_argument("overrides", nargs="*", help="extra machlite overrides")
    args = parser.parse_args()

    stop_gpu_probe()  # as a machlite CPU run does, for every variant (performance.md)
    work = Path(tempfile.mkdtemp(prefix="machlite-bench-"))
    raw = work / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, _, _ in MNIST_FILES:
        shutil.copy(Path(args.mnist) / name, raw / name)
    dm = MNISTDataModule(data_dir=str(work / "data"))
    dm.setup("fit")
    x, y = dm.splits["train"]
    pil = MNIST(
        str(work / "data"),
        train=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        ),
    )
    train_idx, _ = dm.split_indices(len(pil))  # (d) trains on the same 55,000 images
    pil = Subset(pil, train_idx.tolist())
    results: dict[str, float] = {}
    for bs in args.batch_sizes:
        cli_args = [
            "--config", str(REPO / "configs" / "mnist.yaml"),
            "--data.data_dir", str(work / "data"), "--data.batch_size", str(bs),
            "--data.augment_shift", "0", "--runs_dir", str(work / "runs"),
            "--trainer.accelerator", "cpu", *args.overrides,
        ]  # fmt: skip
        results |= compare(
            "mnist", cli_args, MNISTNet, x, y, pil, bs, 10, work / "runs", args.repeats
        )
    report(args.json, results)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
