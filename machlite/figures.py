"""The figures of runs, drawn from their event files: learning curves and accuracy vs BOPs.

``machlite plot DIR`` (:mod:`machlite.plot`) and a sweep's summary
(:mod:`machlite.sweep.summary`) draw these.

Each figure has two panels per row: the training loss (``train/loss``) against the
optimizer step, and the validation accuracy (``val/acc``) against the epoch. Runs in
``<setting>/seed_N`` folders (what ``machlite sweep`` writes) are grouped by setting: the
line is the mean over the seeds and the shaded band spans their minimum to maximum.

For a sweep, settings named ``key=value,...`` give one figure per swept parameter,
``plots/<key>.png``: one line per value of that parameter, and one row of panels per
combination of the other swept parameters. Any other folder (a single run, or
``runs/<experiment>`` with several versions) gives ``plots/curves.png`` with one line per
run.

When the settings differ in the network's cost (``model.bops`` in each run's HPARAMS entry,
e.g. a sweep over quantization widths), ``plots/accuracy_vs_bops.png`` adds one labelled
point per setting: its final validation accuracy (mean over the seeds, bar from the minimum
to the maximum) against its BOPs per sample, on a log scale.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from machlite.atomic import atomic_path
from machlite.errors import ConfigError
from machlite.events import MODEL_BOPS, TRAIN_LOSS, TRAIN_LOSS_EPOCH, VAL_ACC
from machlite.runs.names import parse_setting, setting_of
from machlite.runs.records import RunData, find_runs, run_metrics
from machlite.runs.settings import is_synthetic

Settings = dict[str, list[RunData]]


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, math.nan, value)


def group_runs(runs: Sequence[RunData]) -> Settings:
    """Group runs by setting (run name without its ``seed_N`` part), in first-seen order."""
    settings: Settings = {}
    for run in runs:
        settings.setdefault(setting_of(run.name), []).append(run)
    return settings


def swept_parameters(settings: Settings) -> list[str]:
    """The parameters whose value differs between settings named ``key=value,...``."""
    params = [parse_setting(name) for name in settings]
    if not params or not all(params) or any(p.keys() != params[0].keys() for p in params):
        return []
    return [k for k in params[0] if len({p[k] for p in params}) > 1]


def _band(curves: list[list[tuple[float, float]]]) -> tuple[np.ndarray, ...]:
    """x, mean, min, max over curves given as (x, y) points; x values need not all match."""
    xs = sorted({x for curve in curves for x, _ in curve})
    index = {x: i for i, x in enumerate(xs)}
    table = np.full((len(curves), len(xs)), np.nan)
    for row, curve in enumerate(curves):
        for x, y in curve:
            table[row, index[x]] = y
    return np.array(xs), np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def _train_curve(run: RunData) -> list[tuple[float, float]]:
    points = run.scalars.get(TRAIN_LOSS) or run.scalars.get(TRAIN_LOSS_EPOCH) or []
    return [(float(step), value) for step, value, _ in points]


def _val_curve(run: RunData) -> list[tuple[float, float]]:
    return [(float(epoch), v) for epoch, v in enumerate(run.values(VAL_ACC), start=1)]


def _draw(axes: Sequence, lines: list[tuple[str, list[RunData]]], colors: list) -> None:
    """Draw train loss (axes[0]) and val accuracy (axes[1]) for each (label, runs) line."""
    from matplotlib.ticker import MaxNLocator

    for (label, runs), color in zip(lines, colors, strict=True):
        seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
        for ax, curve in ((axes[0], _train_curve), (axes[1], _val_curve)):
            curves = [c for c in map(curve, runs) if c]
            if not curves:
                continue
            x, mean, low, high = _band(curves)
            marker = "o" if len(x) <= 20 else None
            ax.plot(x, mean, color=color, marker=marker, markersize=3, label=label + seeds)
            if len(curves) > 1:
                ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("training loss (cross-entropy)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation accuracy")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    several = any(len(runs) > 1 for _, runs in lines)
    title = "line: mean over seeds\nband: min to max" if several else None
    axes[1].legend(fontsize="small", title=title, title_fontsize="small", loc="best")


def _pyplot() -> object:
    """``matplotlib.pyplot`` on the Agg backend (files only, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(
    rows: list[tuple[str, list[tuple[str, list[RunData]]]]], title: str, colors: dict[str, object]
) -> object:
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(11, 3.6 * len(rows) + 0.6), squeeze=False, sharey="col"
    )
    for ax_row, (row_title, lines) in zip(axes, rows, strict=True):
        _draw(ax_row, lines, [colors[label] for label, _ in lines])
        if row_title:
            ax_row[0].set_title(row_title, fontsize="medium", loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _colors(labels: list[str]) -> dict[str, object]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "viridis"]
    n = max(len(labels) - 1, 1)
    pick = (lambda i: cmap(i)) if len(labels) <= 10 else (lambda i: cmap(i / n))
    return {label: pick(i) for i, label in enumerate(labels)}


