"""hls4ml's C++ model against machlite's quantized model: the agreement table of docs/export.md.

For each JSC network (JSC-Tiny, JSC-Toy, JSC-Will): fit its config for --epochs on SYNTHETIC
JSC data (``machlite fit``), then, for each quantization file (the lab's (16, 8) and (8, 4)),
``machlite export --format hls4ml`` of the float checkpoint: hls4ml's project compiled with
g++ and run on the whole test split, against machlite's fake-quantized network (PTQ of the
same checkpoint). Prints the table (class agreement, identical outputs, max abs diff) and
writes it as JSON. The data is synthetic: the table says whether the two compute the same
thing, not how accurate either is. Needs the ``hw`` extra and g++; about 10 minutes on an
idle 2-core CPU.

    python benchmarks/hls4ml_agreement.py --json benchmarks/results/hls4ml_agreement.json
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fit_run_folder, machlite_process  # noqa: E402

from machlite.atomic import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("jsc_tiny", "jsc_toy", "jsc_will")
QUANTS = ("int16_8", "int8_4")
SCRIPT = "hls4ml_agreement"
#: The issue's goal for the share of test samples whose class agrees.
TARGET = 0.999


def main() -> None:
    """Fit, export, compare, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--quants", nargs="+", default=list(QUANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jets", type=int, default=20_000, help="synthetic file size")
    parser.add_argument("--work", default=None, help="folder for runs and projects (default: tmp)")
    parser.add_argument("--json", default=None, help="write the table here")
    opts = parser.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="machlite-hls4ml-"))
    work.mkdir(parents=True, exist_ok=True)
    data = ["--data.source", "synthetic", "--data.synthetic_jets", str(opts.jets)]
    data += ["--data.data_dir", str(work / "data")]
    rows = []
    for net in opts.networks:
        fit = ["fit", "--config", str(REPO / "configs" / f"{net}.yaml"), *data]
        fit += ["--trainer.max_epochs", str(opts.epochs), "--runs_dir", str(work / "runs")]
        fit += ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
        log = work / f"{net}.fit.log"
        run_dir = fit_run_folder(machlite_process(fit, log, SCRIPT), log, SCRIPT)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        for quant in opts.quants:
            dest = work / "export" / f"{net}_{quant}"
            export = ["export", "--ckpt_path", str(ckpt), "--format", "hls4ml", "--out", str(dest)]
            export += ["--quant", str(REPO / "configs" / "quant" / f"{quant}.yaml"), *data]
            out = machlite_process(export, work / f"{net}_{quant}.export.log", SCRIPT)
            line = next((x for x in out.splitlines() if x.startswith("machlite: hls4ml")), "")
            print(f"{net} {quant} (SYNTHETIC data): {line}", flush=True)
            result = json.loads((dest / "export_hls4ml.json").read_text())
            rows.append({"network": net, "quant": quant, **result})
    print(
        "\n| network | quantization | test samples (SYNTHETIC) | class agreement | "
        "identical outputs | max abs diff |\n|---|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['network']} | {r['quant']} | {r['samples']} | "
            f"{100 * r['class_agreement']:.2f}% | {100 * r['identical']:.2f}% | "
            f"{r['max_abs_diff']:.3g} |"
        )
    met = all(r["class_agreement"] >= TARGET for r in rows)
    print(f"\nclass agreement >= {100 * TARGET:.1f}% everywhere: {'pass' if met else 'FAIL'}")
    if opts.json:
        keep = ("network", "quant", "samples", "class_agreement", "identical", "max_abs_diff")
        table = {
            "data": "SYNTHETIC",
            "epochs": opts.epochs,
            "jets": opts.jets,
            "rows": [{k: r[k] for k in keep} for r in rows],
        }
        atomic_write_json(opts.json, table)
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
