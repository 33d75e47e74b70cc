"""``machlite sweep``: a grid of settings x seeds, each a normal ``machlite fit``.

machlite sweep --config configs/jsc_tiny.yaml --grid data.batch_size=32,64,128,256 \\
    --grid optimizer.lr=1e-4,1e-3 --seeds 0,1,2 [--jobs N] [--sweep_dir DIR] [--name NAME] \\
    [--key value ...]
machlite sweep --sweep configs/sweeps/lab1_batch_size.yaml [--key value ...]

Each run is a ``machlite fit`` of the base config plus the run's own override block (its
``overrides.yaml``, a second ``--config``), then a ``machlite test`` of its best checkpoint,
both in one subprocess (``python -m machlite.runs.job``, launched by
:class:`machlite.runs.launcher.Launcher`). Runs land in
``SWEEP_DIR/<setting>/seed_<S>`` (e.g. ``batch_size=32,lr=0.001/seed_0``), the test results
in its ``test/`` folder, the console output in its ``run.log``. A finished run writes
``done.json`` (atomically) last; a sweep run again skips the runs that have one with the same
settings and redoes the others. At the end: ``summary.csv``, ``summary.md``, ``runs.csv``
and ``plots/*.png`` in the sweep folder.

The sweep is a front end on :mod:`machlite.runs`: it turns a grid into run settings, and
the run package launches, records and reads them. Its modules import one way (``spec`` <-
``parsing``, ``summary`` <- this module):

- :mod:`~machlite.sweep.spec`: the sweep's definition, its runs and each run's settings;
- :mod:`~machlite.sweep.parsing`: the command line and sweep files;
- :mod:`~machlite.sweep.summary`: the summary tables and plots.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import IO

from machlite.atomic import atomic_write_json
from machlite.errors import MachliteError
from machlite.runs.launcher import PROGRESS_FLAG, Launcher
from machlite.runs.records import read_done
from machlite.sweep.parsing import check_settings, parse_sweep
from machlite.sweep.spec import Run, Sweep, expand, is_finished, planned, run_settings
from machlite.sweep.summary import summarize, write_summary

__all__ = [
    "Run",
    "Sweep",
    "check_settings",
    "expand",
    "main",
    "parse_sweep",
    "run_settings",
    "run_sweep",
    "summarize",
    "write_summary",
]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def launcher(sweep: Sweep, jobs: int = 1, out: IO[str] | None = None) -> Launcher:
    """The launcher of the sweep's runs (the progress bar stays as set when the sweep sets
    it)."""
    sets_bar = any(key == PROGRESS_FLAG for key, _ in sweep.overrides)
    return Launcher(sweep.sweep_dir, jobs, out, hide_bar=False if sets_bar else None)


def run_sweep(sweep: Sweep, jobs: int = 1, out: IO[str] | None = None) -> Launcher:
    """Run the sweep's unfinished runs, then write its summary and plots.

    A run is finished when its folder has a ``done.json`` whose signature is the run's
    current one (:meth:`~machlite.runs.settings.RunSettings.signature`); the others are
    (re)done.

    Returns:
        The launcher, with its ``finished`` and ``failed`` runs.
    """
    runner = launcher(sweep, jobs, out)
    runs = expand(sweep)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        sweep.sweep_dir / "sweep.json",
        {
            "name": sweep.name,
            "config": str(sweep.config) if sweep.config else None,
            "grid": sweep.grid,
            "seeds": sweep.seeds,
            "overrides": [list(o) for o in sweep.overrides],
            "link": sweep.link,
            "hardware": None if sweep.hardware is None else sweep.hardware.to_dict(),
            "runs": [r.name for r in runs],
        },
    )
    todo = []
    for run in runs:
        done = read_done(sweep.sweep_dir / run.name)
        if is_finished(sweep, run, done):
            continue
        if done is not None:
            what = "arguments" if sweep.hardware is None else "arguments or hardware options"
            runner.say(f"machlite sweep: {run.name} finished with other {what}; redoing it")
        todo.append(run)
    n_settings = len(runs) // max(len(sweep.seeds), 1)
    runner.say(
        f"machlite sweep: {sweep.name}: {_count(n_settings, 'setting')} x "
        f"{_count(len(sweep.seeds), 'seed')} = "
        f"{len(runs)} runs in {sweep.sweep_dir}; {len(runs) - len(todo)} already finished "
        f"(skipped), {len(todo)} to run, {jobs} at a time"
    )
    runner.run_all([planned(sweep, run) for run in todo])
    files = write_summary(sweep, runs, runner.failed)
    if files[2].is_file():  # the final table, as summary.md has it
        summary = files[2].read_text().splitlines()
        table = [line for line in summary if line.startswith(("|", "**SYNTHETIC"))]
        runner.say("\n".join(["", *table, ""]))
    runner.say(f"machlite sweep: summary {files[2]} and {files[0]}")
    if len(files) > 3:
        runner.say(f"machlite sweep: plots in {files[3].parent}")
    runner.say(f"machlite sweep: view the runs with: tensorboard --logdir {sweep.sweep_dir}")
    return runner


def dry_run_command(sweep: Sweep, run: Run) -> str:
    """The ``machlite fit`` command of a run, runnable as printed: the override block is
    given inline (``--config '{data: {batch_size: 32}}'``), so nothing is written."""
    settings = run_settings(sweep, run)
    args = settings.args(settings.inline())
    args += ["--runs_dir", str(sweep.sweep_dir), "--run_name", run.name]
    return "machlite " + shlex.join(args)


def main(argv: Sequence[str]) -> None:
    """The ``machlite sweep`` command.

    Raises:
        MachliteError: Bad options, or some runs failed (after the others finished).
    """
    sweep, args = parse_sweep(argv)
    if sweep.hardware is not None and not args.dry_run:  # one line before any run
        from machlite.runs.hardware import require_tools

        require_tools(sweep.hardware, "the sweep's hardware block")
    check_settings(sweep)
    if args.dry_run:
        for run in expand(sweep):
            print(dry_run_command(sweep, run))
        return
    runner = run_sweep(sweep, args.jobs)
    if runner.failed:
        names = ", ".join(run.name for run, _, _ in runner.failed[:3])
        more = f" and {len(runner.failed) - 3} more" if len(runner.failed) > 3 else ""
        raise MachliteError(
            f"{len(runner.failed)} of {len(expand(sweep))} runs failed ({names}{more}); their "
            "logs are run.log in each run folder; run the same command again to retry them"
        )
