"""A search's outputs, from its study: ``trials.csv``, ``trials.md``, ``best.yaml`` and plots.

Every trial of the study is a row (its parameters, objective means over its seeds, state,
wall time, folder); trials dropped as over budget were never run and are left out. The
objective values are the ones the search told the study, read from the runs' event files
(:mod:`machlite.search.loop`). ``best.yaml`` is the base config with the best trial's
settings merged in, so ``machlite fit --config best.yaml`` trains it again; with several
objectives ``pareto/trial_N.yaml`` does the same for each trial on the Pareto front. The
plots are Optuna's own (``optuna.visualization.matplotlib``). Every file goes through
:mod:`machlite.atomic`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml

from machlite.atomic import atomic_path, atomic_write, write_csv
from machlite.runs.hardware import HARDWARE_METRICS
from machlite.runs.names import short_keys
from machlite.runs.settings import load_config, merge_config, set_key
from machlite.search.parsing import Search
from machlite.search.study import FOLDER, NOTE, OVER_BUDGET, OWNER, SEED_VALUES, shown_url


def _trials(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_BUDGET)]


def best_trials(study: Any) -> list[Any]:
    """The best trial (one objective) or the Pareto front (several), best first on the first
    objective; empty before a trial completes."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0].name == "MINIMIZE" else -1
    return sorted(study.best_trials, key=lambda t: sign * t.values[0])


def trial_rows(search: Search, study: Any) -> list[dict[str, Any]]:
    """One row per trial: ``trial``, ``state``, each parameter (by its short key), each
    objective's mean, ``pareto`` (several objectives), ``epochs_reported``, ``seconds``,
    ``folder``, ``owner`` and ``note``."""
    names = short_keys(search.space.keys)
    best = {t.number for t in best_trials(study)}
    rows = []
    for trial in _trials(study):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        for key in search.space.keys:
            row[names[key]] = trial.params.get(key)
        for i, metric in enumerate(search.space.objectives):
            row[metric] = trial.values[i] if trial.values else None
            if len(search.seeds) > 1:
                per_seed = (trial.user_attrs.get(SEED_VALUES) or {}).get(metric) or []
                row[f"{metric} per seed"] = " ".join(f"{v:.4g}" for v in per_seed)
        if len(search.space.objectives) > 1:
            row["pareto"] = "yes" if trial.number in best else ""
        else:
            row["best"] = "yes" if trial.number in best else ""
        row["epochs_reported"] = len(trial.intermediate_values) or None
        row["seconds"] = round(trial.duration.total_seconds(), 1) if trial.duration else None
        row["folder"] = trial.user_attrs.get(FOLDER, "")
        row["owner"] = trial.user_attrs.get(OWNER, "")
        row["note"] = trial.user_attrs.get(NOTE, "")
        rows.append(row)
    return rows


def best_config(search: Search, trial: Any) -> dict[str, Any]:
    """The base config with ``trial``'s settings merged in, as ``machlite fit`` reads it."""
    block: dict[str, Any] = {}
    for key, text in search.overrides:
        set_key(block, key, _typed(text))
    for key, value in trial.params.items():
        set_key(block, key, value)  # the values exactly as the sampler gave them
    config = merge_config(load_config(search.config), block)
    config["seed_everything"] = search.seeds[0]
    return config


