"""The search loop: ask the study for a trial, run its seeds as run jobs, tell the result.

Each seed of a trial is a run (:meth:`Search.trial_run`): the run package's
:class:`~machlite.runs.launcher.Launcher` writes its ``overrides.yaml`` and starts
``python -m machlite.runs.job`` for it, exactly as for a sweep's runs. The first seed's fit
also gets :class:`~machlite.search.pruning.TrialPruner` when pruning is on. A trial's
objectives are the means over its seeds, read from the runs' event files.

The trial count is shared by every process on the storage: a process asks for a trial only
while fewer than ``trials`` are finished or running, and a trial whose number comes after
the budget was already taken is dropped at once (recorded as FAIL with
``machlite_over_budget``, never run). A RUNNING trial whose process is gone is marked FAIL
when a search starts (:func:`machlite.search.study.fail_stale_trials`) and a new trial
replaces it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from machlite.errors import ConfigError, Interrupted
from machlite.events import COST, has_events
from machlite.runs.hardware import HARDWARE_METRICS, hardware_value, require_tools
from machlite.runs.launcher import (
    PROGRESS_FLAG,
    Launcher,
    PlannedRun,
    Running,
    on_sigterm_interrupt,
    stop_runs,
)
from machlite.runs.layout import RunFolder
from machlite.runs.names import short_keys, value_label
from machlite.runs.records import read_done, read_run, run_metrics
from machlite.search.parsing import Search
from machlite.search.space import SPECIAL_OBJECTIVES
from machlite.search.study import (
    FOLDER,
    HEARTBEAT,
    NOTE,
    OVER_BUDGET,
    OWNER,
    SEED_VALUES,
    owner,
    require_optuna,
    tell,
)

#: A process stops asking for trials after this many of its trials failed in a row.
FAILS_IN_A_ROW = 3
_BEAT_EVERY = 30.0
#: The longest trial folder name, in bytes (most file systems allow 255).
MAX_FOLDER_NAME = 200


def trial_folder(number: int, values: dict[str, Any]) -> str:
    """A trial's folder: ``trial=0003,batch_size=64,lr=0.00123457`` (floats to 6 digits)."""
    names = short_keys(list(values))
    parts = [f"trial={number:04d}"]
    for key, value in values.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        parts.append(f"{names[key]}={value_label(text)}")
    name = ",".join(parts)
    # a file name holds at most 255 bytes; the trial's values are also in trials.csv and
    # its overrides.yaml, and its number alone names it
    return name if len(name.encode()) <= MAX_FOLDER_NAME else parts[0]


def objective_value(metric: str, direction: str, run_dir: Path) -> float | None:
    """One run's value of an objective.

    ``epoch_time`` is the mean wall time per epoch, ``params`` the network's parameter
    count, ``bits`` and ``bops`` its size and bit operations (from HPARAMS), ``luts``,
    ``ffs``, ``dsps`` and ``latency_cycles`` its design's (``hardware.json``); a ``val/``
    metric is its best epoch in the objective's direction; any other logged metric
    (``test/acc``: the test of the best checkpoint) is its last value. None when the run did
    not log it.
    """
    done = read_done(run_dir) or {}
    if metric == "params":
        return done.get("params")
    if metric in HARDWARE_METRICS:
        return hardware_value(metric, run_dir)
    run = read_run(run_dir)
    if metric in COST:
        return run.hparams.get(COST[metric])
    if metric == "epoch_time":
        return run_metrics(run)["sec_per_epoch"]
    values = run.values(metric)
    test_dir = RunFolder(run_dir).test
    if not values and has_events(test_dir):
        values = read_run(test_dir).values(metric)
    if not values:
        return None
    if metric.startswith("val/"):
        return max(values) if direction == "maximize" else min(values)
    return values[-1]


def logged_metrics(run_dir: Path) -> list[str]:
    """The scalar tags a run logged (and its test), for error messages."""
    tags = set(read_run(run_dir).scalars)
    test_dir = RunFolder(run_dir).test
    if has_events(test_dir):
        tags |= set(read_run(test_dir).scalars)
    return sorted(tags)


@dataclass
class _Trial:
    trial: Any
    folder: str
    runs: list[PlannedRun]
    done: list[PlannedRun] = field(default_factory=list)
    running: Running | None = None
    pruned: bool = False
    failed: str = ""


def launcher(search: Search, out: IO[str] | None = None) -> Launcher:
    """The launcher of a search's runs (the progress bar stays as set when the search sets
    it)."""
    sets_bar = any(key == PROGRESS_FLAG for key, _ in search.overrides)
    hide_bar = False if sets_bar else None
    return Launcher(search.search_dir, search.jobs, out, "machlite search", "trial", hide_bar)


