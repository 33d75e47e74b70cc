"""What quantization-aware training costs: a QAT training epoch over a float one, in ONE run.

On SYNTHETIC JSC data of the real size (about 789,600 training jets): one JSC-Tiny training
epoch of machlite with ``configs/jsc_tiny.yaml`` (float) and with
``configs/quant/jsc_tiny_qat.yaml`` (the same network, every Linear's input, weight and bias
and the ReLU's input fake-quantized at (8, 4) in every forward pass, straight-through
gradients), interleaved and repeated (median of --repeats), per batch size. Both are the
CLI's own fit with its default callbacks and logging; validation is off, so the epoch is
training only. The issue's bound: QAT at most 1.5x float per epoch at batch 256.

    python benchmarks/jsc_qat.py --json benchmarks/results/jsc_qat_2core.json
"""

import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, jsc_cli_args, machlite_epoch, report  # noqa: E402
from jsc_epoch import jsc_parser, setup_seconds  # noqa: E402

from machlite.accelerator import stop_gpu_probe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: The issue's bound on a QAT epoch over a float epoch (JSC-Tiny, batch 256).
TARGET = 1.5


def main() -> None:
    """Run the benchmark and print the table."""
    parser = jsc_parser(__doc__.splitlines()[0])
    parser.set_defaults(batch_sizes=[256])
    parser.add_argument("--qat_config", default=str(REPO / "configs/quant/jsc_tiny_qat.yaml"))
    args = parser.parse_args()

    stop_gpu_probe()  # as a machlite CPU run does (performance.md)
    work = Path(tempfile.mkdtemp(prefix="machlite-bench-"))
    data_dir = work / "data"
    print(f"SYNTHETIC JSC data, {args.jets} jets, in {data_dir}", flush=True)
    setup_seconds(data_dir, args.jets, cached=False)  # writes the synthetic file once
    results: dict[str, float | int] = {}
    targets = {}
    for bs in args.batch_sizes:
        configs = {"float": args.config, "qat": args.qat_config}
        runs = {
            name: jsc_cli_args(config, args.jets, data_dir, bs, work / "runs")
            for name, config in configs.items()
        }
        print(f"batch size {bs}:", flush=True)
        for cli_args in runs.values():  # untimed warm-up: lazy imports, first writer
            machlite_epoch([*cli_args, "--trainer.limit_train_batches", "2"], validate=False)
        med = interleaved(
            {name: partial(machlite_epoch, cli_args, False) for name, cli_args in runs.items()},
            args.repeats,
        )
        key = f"jsc_tiny_bs{bs}"
        results[f"{key}_float_s"] = med["float"]
        results[f"{key}_qat_s"] = med["qat"]
        results[f"{key}_qat_over_float"] = med["qat"] / med["float"]
        if bs == 256:
            targets[f"{key}_qat_over_float"] = TARGET
    report(args.json, results, targets)


if __name__ == "__main__":
    main()
