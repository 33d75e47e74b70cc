"""Launching a sweep's runs: ``jobs`` at a time, each in its own process, with progress lines.

:class:`Runner` prepares each run's folder (its ``overrides.yaml`` and ``run.log``), starts
``python -m machlite.sweep.job`` for it (:mod:`machlite.sweep.job`) and records whether it
finished or failed. Ctrl-C or SIGTERM stops the running runs and raises
:class:`machlite.errors.Interrupted`; their folders stay unfinished, to be redone.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from machlite.atomic import atomic_write
from machlite.errors import Interrupted
from machlite.sweep.spec import OVERRIDES_FILE, Run, Sweep, read_done, run_settings

#: The module each run's process runs.
JOB_MODULE = "machlite.sweep.job"
_PROGRESS_FLAG = "trainer.enable_progress_bar"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(index: int, total: int, name: str, elapsed: float, finished: int) -> str:
    """``run i/N NAME | elapsed H:MM:SS | left ~H:MM:SS`` (left: mean time per finished run
    times the runs not finished; ``?`` before the first one finishes)."""
    left = f"~{_clock(elapsed / finished * (total - finished))}" if finished else "?"
    return f"machlite sweep: run {index}/{total} {name} | elapsed {_clock(elapsed)} | left {left}"


def _failure_reason(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("machlite: error:")]
    return (errors or lines or ["no output"])[-1][:300]


@dataclass
class Running:
    """A run in progress: its subprocess, its open log and when it started."""

    run: Run
    proc: subprocess.Popen
    log: IO[bytes]
    start: float


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: stop the runs as Ctrl-C does."""
    raise KeyboardInterrupt


def stop_runs(running: list[Running]) -> None:
    """Terminate runs (their folders stay unfinished, so the next sweep redoes them)."""
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


class Runner:
    """Launch the runs of a sweep (``jobs`` at once) and report on each.

    Args:
        sweep: The sweep.
        jobs: Runs at once, each in its own process.
        out: Where progress lines go.
    """

    def __init__(self, sweep: Sweep, jobs: int = 1, out: IO[str] | None = None) -> None:
        self.sweep = sweep
        self.jobs = jobs
        self.out = out or sys.stdout
        self.failed: list[tuple[Run, int, str]] = []
        self.finished: list[Run] = []

    def say(self, text: str) -> None:
        """Print one line of the sweep's own output."""
        print(text, file=self.out, flush=True)

    def _extra(self) -> list[str]:
        """Hide Lightning's progress bar unless one run at a time goes to a terminal."""
        shows_bar = self.jobs == 1 and getattr(self.out, "isatty", lambda: False)()
        user_set = any(k == _PROGRESS_FLAG for k, _ in self.sweep.overrides)
        return [] if shows_bar or user_set else [f"--{_PROGRESS_FLAG}", "false"]

    def job(self, run: Run) -> dict[str, Any]:
        """Prepare the run's folder (a fresh one, with its ``overrides.yaml``) and return the
        job for :func:`machlite.sweep.job.run_job`."""
        run_dir = self.sweep.sweep_dir / run.name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        settings = run_settings(self.sweep, run)
        overrides = run_dir / OVERRIDES_FILE
        atomic_write(overrides, settings.yaml())
        place = ["--runs_dir", str(self.sweep.sweep_dir), "--run_name", run.name]
        return {
            "args": settings.args(overrides) + place,
            "extra": self._extra(),
            "signature": settings.signature(),
            "run_dir": str(run_dir),
            "runs_dir": str(self.sweep.sweep_dir),
            "run_name": run.name,
        }

    def start(self, run: Run) -> Running:
        """Replace any unfinished run folder and launch the run."""
        job = self.job(run)
        log = open(Path(job["run_dir"]) / "run.log", "wb")  # noqa: SIM115 (closed in finish)
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

    def finish(self, running: Running) -> None:
        """Record a run that ended: finished (done.json written) or failed."""
        code = running.proc.wait()
        running.log.close()
        run_dir = self.sweep.sweep_dir / running.run.name
        done = read_done(run_dir)
        if code == 0 and done is not None:
            self.finished.append(running.run)
            test = done.get("metrics", {}).get("test_acc")
            result = f"test/acc {test:.4f}" if isinstance(test, float) else "no test/acc"
            seconds = time.time() - running.start
            self.say(f"machlite sweep: finished {running.run.name}: {result} ({seconds:.0f} s)")
        else:
            reason = _failure_reason(run_dir / "run.log")
            self.failed.append((running.run, code, reason))
            self.say(
                f"machlite sweep: FAILED {running.run.name} (exit {code}): {reason} "
                f"[log: {run_dir / 'run.log'}]"
            )

    def run_all(self, todo: list[Run]) -> None:
        """Run ``todo``, ``jobs`` at a time, printing a progress line before each start.

        Raises:
            Interrupted: Ctrl-C or SIGTERM; the running runs were stopped.
        """
        queue = list(todo)
        running: list[Running] = []
        t0 = time.time()
        started = 0
        # `kill` (SIGTERM) stops the runs too, as Ctrl-C does
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    run = queue.pop(0)
                    started += 1
                    done_count = len(self.finished) + len(self.failed)
                    self.say(
                        progress_line(started, len(todo), run.name, time.time() - t0, done_count)
                    )
                    running.append(self.start(run))
                for item in [r for r in running if r.proc.poll() is not None]:
                    running.remove(item)
                    self.finish(item)
                if running:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            stop_runs(running)
            raise Interrupted(
                "sweep interrupted; run the same command again to resume: finished runs are "
                "kept and unfinished ones are redone"
            ) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
