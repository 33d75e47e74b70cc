"""The hardware table of docs/hardware.md: QAT -> Verilog -> bit-exact checks -> yosys LUTs.

For each JSC network (JSC-Tiny, JSC-Toy, JSC-Will) and each hardware quantization file
(``configs/quant/hw_int16_8.yaml``, ``hw_int8_4``, ``hw_int4_2``, ``hw_mixed``: every layer
quantized, BatchNorm included): QAT for --epochs on SYNTHETIC JSC data (``machlite fit`` with
``--model.quantization FILE``), then ``machlite export --format verilog`` of that checkpoint:
alkaid's C++ model and the Verilator-simulated RTL against machlite on the whole test split,
and yosys ``synth_xilinx -family xc7``. Prints the table (LUTs, FFs, CARRY4, DSPs, latency,
bit-exactness, seconds per step) and writes it as JSON. The LUTs are yosys's for xc7, not
Vivado's; the data is synthetic, so the accuracy column says nothing about jets. Needs the
``hw`` extra and yosys (``apt-get install -y yosys``).

    python benchmarks/verilog_hardware.py --json benchmarks/results/verilog_hardware_2core.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fit_run_folder, machlite_process  # noqa: E402

from machlite.atomic import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("jsc_tiny", "jsc_toy", "jsc_will")
QUANTS = ("hw_int16_8", "hw_int8_4", "hw_int4_2", "hw_mixed")
SCRIPT = "verilog_hardware"


def main() -> None:
    """QAT, export, check, synthesize, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--quants", nargs="+", default=list(QUANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jets", type=int, default=20_000, help="synthetic file size")
    parser.add_argument("--latency_cutoff", type=float, default=0.0, help="ns per stage")
    parser.add_argument("--work", default=None, help="folder for runs and projects (default: tmp)")
    parser.add_argument("--json", default=None, help="write the table here")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of an existing --json file that this run did not measure",
    )
    opts = parser.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="machlite-verilog-"))
    work.mkdir(parents=True, exist_ok=True)
    data = ["--data.source", "synthetic", "--data.synthetic_jets", str(opts.jets)]
    data += ["--data.data_dir", str(work / "data")]
    rows = []
    for net in opts.networks:
        for quant in opts.quants:
            qfile = str(REPO / "configs" / "quant" / f"{quant}.yaml")
            fit = ["fit", "--config", str(REPO / "configs" / f"{net}.yaml"), *data]
            fit += ["--model.quantization", qfile, "--experiment", f"{net}_{quant}"]
            fit += ["--trainer.max_epochs", str(opts.epochs), "--runs_dir", str(work / "runs")]
            fit += ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
            log = work / f"{net}_{quant}.fit.log"
            start = time.monotonic()
            run_dir = fit_run_folder(machlite_process(fit, log, SCRIPT), log, SCRIPT)
            fit_s = time.monotonic() - start
            dest = work / "export" / f"{net}_{quant}"
            ckpt = run_dir / "checkpoints" / "last.ckpt"
            export = ["export", "--ckpt_path", str(ckpt), "--format", "verilog", "--out", str(dest)]
            export += ["--latency_cutoff", str(opts.latency_cutoff), *data]
            start = time.monotonic()
            log = work / f"{net}_{quant}.export.log"
            proc = subprocess.run(
                [sys.executable, "-m", "machlite", *export], capture_output=True, text=True
            )
            log.write_text(proc.stdout + proc.stderr)
            export_s = time.monotonic() - start
            if proc.returncode != 0:  # a refusal (e.g. float32-inexact sums) is a row too
                reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{net} {quant}: refused: {reason}", flush=True)
                rows.append({"network": net, "quant": quant, "refused": reason})
                continue
            for line in proc.stdout.splitlines():
                if line.startswith("machlite:"):
                    print(f"{net} {quant}: {line}", flush=True)
            result = json.loads((dest / "export_verilog.json").read_text())
            rows.append(
                {
                    "network": net,
                    "quant": quant,
                    **result,
                    "fit_seconds": round(fit_s, 1),
                    "export_seconds": round(export_s, 1),
                }
            )
    print(
        "\n| network | formats | LUTs | FFs | CARRY4 | DSPs | latency (cycles) | C++ model | "
        "RTL sim | trace s | RTL sim s | yosys s | export s |\n"
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"
    )
    for r in rows:
        if "refused" in r:
            print(f"| {r['network']} | {r['quant']} | refused: {r['refused']} |")
            continue
        s, sec = r["synthesis"], r["seconds"]
        exact = f"{100 * r['identical']:.2f}%"
        rtl = f"{100 * r['rtl_sim']['identical']:.2f}%"
        print(
            f"| {r['network']} | {r['quant']} | {s['luts']} | {s['ffs']} | {s['carry4']} | "
            f"{s['dsps']} | {r['latency_cycles']} | {exact} | {rtl} | {sec['trace']} | "
            f"{sec['rtl_sim']} | {sec['synthesis']} | {r['export_seconds']} |"
        )
    print("\nLUTs, FFs, CARRY4, DSPs: yosys synth_xilinx -family xc7, not Vivado.")
    if opts.json and opts.merge and Path(opts.json).is_file():
        measured = {(r["network"], r["quant"]) for r in rows}
        kept = json.loads(Path(opts.json).read_text())["rows"]
        rows = [r for r in kept if (r["network"], r["quant"]) not in measured] + rows
    if opts.json:
        table = {
            "data": "SYNTHETIC",
            "tool": "yosys synth_xilinx -family xc7 (not Vivado)",
            "epochs": opts.epochs,
            "jets": opts.jets,
            "latency_cutoff": opts.latency_cutoff,
            "rows": rows,
        }
        atomic_write_json(opts.json, table)
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
