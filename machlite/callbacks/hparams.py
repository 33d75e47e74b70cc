"""TensorBoard's HPARAMS tab: each run's settings next to its real curves' final values.

The HPARAMS entry names the run's own metric tags (:data:`METRICS`: ``val/acc``,
``val/acc_best``, ``val/loss``, ``train/loss_epoch``, ``test/acc``); TensorBoard shows the
last value of each tag in the table. No extra scalars are written for it, so the TIME
SERIES page opens on the curves a user came for, not on single-point ``hp/*`` cards.
``val/acc_best``, the best ``val/acc`` so far, is a real curve: one point per validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from machlite.events import MODEL_BITS, MODEL_BOPS, MODEL_SPARSITY
from machlite.loggers import ResumableTensorBoardLogger, tensorboard_logger
from machlite.quant.cost import network_cost
from machlite.sparsity import sparsity_of

#: The metric tags the HPARAMS tab shows for each run (the curves' last values).
METRICS = ("val/acc", "val/acc_best", "val/loss", "train/loss_epoch", "test/acc")
#: The best-so-far curve of ``val/acc``.
BEST = "val/acc_best"


def _float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value) if isinstance(value, int | float) else None


def _resumed_with_entry(logger: Any) -> bool:
    """True when ``logger`` resumes a run folder that already holds an HPARAMS entry."""
    if not (isinstance(logger, ResumableTensorBoardLogger) and logger.resume_step is not None):
        return False
    from machlite.events import has_events, load_events, session_hparams

    folder = Path(logger.log_dir)
    return has_events(folder) and bool(session_hparams(load_events(folder)))


def _cost(pl_module: pl.LightningModule) -> dict[str, float]:
    """``model.bits``, ``model.bops`` and ``model.sparsity`` of the module's network (empty
    if it has none)."""
    network, shape = getattr(pl_module, "network", None), getattr(pl_module, "input_shape", None)
    if not isinstance(network, torch.nn.Module) or shape is None:
        return {}
    cost = network_cost(network, None, tuple(shape))
    return {
        MODEL_BITS: float(cost.bits),
        MODEL_BOPS: float(cost.bops),
        MODEL_SPARSITY: sparsity_of(network),
    }


class HParamsLogger(Callback):
    """Write the run's settings to TensorBoard's HPARAMS tab, and the ``val/acc_best`` curve.

    Args:
        hparams: Flat mapping of setting name to a number, string or bool (the CLI fills it
            with the run's config).
    """

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        self.hparams = dict(hparams or {})
        self.best: float | None = None
        self.written = False  # a pruned run's entry, written in this process

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the HPARAMS entry once per run folder (a resumed run has it already).

        Beside the settings it holds the network's size in bits, its BOPs per sample and
        its fraction of zero weights (``model.bits``, ``model.bops``, ``model.sparsity``;
        quantized formats where the run quantizes). A pruned run (``model.pruning``) zeroes
        its weights during the fit, and TensorBoard keeps a run's first entry only: its entry
        is written by :meth:`on_train_epoch_end` once the schedule's masks are final.
        """
        self.hparams.update(_cost(pl_module))
        logger = tensorboard_logger(trainer)
        resumed = isinstance(logger, ResumableTensorBoardLogger) and logger.resume_step is not None
        if logger is not None and not resumed and getattr(pl_module, "pruning", None) is None:
            self.write_session(logger)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A pruned run: write the entry once its last pruning epoch is trained (its zeros
        no longer change), with the cost of the pruned network."""
        pruning = getattr(pl_module, "pruning", None)
        if pruning is not None and trainer.current_epoch >= pruning.end_epoch:
            self._write_pruned(trainer, pl_module)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A pruned run that ends before its schedule does: the entry, with the sparsity
        reached. A resumed run whose folder has the entry writes none: one entry per run."""
        if getattr(pl_module, "pruning", None) is not None:
            self._write_pruned(trainer, pl_module)

    def _write_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None and not self.written and _resumed_with_entry(logger):
            self.written = True  # the interrupted process wrote it: one entry per run
        if logger is not None and not self.written:
            self.hparams.update(_cost(pl_module))
            self.write_session(logger)
            self.written = True

    @rank_zero_only
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A test run's folder gets its own HPARAMS entry (with ``test/acc``)."""
        logger = tensorboard_logger(trainer)
        if logger is not None:
            self.write_session(logger)

    def write_session(self, logger: Any) -> None:
        """Write the hparams summaries naming :data:`METRICS`, without any scalar."""
        writer = logger.experiment.file_writer
        for summary in hparams_summaries(self.hparams, dict.fromkeys(METRICS, 0.0)):
            writer.add_summary(summary)
        writer.flush()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the best ``val/acc`` so far at this optimizer step (while fitting)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = _float(trainer.callback_metrics.get("val/acc"))
        if value is None:
            return
        self.best = value if self.best is None else max(self.best, value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({BEST: self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """The best ``val/acc`` so far, so a resumed run's curve continues."""
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best ``val/acc`` so far."""
        self.best = state_dict.get("best")