class SearchLoop:
    """Run a search's trials in this process, ``jobs`` at a time.

    Args:
        search: The search.
        study: Its Optuna study (loaded).
        out: Where progress lines go.
    """

    def __init__(self, search: Search, study: Any, out: IO[str] | None = None) -> None:
        self.search = search
        self.study = study
        self.runner = launcher(search, out)
        self.owner = owner()
        self.ran: list[int] = []
        self.told = 0
        self.fails_in_a_row = 0
        self.last_failure = ""
        self.started = time.time()
        self._active: list[_Trial] = []
        self._distributions = search.space.distributions()

    def say(self, text: str) -> None:
        """Print one line."""
        self.runner.say(text)

    # -- the budget shared by every process ---------------------------------------------------
    def _counted(self) -> list[Any]:
        from optuna.trial import TrialState

        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.state in live and not t.user_attrs.get(OVER_BUDGET)
        ]

    def budget_left(self) -> int | None:
        """Trials still to start, over all processes (None: no count, only the timeout)."""
        if self.search.trials is None:
            return None
        return self.search.trials - len(self._counted())

    def _may_start(self) -> bool:
        if self.fails_in_a_row >= FAILS_IN_A_ROW:
            return False
        timeout = self.search.timeout
        if timeout is not None and time.time() - self.started >= timeout:
            return False
        left = self.budget_left()
        return left is None or left > 0

    def _ask(self) -> _Trial | None:
        """A new trial, or None when another process took the last one first."""
        from optuna.trial import TrialState

        trial = self.study.ask(self._distributions)
        trial.set_user_attr(OWNER, self.owner)
        trial.set_user_attr(HEARTBEAT, time.time())
        if self.search.trials is not None:
            earlier = [t for t in self._counted() if t.number < trial.number]
            if len(earlier) >= self.search.trials:
                trial.set_user_attr(OVER_BUDGET, True)
                tell(self.study, trial, state=TrialState.FAIL)
                return None
        values = {p.key: trial.params[p.key] for p in self.search.space.params}
        folder = trial_folder(trial.number, values)
        trial.set_user_attr(FOLDER, folder)
        runs = [self.search.trial_run(folder, values, seed) for seed in self.search.seeds]
        if self.search.prune:  # the first seed reports to the pruner
            pruner = self.search.pruner_args(trial.number, str(self.runner.folder(runs[0]).path))
            runs[0] = self.search.trial_run(folder, values, self.search.seeds[0], pruner)
        return _Trial(trial, folder, runs)

    # -- running ------------------------------------------------------------------------------
    def _start_next(self, item: _Trial, total: int) -> None:
        run = item.runs[len(item.done)]
        elapsed = time.time() - self.started
        self.say(self.runner.progress(len(self.ran), total, run.name, elapsed, self.told))
        item.running = self.runner.start(run)

    def _finish_run(self, item: _Trial) -> None:
        assert item.running is not None
        how = self.runner.finish(item.running)
        run = item.running.run
        item.running = None
        if how == "pruned":
            item.pruned = True
        elif how == "failed":
            item.failed = self.runner.failed[-1][2]
        else:
            item.done.append(run)

    def _tell(self, item: _Trial) -> None:
        from optuna.trial import TrialState

        self.told += 1
        trial = item.trial
        if item.pruned:
            tell(self.study, trial, state=TrialState.PRUNED)
            return
        if item.failed:
            trial.set_user_attr(NOTE, item.failed)
            tell(self.study, trial, state=TrialState.FAIL)
            self.fails_in_a_row += 1
            self.last_failure = f"trial {trial.number}: {item.failed}"
            return
        self.fails_in_a_row = 0
        means, per_seed = [], {}
        for metric, direction in self.search.space.objectives.items():
            values = []
            for run in item.done:
                run_dir = self.search.search_dir / run.name
                value = objective_value(metric, direction, run_dir)
                if value is None:
                    trial.set_user_attr(NOTE, f"objective {metric} was not logged")
                    tell(self.study, trial, state=TrialState.FAIL)
                    raise ConfigError(
                        f"objective {metric} was not logged by trial {trial.number} "
                        f"({run_dir}); it logged: {', '.join(logged_metrics(run_dir))}, "
                        f"and {', '.join(SPECIAL_OBJECTIVES)}"
                    )
                values.append(float(value))
            per_seed[metric] = values
            means.append(sum(values) / len(values))
        trial.set_user_attr(SEED_VALUES, per_seed)
        tell(self.study, trial, means)
        shown = ", ".join(
            f"{m} {v:.4g}" for m, v in zip(self.search.space.objectives, means, strict=True)
        )
        self.say(f"machlite search: trial {trial.number} finished: {shown}")

    def _fail_active(self, note: str) -> None:
        """Tell the study the running trials failed (they are replaced when it continues)."""
        from optuna.trial import TrialState

        for item in self._active:
            try:
                item.trial.set_user_attr(NOTE, note)
                tell(self.study, item.trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 (the storage may be gone too; the next start fails them)
                pass

    def _heartbeat(self, stop: threading.Event) -> None:
        """Every ``_BEAT_EVERY`` seconds, stamp the running trials (a thread: with one job at
        a time the loop waits inside the runner while a trial runs)."""
        while not stop.wait(_BEAT_EVERY):
            for item in list(self._active):
                try:
                    item.trial.set_user_attr(HEARTBEAT, time.time())
                except Exception:  # noqa: BLE001 (finished meanwhile, or the storage is busy)
                    pass

    def run(self) -> list[int]:
        """Run trials until the budget is used or the timeout passed; then wait for the ones
        running.

        Returns:
            The numbers of the trials this process ran.

        Raises:
            Interrupted: Ctrl-C or SIGTERM; the running trials were stopped and marked FAIL
                (a search run again replaces them).
        """
        total = max(self.budget_left() or 0, 1)
        stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(stop,), daemon=True).start()
        try:
            with on_sigterm_interrupt():
                self._loop(total)
        except KeyboardInterrupt:
            stop_runs([item.running for item in self._active if item.running is not None])
            self._fail_active("interrupted (Ctrl-C or SIGTERM) while it ran")
            raise Interrupted(
                "search interrupted; run the same command again to continue: finished trials "
                "are kept, the interrupted ones are marked FAIL and replaced"
            ) from None
        finally:
            stop.set()
        return self.ran

    def _loop(self, total: int) -> None:
        """Start trials while the budget allows; finish and tell them as their runs end."""
        while True:
            while len(self._active) < self.search.jobs and self._may_start():
                item = self._ask()
                if item is None:
                    break
                self._active.append(item)
                self.ran.append(item.trial.number)
                total = max(total, len(self.ran))
                self._start_next(item, total)
            if not self._active:
                break
            for item in list(self._active):
                if item.running is None or item.running.proc.poll() is None:
                    continue
                self._finish_run(item)
                if not (item.pruned or item.failed) and len(item.done) < len(item.runs):
                    self._start_next(item, total)
                    continue
                self._active.remove(item)
                self._tell(item)
            if self._active:
                time.sleep(0.2)


