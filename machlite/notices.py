"""Warnings and notices printed during a run: above the progress bar, and kept in the run folder.

:func:`warn` is the one way machlite warns during a run (collapse, divergence, dropped data
rows). The line is printed through the progress bar's own printing (``tqdm.write``, which
clears the bar, prints the line and redraws the bar; a non-tqdm progress bar's ``print``),
so it stays on its own line and visible; with no bar it is a plain line on stderr. It is
also appended to ``RUN_DIR/warnings.txt`` (one line per warning, with its epoch and step),
which ``machlite sweep``'s summary reads back (:func:`read_warnings`). :func:`say` prints a
notice (stdout) the same way, without recording it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm

from machlite.runs.layout import RunFolder


def _print(trainer: Any, line: str, file: IO[str]) -> None:
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is not None and not isinstance(bar, TQDMProgressBar) and callable(bar.print):
        bar.print(line)  # e.g. Rich's bar: its console prints above the bar
        return
    tqdm.write(line, file=file)  # clears every tqdm bar, prints, redraws: its own line
    file.flush()


def _is_zero(trainer: Any) -> bool:
    return bool(trainer.is_global_zero) if trainer is not None else rank_zero_only.rank == 0


def run_dir(trainer: Any) -> Path | None:
    """The run folder (the logger's ``log_dir``), or None for a run without a logger."""
    if trainer is None or not getattr(trainer, "loggers", None):
        return None
    # the logger's own, not trainer.log_dir: that one is a collective under DDP
    log_dir = getattr(trainer.loggers[0], "log_dir", None)
    return Path(log_dir) if log_dir else None


def warn(trainer: Any, message: str) -> None:
    """Print ``machlite: warning: MESSAGE`` on its own line and append it to warnings.txt.

    Rank 0 only. The line in ``RUN_DIR/warnings.txt`` reads ``epoch E, step S: MESSAGE``.

    Args:
        trainer: The run's trainer (None: only print, on stderr).
        message: One line: what happened and what to do.
    """
    if not _is_zero(trainer):
        return
    _print(trainer, f"machlite: warning: {message}", sys.stderr)
    folder = run_dir(trainer)
    if folder is None:
        return
    epoch, step = int(trainer.current_epoch), int(trainer.global_step)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(RunFolder(folder).warnings, "a", encoding="utf-8") as f:  # appended, not replaced
            f.write(f"epoch {epoch}, step {step}: {message}\n")
    except OSError as err:
        _print(trainer, f"machlite: warning: cannot record it in {folder}: {err}", sys.stderr)


def say(trainer: Any, message: str) -> None:
    """Print ``machlite: MESSAGE`` (stdout) on its own line, above any progress bar; rank 0."""
    if _is_zero(trainer):
        _print(trainer, f"machlite: {message}", sys.stdout)


def read_warnings(folder: Path) -> list[str]:
    """The lines of ``folder/warnings.txt`` (none when it does not exist)."""
    try:
        text = RunFolder(folder).warnings.read_text(encoding="utf-8")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]
