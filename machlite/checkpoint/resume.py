"""Resuming a killed fit exactly where it stopped (``--ckpt_path last``).

- :class:`ResumeState` stores what Lightning's checkpoints lack for an exact continuation: the
  RNG states, the half-accumulated epoch metrics and the scalars logged at the checkpoint's
  step (which :class:`~machlite.loggers.ResumableTensorBoardLogger` writes again).
- :func:`find_last_checkpoint` picks the checkpoint ``--ckpt_path last`` resumes, and
  :func:`plan_resume` reads where and from which step the run continues.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric

from machlite._compat import mark_metric_restored
from machlite.checkpoint.io import load_checkpoint_file
from machlite.loggers import ResumableTensorBoardLogger
from machlite.runs.layout import VERSION_FOLDER, RunFolder, last_checkpoints

#: Key of machlite's own entry in a checkpoint (RNG states, epoch metrics, curve snapshot).
RESUME_KEY = "machlite_resume"


class ResumeState(Callback):
    """Save and restore what an exact continuation needs beyond Lightning's checkpoint.

    Stored under ``checkpoint["machlite_resume"]`` (plain tensors and numbers, so
    ``weights_only`` loading accepts it): the CPU and CUDA RNG states (dropout masks), the
    state of the module's ``train_*`` torchmetrics (a mid-epoch checkpoint's half epoch), and
    the scalars logged at the checkpoint's step (see :class:`ResumableTensorBoardLogger`).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _train_metrics(pl_module: pl.LightningModule) -> dict[str, Metric]:
        return {
            name: module
            for name, module in pl_module.named_children()
            if name.startswith("train") and isinstance(module, Metric)
        }

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add the RNG states, the epoch metrics' state and the step's scalars."""
        state: dict[str, Any] = {"step": trainer.global_step, "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        state["metrics"] = {
            name: {k: v.detach().cpu().clone() for k, v in metric.metric_state.items()}
            for name, metric in self._train_metrics(pl_module).items()
            if all(isinstance(v, torch.Tensor) for v in metric.metric_state.values())
        }
        logger = next(
            (lg for lg in trainer.loggers if isinstance(lg, ResumableTensorBoardLogger)), None
        )
        state["scalars"] = logger.scalars_at(trainer.global_step) if logger else {}
        checkpoint[RESUME_KEY] = state

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the saved state; it is applied when training starts."""
        self._pending = checkpoint.get(RESUME_KEY)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the RNGs and epoch metrics; write the step's scalars again."""
        for logger in trainer.loggers:
            if isinstance(logger, ResumableTensorBoardLogger):
                logger.replay()
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch_rng"])
        cuda = state.get("cuda_rng")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)
        metrics = self._train_metrics(pl_module)
        for name, values in state.get("metrics", {}).items():
            metric = metrics.get(name)
            if metric is None or set(values) != set(metric.metric_state):
                continue
            for key, value in values.items():
                setattr(metric, key, value.to(metric.device))
            mark_metric_restored(metric)  # compute() without a warning


@dataclass
class ResumePlan:
    """Where ``--ckpt_path last`` continues: the checkpoint and its run folder.

    Attributes:
        ckpt: The checkpoint file (``RUN_DIR/checkpoints/last.ckpt``).
        run_dir: The run's folder (``RUNS_DIR/EXPERIMENT/version_N``), where it continues.
        step: The checkpoint's ``global_step``.
        epoch: The checkpoint's epoch.
        scalars: Scalars logged at ``step`` before the checkpoint was taken.
    """

    ckpt: Path
    run_dir: Path
    step: int
    epoch: int
    scalars: dict[str, float] = field(default_factory=dict)


def find_last_checkpoint(experiment_dir: str | os.PathLike) -> Path | None:
    """Return the most recently written ``version_N/checkpoints/last.ckpt``, or None.

    Args:
        experiment_dir: ``RUNS_DIR/EXPERIMENT``.
    """
    found = []
    for ckpt in last_checkpoints(experiment_dir):
        match = VERSION_FOLDER.fullmatch(RunFolder.of_checkpoint(ckpt).path.name)
        if match and ckpt.is_file():
            found.append((ckpt.stat().st_mtime_ns, int(match.group(1)), ckpt))
    return max(found)[2] if found else None


def plan_resume(ckpt: Path, weights_only: bool = True) -> ResumePlan:
    """Read a run's ``RUN_DIR/checkpoints/last.ckpt`` into a :class:`ResumePlan`."""
    checkpoint = load_checkpoint_file(ckpt, "cpu", weights_only)
    state = checkpoint.get(RESUME_KEY) or {}
    return ResumePlan(
        ckpt=ckpt,
        run_dir=RunFolder.of_checkpoint(ckpt).path,
        step=int(checkpoint.get("global_step", 0)),
        epoch=int(checkpoint.get("epoch", 0)),
        scalars={str(k): float(v) for k, v in (state.get("scalars") or {}).items()},
    )