def bops_points(settings: Settings) -> list[tuple[str, float, list[float]]]:
    """Each setting's BOPs per sample and the final val/acc of each of its runs.

    A setting's BOPs is its runs' ``model.bops`` (HPARAMS entry). Settings whose runs logged
    none, or disagree (as the sweep's summary leaves them blank), or have no val/acc are left
    out.

    Returns:
        ``[(setting, bops, [final val/acc per run]), ...]`` in the settings' order.
    """
    points = []
    for label, runs in settings.items():
        bops = {run.hparams.get(MODEL_BOPS) for run in runs}
        finals = [run_metrics(run)["val_acc_final"] for run in runs]
        finals = [acc for acc in finals if acc is not None]
        value = bops.pop() if len(bops) == 1 else None
        if isinstance(value, int | float) and value > 0 and finals:
            points.append((label, float(value), finals))
    return points


def plot_accuracy_vs_bops(settings: Settings, path: Path, title: str) -> Path | None:
    """Draw the final val/acc of each setting against its BOPs per sample (log scale).

    One labelled point per setting: the mean over its runs, with a bar from the lowest to
    the highest.

    Args:
        settings: Runs grouped by setting (:func:`group_runs`).
        path: The PNG to write.
        title: Figure title prefix.

    Returns:
        ``path``, or None (nothing written) when the settings do not differ in BOPs, or no
        setting's BOPs is known.
    """
    points = bops_points(settings)
    if len({bops for _, bops, _ in points}) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = _colors([label for label, _, _ in points])
    most = max(bops for _, bops, _ in points)
    for label, bops, accs in points:
        mean = float(np.mean(accs))
        yerr = [[mean - min(accs)], [max(accs) - mean]]
        ax.errorbar([bops], [mean], yerr=yerr, fmt="o", color=colors[label], capsize=4)
        seeds = f" ({len(accs)} seeds)" if len(accs) > 1 else ""
        left = bops == most  # the rightmost labels go left of their point, inside the axes
        ax.annotate(
            label + seeds,
            (bops, mean),
            xytext=(-6 if left else 6, 6),
            textcoords="offset points",
            ha="right" if left else "left",
            fontsize="small",
        )
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("BOPs per sample (log scale)")
    ax.set_ylabel("final validation accuracy")
    ax.grid(True, which="both", alpha=0.3)
    if any(len(accs) > 1 for _, _, accs in points):
        ax.set_title("point: mean over seeds; bar: min to max", fontsize="small", loc="left")
    fig.suptitle(f"{title}: accuracy vs BOPs")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_runs(root: Path, out_dir: Path | None = None, title: str | None = None) -> list[Path]:
    """Draw the learning-curve PNGs for every run under ``root``.

    Args:
        root: A run folder, an experiment folder, or a sweep folder.
        out_dir: Where the PNGs go (default: ``root/plots``).
        title: Figure title prefix (default: the folder's name).

    Returns:
        The PNG files written.

    Raises:
        ConfigError: ``root`` holds no training runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: give a run folder or a sweep folder")
    runs = find_runs(root)
    if not runs:
        raise ConfigError(
            f"no runs with training curves (TensorBoard event files) under {root}: "
            "give a run folder such as runs/jsc_tiny/version_0, or a sweep folder"
        )
    out_dir = Path(out_dir) if out_dir is not None else root / "plots"
    return draw(runs, out_dir, title or root.resolve().name)


def _save(fig: object, path: Path) -> None:
    """Write a figure as PNG through machlite's atomic writer."""
    with atomic_path(path, f"the plot {path}", ".png", "choose another folder with --out") as tmp:
        fig.savefig(tmp, dpi=90)


def draw(runs: Sequence[RunData], out_dir: Path, title: str) -> list[Path]:
    """Draw the figures for ``runs`` (named ``<setting>/seed_N`` or freely) into ``out_dir``:
    the learning curves, then ``accuracy_vs_bops.png`` where the settings differ in BOPs.

    Returns:
        The PNG files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(is_synthetic(run.path) for run in runs):
        title += " (SYNTHETIC data)"
    settings = group_runs(runs)
    plt = _pyplot()
    written = []
    swept = swept_parameters(settings)
    if not swept:
        lines = list(settings.items())
        fig = _figure([("", lines)], title, _colors([label for label, _ in lines]))
        written.append(out_dir / "curves.png")
        _save(fig, written[-1])
        plt.close(fig)
    params = {name: parse_setting(name) for name in settings}
    for key in swept:
        values = sorted({p[key] for p in params.values()}, key=_sort_key)
        others = [k for k in swept if k != key]
        facets: dict[str, list[tuple[str, list[RunData]]]] = {}
        for name in sorted(settings, key=lambda n: [_sort_key(params[n][k]) for k in swept]):
            facet = ", ".join(f"{k}={params[name][k]}" for k in others)
            facets.setdefault(facet, []).append((f"{key}={params[name][key]}", settings[name]))
        colors = _colors([f"{key}={v}" for v in values])
        fig = _figure(list(facets.items()), f"{title}: {key}", colors)
        written.append(out_dir / f"{key}.png")
        _save(fig, written[-1])
        plt.close(fig)
    bops = plot_accuracy_vs_bops(settings, out_dir / "accuracy_vs_bops.png", title)
    return written + ([bops] if bops else [])