def _typed(text: str) -> Any:
    """A command-line value as YAML reads it (``2`` a number, ``false`` a bool), else text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, bool | int | float | list | dict) else text


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def trials_markdown(
    search: Search, study: Any, rows: list[dict[str, Any]], plots: list[Path], synthetic: bool
) -> str:
    """The text of ``trials.md``."""
    lines = [f"# Search `{search.study}`", ""]
    if synthetic:
        lines += [
            "**SYNTHETIC DATA.** These trials trained on a synthetic JSC file. The numbers "
            "exercise the search; they say nothing about accuracy on real jets.",
            "",
        ]
    objectives = ", ".join(f"`{m}` ({d[:3]})" for m, d in search.space.objectives.items())
    fixed = " ".join(f"--{k} {v}" for k, v in search.overrides)
    lines += [
        f"- config: `{search.config}`; space: `{search.space_file}`",
        f"- objectives: {objectives}, each the mean over seeds {', '.join(map(str, search.seeds))}",
        f"- sampler: {search.sampler}; pruning: {'on' if search.prune else 'off'}; "
        f"storage: `{shown_url(search.storage)}`",
    ]
    if fixed:
        lines.append(f"- fixed for every trial: `{fixed}`")
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    lines.append("- trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    for param in search.space.params:
        if param.type == "categorical":
            shown = f"one of {list(param.choices)}"
        else:
            shown = f"{param.type} {param.low} to {param.high}" + (" (log)" if param.log else "")
            shown += f", step {param.step}" if param.step is not None else ""
        lines.append(f"- `{param.key}`: {shown}")
    best = best_trials(study)
    if best:
        values = ", ".join(
            f"{m} {v:.4g}" for m, v in zip(search.space.objectives, best[0].values, strict=True)
        )
        what = "best trial" if len(best) == 1 and len(study.directions) == 1 else "Pareto front"
        lines += [
            "",
            f"The {what}: trial {', '.join(str(t.number) for t in best)}. `best.yaml` is trial "
            f"{best[0].number} ({values}): `machlite fit --config best.yaml` trains it again.",
        ]
        if len(study.directions) > 1:
            lines[-1] += f" Each front trial N has its own `{PARETO_DIR}/trial_N.yaml`."
    if any(m in HARDWARE_METRICS for m in search.space.objectives):
        lines += [
            "",
            "Hardware objectives: each trial's tested checkpoint through the RTL flow "
            "(alkaid, yosys `synth_xilinx` xc7): yosys's counts, not Vivado's; "
            "`hardware.json` in each run folder.",
        ]
    lines += ["", "| " + " | ".join(rows[0]) + " |" if rows else "(no trials yet)"]
    if rows:
        lines.append("|" + "---|" * len(rows[0]))
        lines += ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in rows]
    lines += [
        "",
        "A PRUNED trial was stopped by the pruner at an epoch end (`epochs_reported` epochs "
        "ran); a FAIL trial failed, or its search process stopped while it ran (the search "
        "replaced it). `seconds` is the trial's wall time, all seeds.",
        "",
    ]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(search.search_dir).as_posix()})" for p in plots]
        lines.append("")
    lines += [
        "## Live view",
        "",
        f"`optuna-dashboard {shown_url(search.storage)}` (`pip install optuna-dashboard`) "
        "shows the study while it runs; `tensorboard --logdir "
        f"{search.search_dir}` shows every trial's curves.",
        "",
    ]
    return "\n".join(lines)


#: How the plots name the hardware objectives: yosys's counts, not a vendor tool's.
AXIS_LABELS = {
    "luts": "yosys LUTs (xc7, not Vivado)",
    "ffs": "yosys FFs (xc7, not Vivado)",
    "dsps": "yosys DSPs (xc7, not Vivado)",
    "latency_cycles": "latency (clock cycles)",
    "critical_path_ns": "critical path (ns, alkaid's delay model: an estimate)",
}
#: The folder of the per-trial configs of a Pareto front.
PARETO_DIR = "pareto"


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path, f"the plot {path}", ".png") as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")


def draw_plots(search: Search, study: Any, synthetic: bool = False) -> tuple[list[Path], list[str]]:
    """``plots/history.png`` (the first objective), ``plots/pareto.png`` (two objectives;
    hardware axes named as yosys's counts, the title saying SYNTHETIC DATA when it is) and
    ``plots/importances.png`` (when Optuna can compute them).

    Returns:
        The files written, and why any plot was left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    out = search.search_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return [], ["no trial completed yet"]
    metrics = list(search.space.objectives)
    labels = [AXIS_LABELS.get(m, m) for m in metrics]
    multi = len(metrics) > 1
    target = {"target": lambda t: t.values[0], "target_name": labels[0]} if multi else {}
    plans = [("history", lambda: vis.plot_optimization_history(study, **target))]
    if len(metrics) == 2:
        plans.append(("pareto", lambda: vis.plot_pareto_front(study, target_names=labels)))
    plans.append(("importances", lambda: vis.plot_param_importances(study, **target)))
    written, skipped = [], []
    for name, plot in plans:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = plot()
            except (RuntimeError, ValueError, ZeroDivisionError) as err:
                skipped.append(f"{name}: {str(err).splitlines()[0] if str(err) else err!r}")
                plt.close("all")
                continue
        fig = getattr(axes, "figure", None) or plt.gcf()
        if multi and name == "history":
            fig.suptitle(f"{search.study}: {metrics[0]}")
        if name == "pareto":
            what = " (SYNTHETIC DATA)" if synthetic else ""
            axes.set_title(f"{search.study}: Pareto front{what}")
        _save(fig, out / f"{name}.png")
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written, skipped


def config_text(search: Search, trial: Any, synthetic: bool, how: str = "best.yaml") -> str:
    """A trial's runnable config (:func:`best_config`) with a header: which trial, its
    objective values, how to train it again and, on synthetic data, SYNTHETIC DATA."""
    values = ", ".join(
        f"{m} {v:.4g}" for m, v in zip(search.space.objectives, trial.values, strict=True)
    )
    header = [
        f"# machlite search {search.study}: trial {trial.number} ({values}; the mean "
        f"over seeds {', '.join(map(str, search.seeds))})",
        f"# train it again: machlite fit --config {how}",
    ]
    if synthetic:
        header.append("# SYNTHETIC DATA: its accuracy says nothing about real jets")
    if any(m in HARDWARE_METRICS for m in search.space.objectives):
        header.append("# luts, ffs, dsps: yosys synth_xilinx xc7 counts (not Vivado)")
    config = best_config(search, trial)
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)


