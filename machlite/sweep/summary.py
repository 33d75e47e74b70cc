"""A sweep's summary, from its runs' event files: ``summary.csv``, ``runs.csv``,
``summary.md`` and the plots.

Every number comes from what the runs wrote (event files read by
:mod:`machlite.runs.records`, their ``done.json``), never from console output. The files are
written atomically (:mod:`machlite.atomic`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from machlite.atomic import atomic_write, write_csv
from machlite.events import COST
from machlite.notices import read_warnings
from machlite.runs.hardware import HARDWARE_METRICS, hardware_values
from machlite.runs.launcher import PlannedRun
from machlite.runs.names import short_keys
from machlite.runs.records import read_done, read_run, run_metrics
from machlite.runs.settings import is_synthetic
from machlite.sweep.spec import Run, Sweep

METRICS = ("val_acc_final", "val_acc_best", "test_acc", "epochs_to_best", "sec_per_epoch")
HARDWARE_TITLES = {
    "luts": "yosys LUTs",
    "ffs": "yosys FFs",
    "dsps": "yosys DSPs",
    "latency_cycles": "latency (cycles)",
    "critical_path_ns": "critical path (ns, alkaid est.)",
}
HARDWARE_NOTE = (
    " yosys LUTs, FFs and DSPs (synth_xilinx xc7, not Vivado) and the latency are the "
    "design of each run's tested checkpoint (its hardware.json), the mean over the seeds."
)
METRIC_TITLES = {
    "val_acc_final": "final val/acc",
    "val_acc_best": "best val/acc",
    "test_acc": "test/acc",
    "epochs_to_best": "epochs to best",
    "sec_per_epoch": "s/epoch",
}

#: The summary table's column title of each COST key.
COST_TITLES = {"bits": "bits", "bops": "BOPs", "sparsity": "sparsity"}


def stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1; None for one value)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(sweep: Sweep, runs: list[Run]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-run and per-setting numbers of the finished runs, read from their event files.

    Returns:
        ``(run_rows, setting_rows)``. A setting row has ``setting``, the short key of each
        swept parameter, ``n``, ``seeds``, ``<metric>_mean`` and ``<metric>_std`` for each of
        METRICS, ``params``, and ``bits`` and ``bops`` (the network's cost, see COST; None
        where a run logged none, or the seeds disagree). When any run has a
        ``hardware.json``, every row also has ``luts``, ``ffs``, ``dsps`` and
        ``latency_cycles`` (a setting's: the mean over its seeds that have one).
    """
    names = short_keys(list(sweep.grid))
    run_rows: list[dict[str, Any]] = []
    measured = {run.name: hardware_values(sweep.sweep_dir / run.name) for run in runs}
    hardware = any(values and values["luts"] is not None for values in measured.values())
    for run in runs:
        run_dir = sweep.sweep_dir / run.name
        done = read_done(run_dir)
        if done is None:
            continue
        data = read_run(run_dir, run.name)
        cost = {k: data.hparams.get(tag) for k, tag in COST.items()}
        run_rows.append(
            {
                "setting": run.setting,
                "seed": run.seed,
                **run_metrics(data),
                "params": done.get("params"),
                # bits and BOPs are counts; sparsity is a fraction, kept as is
                **{k: v if v is None or k == "sparsity" else round(v) for k, v in cost.items()},
                "fit_seconds": done.get("fit_seconds"),
            }
        )
        if hardware:
            run_rows[-1].update(measured[run.name] or dict.fromkeys(HARDWARE_METRICS))
    setting_rows = []
    for setting in dict.fromkeys(run.setting for run in runs):
        rows = [r for r in run_rows if r["setting"] == setting]
        if not rows:
            continue
        values = next(r.values for r in runs if r.setting == setting)
        row: dict[str, Any] = {"setting": setting}
        row.update({names[k]: v for k, v in values.items()})
        row["n"] = len(rows)
        row["seeds"] = " ".join(str(r["seed"]) for r in rows)
        for metric in METRICS:
            found = [r[metric] for r in rows if r[metric] is not None]
            row[f"{metric}_mean"], row[f"{metric}_std"] = stats(found)
        for key in ("params", *COST):  # one value per setting, else None
            same = {r[key] for r in rows}
            row[key] = same.pop() if len(same) == 1 else None
        if hardware:
            for key in HARDWARE_METRICS:
                row[key] = stats([r[key] for r in rows if r[key] is not None])[0]
        setting_rows.append(row)
    return run_rows, setting_rows


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is inside it, else as is."""
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _mean_std(row: dict[str, Any], metric: str, digits: int) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _versus_best(rows: list[dict[str, Any]], metric: str) -> dict[str, str]:
    """Mark the best mean and the settings within two standard errors of it."""
    scored = [r for r in rows if r[f"{metric}_mean"] is not None]
    if not scored:
        return {}
    best = max(scored, key=lambda r: r[f"{metric}_mean"])
    marks = {best["setting"]: "best"}
    for row in scored:
        if row is best or row[f"{metric}_std"] is None or best[f"{metric}_std"] is None:
            continue
        diff = best[f"{metric}_mean"] - row[f"{metric}_mean"]
        se = math.sqrt(
            best[f"{metric}_std"] ** 2 / best["n"] + row[f"{metric}_std"] ** 2 / row["n"]
        )
        marks[row["setting"]] = "≈ best" if diff < 2 * se else ""
    return marks


def summary_markdown(
    sweep: Sweep,
    setting_rows: list[dict[str, Any]],
    total: int,
    failed: list[tuple[PlannedRun, int, str]],
    plots: list[Path],
    synthetic: bool,
) -> str:
    """The text of ``summary.md``."""
    lines = [f"# Sweep `{sweep.name}`", ""]
    if synthetic:
        lines += [
            "**SYNTHETIC DATA.** These runs trained on a synthetic JSC file. The numbers "
            "exercise the pipeline; they say nothing about accuracy on real jets.",
            "",
        ]
    swept = ", ".join(f"`{k}` ({', '.join(v)})" for k, v in sweep.grid.items()) or "nothing"
    fixed = " ".join(f"--{k} {v}" for k, v in sweep.overrides)
    lines += [
        f"- config: `{_shown(sweep.config)}`" if sweep.config else "- config: none",
        f"- swept: {swept}; seeds: {', '.join(map(str, sweep.seeds))}",
    ]
    if fixed:
        lines.append(f"- fixed for every run: `{fixed}`")
    if sweep.link:
        lines.append("- linked: " + ", ".join(f"`{t}` = `{s}`" for t, s in sweep.link.items()))
    finished = sum(r["n"] for r in setting_rows)
    lines += [f"- runs finished: {finished} of {total}", ""]
    has_test = any(r["test_acc_mean"] is not None for r in setting_rows)
    metric = "test_acc" if has_test else "val_acc_best"
    marks = _versus_best(setting_rows, metric)
    titles = [METRIC_TITLES[m] for m in METRICS]
    hardware = [k for k in HARDWARE_METRICS if any(k in r for r in setting_rows)]
    # sparsity only when some setting is pruned; params, bits and BOPs always
    cost = [k for k in COST if k != "sparsity" or any(r.get(k) for r in setting_rows)]
    header = ["setting", "seeds", *titles, "params", *(COST_TITLES[k] for k in cost)]
    header += [HARDWARE_TITLES[k] for k in hardware] + ["vs best"]
    lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 2) + "|---|"]
    for row in setting_rows:
        cells = [f"`{row['setting']}`", str(row["n"])]
        for m in METRICS:
            cells.append(_mean_std(row, m, 4 if "acc" in m else 1 if m == "epochs_to_best" else 2))
        for key in ("params", *cost):
            value = row[key]
            cells.append(
                "–" if value is None else f"{value:.2f}" if key == "sparsity" else f"{value:,}"
            )
        for key in hardware:
            digits = 1 if key == "critical_path_ns" else 0
            cells.append("–" if row[key] is None else f"{row[key]:,.{digits}f}")
        cells.append(marks.get(row["setting"], ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell is the mean ± the sample standard deviation (n−1) over the seeds. "
        "test/acc is the checkpoint with the best val/acc, evaluated on the test split. "
        "Epochs to best counts from 1. s/epoch is the wall time between validations, "
        "from the event files (runs sharing the CPU under --jobs are slower). "
        "bits is the model size and BOPs the bit operations per sample, at the run's "
        "quantized formats (float layers at 32 bits; pruned weights count no bits), and "
        "sparsity the fraction of zero weights after pruning, from its HPARAMS entry."
        + HARDWARE_NOTE
        * bool(hardware),
        f'"vs best": the setting with the best mean {METRIC_TITLES[metric]}, and the ones '
        "whose mean is within two standard errors of it, i.e. not distinguishable from it "
        "with these seeds. Needs at least two seeds per setting.",
        "",
    ]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{run.name}` (exit {code}): {reason}" for run, code, reason in failed]
        lines += ["", "Their logs are `run.log` in each run folder.", ""]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            rel = plot.relative_to(sweep.sweep_dir).as_posix()
            lines += [f"![{plot.stem}]({rel})", ""]
    return "\n".join(lines)


def warnings_markdown(sweep: Sweep, runs: list[Run]) -> str:
    """A "Warnings" section naming each run whose ``warnings.txt`` has lines (else "")."""
    lines = []
    for run in runs:
        found = read_warnings(sweep.sweep_dir / run.name)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            lines.append(
                f"- `{run.setting}` seed {run.seed} (`{run.name}`): warnings: {found[0]}{more}"
            )
    if not lines:
        return ""
    intro = "Runs that warned (collapse, divergence, dropped data); see `warnings.txt` in each:"
    return "\n".join(["", "## Warnings", "", intro, "", *lines, ""])


def write_summary(
    sweep: Sweep, runs: list[Run], failed: list[tuple[PlannedRun, int, str]]
) -> list[Path]:
    """Write summary.csv, runs.csv, summary.md and the plots of the finished runs.

    Returns:
        The files written: summary.csv, runs.csv, summary.md, then the plots.
    """
    from machlite.figures import draw  # matplotlib: only when a summary is drawn

    run_rows, setting_rows = summarize(sweep, runs)
    out = sweep.sweep_dir
    write_csv(out / "summary.csv", setting_rows)
    write_csv(out / "runs.csv", run_rows)
    finished = [r for r in runs if read_done(out / r.name) is not None]
    synthetic = any(is_synthetic(out / r.name) for r in finished)
    plots: list[Path] = []
    if finished:
        plots = draw([read_run(out / r.name, r.name) for r in finished], out / "plots", sweep.name)
    text = summary_markdown(sweep, setting_rows, len(runs), failed, plots, synthetic)
    text += warnings_markdown(sweep, runs)
    atomic_write(out / "summary.md", text)
    return [out / "summary.csv", out / "runs.csv", out / "summary.md", *plots]
