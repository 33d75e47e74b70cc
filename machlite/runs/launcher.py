"""Launching runs: ``jobs`` at a time, each a job in its own process, with progress lines.

A front end (``machlite sweep``, ``machlite search``) turns what it explores into
:class:`PlannedRun` s: a run's folder name under the front end's folder and its
:class:`~machlite.runs.settings.RunSettings`. :class:`Launcher` prepares each run's folder
(its ``overrides.yaml`` and ``run.log``), starts ``python -m machlite.runs.job`` for it
(:mod:`machlite.runs.job`) and records whether it finished, was pruned or failed. Ctrl-C or
SIGTERM stops the running runs and raises :class:`machlite.errors.Interrupted`; their folders
stay unfinished, to be redone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from machlite.atomic import atomic_write
from machlite.errors import Interrupted
from machlite.runs.layout import RunFolder
from machlite.runs.records import read_done
from machlite.runs.settings import RunSettings

#: The module each run's process runs.
JOB_MODULE = "machlite.runs.job"
#: The flag that hides Lightning's progress bar.
PROGRESS_FLAG = "trainer.enable_progress_bar"


@dataclass(frozen=True)
class PlannedRun:
    """A run to launch.

    Attributes:
        name: Its folder under the launcher's root, e.g. ``batch_size=32/seed_0``.
        settings: What it trains with.
        extra: Further ``machlite fit`` flags for this run only (e.g. a pruning callback).
        hardware: Hardware options (:meth:`machlite.runs.hardware.HardwareOptions.to_dict`):
            after its test, the job measures the tested checkpoint's design
            (``hardware.json``); None: it does not.
    """

    name: str
    settings: RunSettings
    extra: tuple[str, ...] = ()
    hardware: dict[str, Any] | None = None


@dataclass
class Running:
    """A run in progress: its subprocess, its open log and when it started."""

    run: PlannedRun
    proc: subprocess.Popen
    log: IO[bytes]
    start: float


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(
    prefix: str, index: int, total: int, name: str, elapsed: float, finished: int
) -> str:
    """``PREFIX i/N NAME | elapsed H:MM:SS | left ~H:MM:SS`` (left: mean time per finished
    run times the runs not finished; ``?`` before the first one finishes)."""
    left = f"~{_clock(elapsed / finished * (total - finished))}" if finished else "?"
    return f"{prefix} {index}/{total} {name} | elapsed {_clock(elapsed)} | left {left}"


def failure_reason(log: Path) -> str:
    """The last ``machlite: error:`` line of a run's log, else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("machlite: error:")]
    return (errors or lines or ["no output"])[-1][:300]


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: stop the runs as Ctrl-C does."""
    raise KeyboardInterrupt


def stop_runs(running: list[Running]) -> None:
    """Terminate runs (their folders stay unfinished, so they are redone next time)."""
    for item in running:
        if item.proc.poll() is None:
            item.proc.terminate()
    for item in running:
        try:
            item.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            item.proc.kill()
            item.proc.wait()
        item.log.close()


class on_sigterm_interrupt:  # noqa: N801 (a context manager, used like a function)
    """While inside, SIGTERM (``kill``) raises KeyboardInterrupt, as Ctrl-C does (main thread
    only; elsewhere nothing changes)."""

    def __enter__(self) -> None:
        main_thread = threading.current_thread() is threading.main_thread()
        self.previous = signal.signal(signal.SIGTERM, interrupt) if main_thread else None

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class Launcher:
    """Launch runs under one folder (``jobs`` at once, each in its own process).

    Args:
        root: The folder of the runs (a sweep's or search's folder).
        jobs: Runs at once.
        out: Where progress lines go.
        prefix: What the front end's lines start with, e.g. ``machlite sweep``.
        noun: What a launched run is called in progress lines (``run``, ``trial``).
        hide_bar: Whether to hide Lightning's progress bar; None: hide it unless one run at a
            time goes to a terminal. False also when the runs' settings set it themselves.
    """

    def __init__(
        self,
        root: Path,
        jobs: int = 1,
        out: IO[str] | None = None,
        prefix: str = "machlite sweep",
        noun: str = "run",
        hide_bar: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.jobs = jobs
        self.out = out or sys.stdout
        self.prefix = prefix
        self.noun = noun
        self.hide_bar = hide_bar
        self.finished: list[PlannedRun] = []
        self.failed: list[tuple[PlannedRun, int, str]] = []
        self.pruned: list[PlannedRun] = []

    def say(self, text: str) -> None:
        """Print one line of the front end's own output."""
        print(text, file=self.out, flush=True)

    def progress(self, index: int, total: int, name: str, elapsed: float, finished: int) -> str:
        """This launcher's progress line (:func:`progress_line`)."""
        return progress_line(f"{self.prefix}: {self.noun}", index, total, name, elapsed, finished)

    def folder(self, run: PlannedRun) -> RunFolder:
        """The run's folder."""
        return RunFolder(self.root / run.name)

    def _extra(self) -> list[str]:
        """Hide Lightning's progress bar unless one run at a time goes to a terminal."""
        hide = self.hide_bar
        if hide is None:
            hide = not (self.jobs == 1 and getattr(self.out, "isatty", lambda: False)())
        return [f"--{PROGRESS_FLAG}", "false"] if hide else []

    def job(self, run: PlannedRun) -> dict[str, Any]:
        """Prepare the run's folder (a fresh one, with its ``overrides.yaml``) and return the
        job for :func:`machlite.runs.job.run_job`."""
        folder = self.folder(run)
        if folder.path.exists():
            shutil.rmtree(folder.path)
        folder.path.mkdir(parents=True)
        atomic_write(folder.overrides, run.settings.yaml())
        place = ["--runs_dir", str(self.root), "--run_name", run.name]
        return {
            "args": run.settings.args(folder.overrides) + place,
            "extra": [*self._extra(), *run.extra],
            "signature": run.settings.signature(),
            "run_dir": str(folder.path),
            "runs_dir": str(self.root),
            "run_name": run.name,
            "hardware": run.hardware,
        }

    def start(self, run: PlannedRun) -> Running:
        """Replace any unfinished run folder and launch the run."""
        job = self.job(run)
        log = open(self.folder(run).log, "wb")  # noqa: SIM115 (closed in finish)
        tee = self.jobs == 1
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", JOB_MODULE, json.dumps(job)],
            stdout=subprocess.PIPE if tee else log,
            stderr=subprocess.STDOUT,
        )
        running = Running(run, proc, log, start)
        if tee:  # one run at a time: its output (Lightning's bar) shows under the progress line
            assert proc.stdout is not None
            try:
                while chunk := os.read(proc.stdout.fileno(), 65536):
                    log.write(chunk)
                    log.flush()
                    self.out.write(chunk.decode(errors="replace"))
                    self.out.flush()
            except BaseException:  # Ctrl-C while streaming: stop the run too
                stop_runs([running])
                raise
            proc.stdout.close()
        return running

    def finish(self, running: Running) -> str:
        """Record a run that ended; return how: ``finished`` (``done.json`` written),
        ``pruned`` (``pruned.json`` written) or ``failed``."""
        code = running.proc.wait()
        running.log.close()
        run = running.run
        folder = self.folder(run)
        if folder.pruned.is_file():
            self.pruned.append(run)
            self.say(f"{self.prefix}: pruned {run.name} (exit {code})")
            return "pruned"
        done = read_done(folder.path)
        if code == 0 and done is not None:
            self.finished.append(run)
            test = done.get("metrics", {}).get("test_acc")
            result = f"test/acc {test:.4f}" if isinstance(test, float) else "no test/acc"
            seconds = time.time() - running.start
            self.say(f"{self.prefix}: finished {run.name}: {result} ({seconds:.0f} s)")
            return "finished"
        reason = failure_reason(folder.log)
        self.failed.append((run, code, reason))
        self.say(f"{self.prefix}: FAILED {run.name} (exit {code}): {reason} [log: {folder.log}]")
        return "failed"

    def run_all(
        self, todo: list[PlannedRun], on_end: Callable[[PlannedRun, str], None] | None = None
    ) -> None:
        """Run ``todo``, ``jobs`` at a time, printing a progress line before each start.

        Args:
            todo: The runs.
            on_end: Called with each run and how it ended (see :meth:`finish`).

        Raises:
            Interrupted: Ctrl-C or SIGTERM; the running runs were stopped.
        """
        queue = list(todo)
        running: list[Running] = []
        t0 = time.time()
        started = 0
        try:
            with on_sigterm_interrupt():
                while queue or running:
                    while queue and len(running) < self.jobs:
                        run = queue.pop(0)
                        started += 1
                        ended = len(self.finished) + len(self.failed) + len(self.pruned)
                        elapsed = time.time() - t0
                        self.say(self.progress(started, len(todo), run.name, elapsed, ended))
                        running.append(self.start(run))
                    for item in [r for r in running if r.proc.poll() is not None]:
                        running.remove(item)
                        how = self.finish(item)
                        if on_end is not None:
                            on_end(item.run, how)
                    if running:
                        time.sleep(0.2)
        except KeyboardInterrupt:
            stop_runs(running)
            raise Interrupted(
                f"{self.prefix.removeprefix('machlite ')} interrupted; run the same command "
                "again to resume: finished runs are kept and unfinished ones are redone"
            ) from None