def write_pareto_configs(search: Search, study: Any, synthetic: bool) -> list[Path]:
    """``pareto/trial_N.yaml`` for each trial on the Pareto front (several objectives),
    each runnable as ``best.yaml`` is; files of trials no longer on the front are removed."""
    if len(search.space.objectives) < 2:
        return []
    folder = search.search_dir / PARETO_DIR
    front = best_trials(study)
    wanted = {folder / f"trial_{t.number}.yaml": t for t in front}
    for old in folder.glob("trial_*.yaml") if folder.is_dir() else []:
        if old not in wanted:
            old.unlink()
    if wanted:
        folder.mkdir(parents=True, exist_ok=True)
    for path, trial in wanted.items():
        how = f"{PARETO_DIR}/{path.name}"
        atomic_write(path, config_text(search, trial, synthetic, how))
    return sorted(wanted, key=lambda p: int(p.stem.split("_")[1]))


def write_results(search: Search, study: Any) -> list[Path]:
    """Write trials.csv, trials.md, best.yaml (once a trial completed), the Pareto front's
    configs (several objectives) and the plots.

    Returns:
        The files written.
    """
    rows = trial_rows(search, study)
    out = search.search_dir
    write_csv(out / "trials.csv", rows)
    synthetic = search.is_synthetic()
    files = [out / "trials.csv", out / "trials.md"]
    best = best_trials(study)
    if best:
        atomic_write(out / "best.yaml", config_text(search, best[0], synthetic))
        files.append(out / "best.yaml")
    files += write_pareto_configs(search, study, synthetic)
    plots, skipped = draw_plots(search, study, synthetic)
    text = trials_markdown(search, study, rows, plots, synthetic)
    if skipped:
        text += "\nPlots left out: " + "; ".join(skipped) + ".\n"
    atomic_write(out / "trials.md", text)
    return files + plots


__all__ = [
    "AXIS_LABELS",
    "best_config",
    "best_trials",
    "config_text",
    "draw_plots",
    "trial_rows",
    "trials_markdown",
    "write_pareto_configs",
    "write_results",
]
