"""The accuracy-vs-LUTs front of MNISTMLP on the real MNIST: bit widths x pruning sparsity.

Each point is a committed QAT config of MNISTMLP (``configs/quant/mnist_mlp_hw_w6a6.yaml``,
``_w4a4``, ``_w2a2``: every layer in fixed point, so it has a Verilog design) at a pruning
sparsity (``--model.pruning.sparsity S``: one global magnitude ranking over the Linear
weights, ramped by Zhu & Gupta's cubic schedule over epochs 0 to --prune_end_epoch, then
fine-tuned; 0: no pruning). Per point and seed: ``machlite fit`` (the config's 10 epochs),
``machlite test`` of its ``last.ckpt`` (the 10,000 real test images; ``last``, not ``best``:
a pruned run's best epoch may come before its masks reach the target). Per point, the first
seed's ``last.ckpt`` goes through ``machlite export --format verilog``: alkaid's C++ model of
the design against machlite on all 10,000 test images, and yosys ``synth_xilinx -family xc7``
(LUTs, FFs, CARRY4; yosys's counts, not Vivado's). Prints the table, writes it as JSON, and
draws the front (mean test accuracy with min-max bars over the seeds against yosys LUTs).

    python benchmarks/mnist_mlp_front.py --data_dir DIR --json \
        benchmarks/results/mnist_mlp_front.json --plot docs/img/mnist_mlp_front.png

DIR/MNIST/raw/ holds the four real MNIST files. Two processes run at a time (--jobs), each
on one thread. Needs the ``hw`` extra and yosys.
"""

import argparse
import json
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fit_run_folder, machlite_process  # noqa: E402

from machlite.atomic import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "mnist_mlp_front"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
#: Brevitas's BNN-PYNQ MLPs on MNIST (src/brevitas_examples/bnn_pynq/README.md in
#: Xilinx/brevitas): the full 28x28 image, 500-1000 epochs, another tool; no LUTs given
#: for a fully unrolled design (FINN folds its layers), so accuracy only.
PUBLISHED = {
    "Brevitas TFC 784-64-64-64-10, 1-bit w/a": 93.17,
    "Brevitas TFC, 2-bit w/a": 96.60,
}


#: Each process on one thread: two run at a time on the two cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def machlite(args: list[str], log: Path) -> str:
    """``python -m machlite ARGS`` on one thread; its output, kept in ``log``; exits on failure."""
    return machlite_process(args, log, SCRIPT, ONE_THREAD)


def point_args(quant: str, sparsity: float, end_epoch: int) -> list[str]:
    """The config and pruning flags of one point."""
    args = ["--config", str(REPO / "configs" / "quant" / f"mnist_mlp_hw_{quant}.yaml")]
    if sparsity > 0:
        args += ["--model.pruning.sparsity", str(sparsity)]
        args += ["--model.pruning.end_epoch", str(end_epoch)]
    return args


def fit_and_test(quant: str, sparsity: float, seed: int, opts: argparse.Namespace) -> dict:
    """One seed of one point: fit, then test its last checkpoint."""
    name = f"{quant}_s{int(100 * sparsity)}_seed{seed}"
    base = [*point_args(quant, sparsity, opts.prune_end_epoch), "--data.data_dir", opts.data_dir]
    base += ["--seed_everything", str(seed), "--data.seed", str(seed), *QUIET]
    log = opts.work / f"{name}.fit.log"
    start = time.monotonic()
    fit = ["fit", *base, *opts.extra, "--runs_dir", str(opts.work / "runs"), "--experiment", name]
    out = machlite(fit, log)
    fit_s = time.monotonic() - start
    ckpt = fit_run_folder(out, log, SCRIPT) / "checkpoints" / "last.ckpt"
    test = ["test", *base, "--ckpt_path", str(ckpt), "--runs_dir", str(opts.work / "tests")]
    out = machlite([*test, "--experiment", name], opts.work / f"{name}.test.log")
    acc = float(re.search(r"test accuracy ([\d.]+)% on 10,000 samples", out).group(1))
    print(f"{name}: test accuracy {acc:.2f}% (fit {fit_s:.0f} s)", flush=True)
    return {"seed": seed, "test_acc": acc, "fit_seconds": round(fit_s, 1), "ckpt": str(ckpt)}