def run_search(search: Search, out: IO[str] | None = None) -> tuple[Any, SearchLoop]:
    """Open the storage and study, fail stale trials, run this process's trials.

    Returns:
        The study, and the loop that ran this process's trials (``ran``, and
        ``fails_in_a_row``: it stopped early at :data:`FAILS_IN_A_ROW`).
    """
    from machlite.search.study import (
        fail_stale_trials,
        grid_size,
        load_study,
        make_pruner,
        make_sampler,
        open_storage,
    )

    require_optuna()
    if search.space.hardware is not None:  # one line before any trial when a tool is missing
        needs = [m for m in search.space.objectives if m in HARDWARE_METRICS]
        what = f"the objective {needs[0]}" if needs else "the space's hardware block"
        require_tools(search.space.hardware, what)
    if search.sampler == "grid":
        size = grid_size(search.space)
        search.trials = size if search.trials is None else min(search.trials, size)
    sampler = make_sampler(search.sampler, search.space, search.sampler_seed)
    pruner = make_pruner(search.space.pruner, search.prune)
    storage = open_storage(search.storage)
    study = load_study(storage, search.study, search.space, sampler, pruner, search.signature())
    search.search_dir.mkdir(parents=True, exist_ok=True)
    loop = SearchLoop(search, study, out)
    stale = fail_stale_trials(study, storage)
    if stale:
        loop.say(
            f"machlite search: trial(s) {', '.join(map(str, stale))} were running when their "
            "search stopped: marked FAIL, new trials replace them"
        )
    left = loop.budget_left()
    finished = len([t for t in loop._counted() if t.state.is_finished()])
    budget = "until the timeout" if left is None else f"{max(left, 0)} to run"
    loop.say(
        f"machlite search: study {search.study} ({search.sampler}, "
        f"{' and '.join(f'{k} {v[:3]}' for k, v in search.space.objectives.items())}) in "
        f"{search.search_dir}: {finished} finished, {budget}, {search.jobs} at a time"
    )
    loop.run()
    return study, loop
