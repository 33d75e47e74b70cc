"""TensorBoard's HPARAMS tab: each run's settings next to its final and best metrics."""

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from machlite.loggers import tensorboard_logger


def _float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value) if isinstance(value, int | float) else None


class HParamsLogger(Callback):
    """Write the run's hyperparameters with its final metrics to TensorBoard's HPARAMS tab.

    The metrics are stored under ``hp/`` names (``hp/val_acc``, ``hp/best_val_acc``,
    ``hp/test_acc``, ...) so that the step curves of ``val/acc`` etc. stay untouched.

    Args:
        hparams: Flat mapping of hyperparameter name to a number, string or bool.
    """

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        self.hparams = dict(hparams or {})

    def _write(self, trainer: pl.Trainer, metrics: dict[str, float | None]) -> None:
        logger = tensorboard_logger(trainer)
        kept = {k: v for k, v in metrics.items() if v is not None}
        if logger is not None and kept and not trainer.sanity_checking:
            logger.log_hyperparams(self.hparams, kept)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        self._write(
            trainer,
            {
                "hp/val_acc": _float(m.get("val/acc")),
                "hp/val_loss": _float(m.get("val/loss")),
                "hp/train_loss": _float(m.get("train/loss_epoch")),
                "hp/best_val_acc": _float(best),
                "hp/epochs": float(trainer.current_epoch),
            },
        )

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        self._write(
            trainer,
            {"hp/test_acc": _float(m.get("test/acc")), "hp/test_loss": _float(m.get("test/loss"))},
        )
