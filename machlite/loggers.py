"""The run's TensorBoard logger: its folder, continuing its curves, and finding it.

- :func:`allocate_version` claims ``version_N`` folders with ``os.mkdir`` (atomic), so runs
  started at the same moment never share one.
- :class:`ResumableTensorBoardLogger` continues a run's curves in the same folder: it tells
  TensorBoard to drop what the killed run logged after its last checkpoint (``purge_step``)
  and writes again the scalars of the checkpoint's own step.
- :func:`tensorboard_logger` finds a trainer's TensorBoard logger; :func:`current_lr` is the
  learning rate the next optimizer step uses (what ``train/lr`` shows).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from machlite.errors import write_error
from machlite.runs.layout import VERSION_FOLDER, RunFolder


def tensorboard_logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def current_lr(trainer: pl.Trainer) -> float | None:
    """The learning rate of the first optimizer's first parameter group, or None."""
    optimizers = trainer.optimizers
    if not optimizers or not optimizers[0].param_groups:
        return None
    return float(optimizers[0].param_groups[0]["lr"])


class ResumableTensorBoardLogger(TensorBoardLogger):
    """TensorBoardLogger that can continue a killed run's curves without duplicated steps.

    It remembers the scalars logged at the latest step (saved into each checkpoint by
    :class:`ResumeState`). Resuming from a checkpoint taken at step G, it opens the run's
    folder with ``purge_step=G`` (TensorBoard then hides everything the killed run logged at
    steps >= G) and writes again the scalars the checkpoint says were logged at step G.

    Args:
        resume_step: The checkpoint's ``global_step`` when resuming, else None.
        resume_scalars: The scalars logged at ``resume_step`` before the checkpoint.
        *args, **kwargs: As for TensorBoardLogger.
    """

    def __init__(
        self,
        *args: Any,
        resume_step: int | None = None,
        resume_scalars: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if resume_step is not None:
            kwargs["purge_step"] = int(resume_step)
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self._replay = dict(resume_scalars or {})
        self.latest_step: int | None = None
        self.latest_scalars: dict[str, float] = {}

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log as TensorBoardLogger does, remembering the scalars of the latest step."""
        self.replay()
        super().log_metrics(metrics, step)
        if step is None:
            return
        if step != self.latest_step:
            self.latest_step, self.latest_scalars = int(step), {}
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, int | float):
                self.latest_scalars[name] = float(value)

    def replay(self) -> None:
        """Write the checkpoint step's scalars again (once, after the purge marker)."""
        if self._replay and self.resume_step is not None:
            scalars, self._replay = self._replay, {}
            self.log_metrics(scalars, step=self.resume_step)

    def scalars_at(self, step: int) -> dict[str, float]:
        """The scalars logged at ``step`` so far (empty unless it is the latest step)."""
        return dict(self.latest_scalars) if step == self.latest_step else {}


def allocate_version(experiment_dir: str | os.PathLike) -> int:
    """Create and return the next free ``version_N`` folder of an experiment, atomically.

    ``os.mkdir`` fails when the folder exists, so two runs started at the same moment that
    both pick N get one ``version_N`` each: the loser moves on to N+1.

    Raises:
        MachliteError: When the folder cannot be created (not writable, disk full).
    """
    root = Path(experiment_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in root.iterdir() if (m := VERSION_FOLDER.fullmatch(p.name))]
        version = max(taken, default=-1) + 1
        while True:
            try:
                os.mkdir(RunFolder.version(root, version).path)
                return version
            except FileExistsError:
                version += 1
    except OSError as err:
        raise write_error(err, f"the run folder under {root}") from err
