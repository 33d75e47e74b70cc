"""Measure a config's MNIST test accuracy over seeds: fit, then test the last checkpoint.

    python benchmarks/mnist_accuracy.py --config configs/mnist.yaml --seeds 0,1,2 \
        --data_dir DIR --json mnist.json [-- extra machlite overrides]

DIR/MNIST/raw/ holds the four real MNIST files. Each seed is a normal ``machlite fit``
(seed_everything and data.seed set to the seed) followed by ``machlite test`` of its
``last.ckpt`` on the 10,000 test images. Prints a table (test accuracy, minutes per epoch)
and the mean and std over seeds; docs/mnist.md quotes its output.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machlite.atomic import atomic_write


def run(args: list[str], log: Path) -> str:
    """Run ``python -m machlite ARGS``, keep its output in ``log``, return the output."""
    cmd = [sys.executable, "-m", "machlite", *args, "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"mnist_accuracy: {' '.join(args[:3])} failed; see {log}")
    return proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--runs_dir", default="runs/mnist_accuracy")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("extra", nargs="*", help="machlite overrides, after --")
    opts = parser.parse_args()
    name = Path(opts.config).stem
    base = ["--config", opts.config, "--data.data_dir", opts.data_dir]
    base += ["--runs_dir", opts.runs_dir, *opts.extra]
    results = []
    for seed in [int(s) for s in opts.seeds.split(",")]:
        experiment = f"{name}_seed{seed}"
        seeded = [*base, "--seed_everything", str(seed), "--data.seed", str(seed)]
        start = time.perf_counter()
        out = run(["fit", *seeded, "--experiment", experiment], Path(f"{experiment}.fit.log"))
        fit_s = time.perf_counter() - start
        epochs = int(re.search(r"max_epochs=(\d+)", out).group(1))
        run_dir = re.search(r"machlite: run finished; results in (\S+)", out).group(1)
        ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
        test = ["test", *seeded, "--experiment", experiment, "--ckpt_path", str(ckpt)]
        out = run(test, Path(f"{experiment}.test.log"))
        acc = float(re.search(r"test accuracy ([\d.]+)% on 10,000 samples", out).group(1))
        results.append({"seed": seed, "test_acc": acc, "s_per_epoch": fit_s / epochs})
        print(f"{name} seed {seed}: test accuracy {acc:.2f}%, {fit_s / epochs:.1f} s per epoch")
    accs = [r["test_acc"] for r in results]
    mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
    epoch_s = statistics.median(r["s_per_epoch"] for r in results)
    print(f"{name}: test accuracy {mean:.2f} +- {std:.2f}% over {len(accs)} seeds; ", end="")
    print(f"{epoch_s:.1f} s per epoch (fit wall time / epochs, incl. validation)")
    if opts.json:
        summary = {"config": opts.config, "runs": results, "mean": mean, "std": std}
        summary["s_per_epoch_median"] = epoch_s
        atomic_write(opts.json, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
