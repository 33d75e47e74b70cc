"""Measure a config's MNIST test accuracy over seeds: fit, then test the last checkpoint.

    python benchmarks/mnist_accuracy.py --config configs/mnist.yaml --seeds 0,1,2 \
        --data_dir DIR --json mnist.json [--ptq configs/quant/mnist_int8.yaml] \
        [-- extra machlite overrides]

DIR/MNIST/raw/ holds the four real MNIST files. Each seed is a normal ``machlite fit``
(seed_everything and data.seed set to the seed) followed by ``machlite test`` of its
``last.ckpt`` on the 10,000 test images; with ``--ptq Q``, also ``machlite quantize`` of that
checkpoint with the quantization file Q (float and quantized test accuracy). Prints a table
(test accuracy, seconds per epoch) and the mean and std over seeds; docs/mnist.md and
docs/quantization.md quote its output.
"""

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fit_run_folder, machlite_process  # noqa: E402

from machlite.atomic import atomic_write  # noqa: E402

SCRIPT = "mnist_accuracy"
QUIET = ["--trainer.enable_progress_bar", "false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--runs_dir", default="runs/mnist_accuracy")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--ptq", default=None, help="a quantization file: PTQ of each checkpoint")
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
        log = Path(f"{experiment}.fit.log")
        out = machlite_process(["fit", *seeded, "--experiment", experiment, *QUIET], log, SCRIPT)
        fit_s = time.perf_counter() - start
        epochs = int(re.search(r"max_epochs=(\d+)", out).group(1))
        ckpt = fit_run_folder(out, log, SCRIPT) / "checkpoints" / "last.ckpt"
        test = ["test", *seeded, "--experiment", experiment, "--ckpt_path", str(ckpt), *QUIET]
        out = machlite_process(test, Path(f"{experiment}.test.log"), SCRIPT)
        acc = float(re.search(r"test accuracy ([\d.]+)% on 10,000 samples", out).group(1))
        row = {"seed": seed, "test_acc": acc, "s_per_epoch": fit_s / epochs}
        text = f"{name} seed {seed}: test accuracy {acc:.2f}%, {fit_s / epochs:.1f} s per epoch"
        if opts.ptq:
            ptq_dir = ckpt.parents[1] / f"ptq_{Path(opts.ptq).stem}"
            quantize = ["quantize", "--config", opts.config, "--data.data_dir", opts.data_dir]
            quantize += [*opts.extra, "--quant", opts.ptq, "--ckpt_path", str(ckpt)]
            quantize += ["--out", str(ptq_dir)]
            machlite_process(quantize, Path(f"{experiment}.quantize.log"), SCRIPT)
            table = json.loads((ptq_dir / "quantize.json").read_text())
            row["ptq_float_test_acc"] = 100 * table["float"]["test_acc"]
            row["ptq_test_acc"] = 100 * table["quantized"]["test_acc"]
            text += f"; PTQ ({Path(opts.ptq).stem}): test accuracy {row['ptq_test_acc']:.2f}%"
        results.append(row)
        print(text, flush=True)
    accs = [r["test_acc"] for r in results]
    mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
    epoch_s = statistics.median(r["s_per_epoch"] for r in results)
    print(f"{name}: test accuracy {mean:.2f} +- {std:.2f}% over {len(accs)} seeds; ", end="")
    print(f"{epoch_s:.1f} s per epoch (fit wall time / epochs, incl. validation)")
    if opts.ptq:
        ptq = [f"{r['ptq_test_acc'] - r['ptq_float_test_acc']:+.2f}" for r in results]
        print(f"PTQ minus float test accuracy, per seed: {', '.join(ptq)} points")
    if opts.json:
        summary = {"config": opts.config, "runs": results, "mean": mean, "std": std}
        summary["s_per_epoch_median"] = epoch_s
        atomic_write(opts.json, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