def design(quant: str, sparsity: float, ckpt: str, opts: argparse.Namespace) -> dict:
    """The Verilog design of one point's first seed: C++ model check and yosys."""
    name = f"{quant}_s{int(100 * sparsity)}"
    dest = opts.work / "rtl" / name
    args = ["export", "--format", "verilog", "--ckpt_path", ckpt, "--out", str(dest)]
    args += ["--rtl_sim", "false", "--synth_timeout", "1800", "--data.data_dir", opts.data_dir]
    start = time.monotonic()
    machlite(args, opts.work / f"{name}.export.log")
    result = json.loads((dest / "export_verilog.json").read_text())
    result["export_seconds"] = round(time.monotonic() - start, 1)
    s = result["synthesis"]
    print(
        f"{name}: {s['luts']} yosys LUTs, identical outputs {100 * result['identical']:.2f}% "
        f"on {result['samples']} test images ({result['export_seconds']:.0f} s)",
        flush=True,
    )
    return result


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both mean accuracy (higher) and LUTs (lower)."""
    return [
        r
        for r in rows
        if not any(
            o["luts"] <= r["luts"]
            and o["test_acc_mean"] >= r["test_acc_mean"]
            and (o["luts"], o["test_acc_mean"]) != (r["luts"], r["test_acc_mean"])
            for o in rows
        )
    ]


def draw(rows: list[dict], path: Path) -> None:
    """Mean test accuracy (min-max bars over the seeds) against yosys LUTs, the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {0.0: "o", 0.5: "s", 0.75: "^"}
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    colors = dict(zip(sorted({r["quant"] for r in rows}), palette, strict=False))
    for r in rows:
        low, high = r["test_acc_mean"] - r["test_acc_min"], r["test_acc_max"] - r["test_acc_mean"]
        ax.errorbar(
            r["luts"],
            r["test_acc_mean"],
            yerr=[[low], [high]],
            fmt=markers.get(r["sparsity"], "D"),
            color=colors[r["quant"]],
            capsize=3,
            label=f"{r['quant']}, {int(100 * r['sparsity'])}% zeros",
        )
    front = sorted(pareto(rows), key=lambda r: r["luts"])
    ax.plot([r["luts"] for r in front], [r["test_acc_mean"] for r in front], "k--", lw=0.8)
    ax.set_xscale("log")
    for label, acc in PUBLISHED.items():  # x in axes fractions, y in accuracy
        ax.axhline(acc, color="grey", ls=":", lw=0.8)
        ax.text(
            0.01,
            acc,
            f"{label} (accuracy only)",
            fontsize=7,
            va="bottom",
            transform=ax.get_yaxis_transform(),
        )
    ax.set_xlabel("yosys LUTs (synth_xilinx xc7, not Vivado), fully unrolled design")
    ax.set_ylabel("test accuracy (%): mean, min-max over seeds")
    ax.set_title("MNISTMLP 196-32-32-10 on real MNIST (10,000 test images)", fontsize=11)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    """Fit, test, export, synthesize every point; print, write and draw the front."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="DIR with MNIST/raw/ (real MNIST)")
    parser.add_argument("--quants", nargs="+", default=["w6a6", "w4a4", "w2a2"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.0, 0.5, 0.75])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--prune_end_epoch", type=int, default=5, help="pruning ramp's end")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--work", default="runs/mnist_mlp_front", help="runs and designs")
    parser.add_argument("--json", default=None, help="write the table here")
    parser.add_argument("--plot", default=None, help="draw the front here (PNG)")
    parser.add_argument(
        "--replot", action="store_true", help="only draw --plot from the rows in --json"
    )
    parser.add_argument("extra", nargs="*", help="machlite overrides of the fits, after --")
    opts = parser.parse_args()
    if opts.replot:
        draw(json.loads(Path(opts.json).read_text())["rows"], Path(opts.plot))
        print(f"wrote {opts.plot}")
        return
    opts.work = Path(opts.work).resolve()
    opts.work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in opts.seeds.split(",")]
    points = [(q, s) for q in opts.quants for s in opts.sparsities]
    with ThreadPoolExecutor(opts.jobs) as pool:
        fits = {
            (q, s, seed): pool.submit(fit_and_test, q, s, seed, opts)
            for q, s in points
            for seed in seeds
        }
        runs = {key: f.result() for key, f in fits.items()}
        designs = {
            (q, s): pool.submit(design, q, s, runs[(q, s, seeds[0])]["ckpt"], opts)
            for q, s in points
        }
        hw = {key: f.result() for key, f in designs.items()}
    rows = []
    for q, s in points:
        accs = [runs[(q, s, seed)]["test_acc"] for seed in seeds]
        d, syn = hw[(q, s)], hw[(q, s)]["synthesis"]
        rows.append(
            {
                "quant": q,
                "sparsity": s,
                "test_acc_mean": round(statistics.mean(accs), 3),
                "test_acc_std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0,
                "test_acc_min": min(accs),
                "test_acc_max": max(accs),
                "runs": [runs[(q, s, seed)] for seed in seeds],
                "luts": syn["luts"],
                "ffs": syn["ffs"],
                "carry4": syn["carry4"],
                "dsps": syn["dsps"],
                "latency_cycles": d["latency_cycles"],
                "critical_path_ns": d["alkaid_estimate"]["critical_path_ns"],
                "identical": d["identical"],
                "float32": d["float32"],
                "max_abs_diff": d["max_abs_diff"],
                "design_samples": d["samples"],
                "yosys_seconds": syn["seconds"],
                "export_seconds": d["export_seconds"],
            }
        )
    front = {(r["quant"], r["sparsity"]) for r in pareto(rows)}
    print(
        "\n| formats | zeros | test acc. (mean ± std over the seeds) | yosys LUTs | FFs | CARRY4 | "
        "DSPs | latency | critical path (alkaid est.) | C++ model identical | yosys s | "
        "front |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    for r in rows:
        print(
            f"| {r['quant']} | {int(100 * r['sparsity'])}% | {r['test_acc_mean']:.2f} ± "
            f"{r['test_acc_std']:.2f}% | {r['luts']:,} | {r['ffs']} | {r['carry4']:,} | "
            f"{r['dsps']} | {r['latency_cycles']} | {r['critical_path_ns']} ns | "
            f"{100 * r['identical']:.2f}% | {r['yosys_seconds']:.0f} | "
            f"{'yes' if (r['quant'], r['sparsity']) in front else ''} |"
        )
    print("\nReal MNIST; LUTs, FFs, CARRY4, DSPs: yosys synth_xilinx -family xc7, not Vivado.")
    if opts.json:
        table = {
            "data": "real MNIST (10,000 test images)",
            "tool": "yosys synth_xilinx -family xc7 (not Vivado)",
            "seeds": seeds,
            "prune_end_epoch": opts.prune_end_epoch,
            "rows": rows,
            "published": PUBLISHED,
        }
        atomic_write_json(opts.json, table)
        print(f"wrote {opts.json}")
    if opts.plot:
        draw(rows, Path(opts.plot))
        print(f"wrote {opts.plot}")


if __name__ == "__main__":
    main()
