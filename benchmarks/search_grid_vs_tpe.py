"""Brute force against TPE: trials each sampler needs to reach the grid's best, from real searches.

Over ``configs/search/lr_batch_size_grid.yaml`` (learning rate x batch size of JSC-Tiny, 10
grid points), for each sampler seed: one ``machlite search --sampler grid`` (the whole grid,
in the order the seeded GridSampler visits it) and one ``machlite search --sampler tpe
--trials N`` (N = the grid's size), each its own study. Every trial is a normal fit on
SYNTHETIC JSC data. "Trials to best" is the number of the first trial whose val/acc is at
least the best val/acc the grid found with that seed minus --tolerance; a TPE search that
never gets there counts as N + 1 (N: its finished trials). Prints the table and the
medians over the seeds, and writes them as JSON. The data is synthetic: the numbers
compare the samplers on this problem, not the network's accuracy on real jets.

    python benchmarks/search_grid_vs_tpe.py --json benchmarks/results/search_grid_vs_tpe.json
"""

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machlite_process  # noqa: E402

from machlite.atomic import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "configs" / "search" / "lr_batch_size_grid.yaml"
#: The objective compared: the space file's (maximised) val/acc.
OBJECTIVE = "val/acc"
SCRIPT = "search_grid_vs_tpe"


def search(args: list[str], search_dir: Path) -> list[float]:
    """Run one ``machlite search``; return its finished trials' objective values in trial
    order (the space's first objective, a maximum)."""
    log = search_dir.parent / f"{search_dir.name}.log"
    machlite_process(["search", *args, "--search_dir", str(search_dir)], log, SCRIPT)
    with open(search_dir / "trials.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["trial"]))
    values = [float(r[OBJECTIVE]) for r in rows if r["state"] == "COMPLETE" and r.get(OBJECTIVE)]
    if not values:
        sys.exit(f"{SCRIPT}: no trial of {search_dir} finished with {OBJECTIVE}; see {log}")
    return values


def trials_to(values: list[float], target: float, tolerance: float) -> int:
    """1 + the index of the first value at least ``target - tolerance`` (len + 1 if none)."""
    for i, value in enumerate(values):
        if value >= target - tolerance:
            return i + 1
    return len(values) + 1


def main() -> None:
    """Run the searches, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", default=str(SPACE), help="a space file with a grid and a val/acc objective"
    )
    parser.add_argument("--seeds", default="0,1,2", help="sampler seeds")
    parser.add_argument("--jets", type=int, default=10_000, help="synthetic file size")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--work", default=None, help="folder for the searches (default: tmp)")
    parser.add_argument("--json", default=None, help="write the results here")
    opts = parser.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="machlite-search-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--space", opts.space, "--data.source", "synthetic"]
    common += ["--data.synthetic_jets", str(opts.jets), "--data.data_dir", str(work / "data")]
    common += ["--trainer.max_epochs", str(opts.epochs)]
    common += ["--lr_scheduler.init_args.T_max", str(opts.epochs), "--no-prune"]
    rows = []
    try:
        seeds = [int(s) for s in opts.seeds.split(",")]
    except ValueError:
        sys.exit(f"{SCRIPT}: --seeds {opts.seeds!r}: give whole numbers, e.g. 0,1,2")
    for seed in seeds:
        grid = search([*common, "--sampler", "grid", "--sampler_seed", str(seed),
                       "--study", f"grid_{seed}"], work / f"grid_{seed}")  # fmt: skip
        tpe = search([*common, "--sampler", "tpe", "--sampler_seed", str(seed),
                      "--trials", str(len(grid)), "--study", f"tpe_{seed}"],
                     work / f"tpe_{seed}")  # fmt: skip
        best = max(grid)
        row = {
            "seed": seed,
            "grid_best": best,
            "tpe_best": max(tpe),
            "grid_trials_to_best": trials_to(grid, best, opts.tolerance),
            "tpe_trials_to_best": trials_to(tpe, best, opts.tolerance),
            "grid_values": grid,
            "tpe_values": tpe,
        }
        rows.append(row)
        print(
            f"seed {seed}: grid best {best:.4f} after {row['grid_trials_to_best']} trials; "
            f"TPE best {row['tpe_best']:.4f}, within {opts.tolerance} of the grid's best after "
            f"{row['tpe_trials_to_best']} trials",
            flush=True,
        )
    medians = {
        name: statistics.median(r[f"{name}_trials_to_best"] for r in rows)
        for name in ("grid", "tpe")
    }
    print(
        "\n| sampler seed | grid best val/acc (SYNTHETIC) | grid: trials to best | "
        "TPE best val/acc | TPE: trials to within tolerance |\n|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['seed']} | {r['grid_best']:.4f} | {r['grid_trials_to_best']} | "
            f"{r['tpe_best']:.4f} | {r['tpe_trials_to_best']} |"
        )
    print(f"| median | | {medians['grid']:g} | | {medians['tpe']:g} |")
    if opts.json:
        settings = {"data": "SYNTHETIC", "jets": opts.jets, "epochs": opts.epochs}
        settings |= {"tolerance": opts.tolerance, "space": opts.space}
        atomic_write_json(opts.json, {**settings, "rows": rows, "median_trials_to_best": medians})
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
