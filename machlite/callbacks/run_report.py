"""What a run prints about itself: where it writes, and where its results are.

The lines go through :func:`machlite.notices.say`: above the progress bar, on their own line.
"""

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from machlite.loggers import tensorboard_logger
from machlite.notices import say


class RunReport(Callback):
    """Say where a run writes, and after fit where its results are and how to view them."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the run folder and the devices (rank 0)."""
        # trainer.log_dir is a collective under DDP (rank 0 broadcasts it): every rank asks
        where = trainer.log_dir if trainer.loggers else "(no logger)"
        if not trainer.is_global_zero:
            return
        accel = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        nodes = f" on each of {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else ""
        say(trainer, f"run {where} on {accel} x{trainer.num_devices}{nodes}")

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print where the results are, the best checkpoint and the TensorBoard command."""
        logger = tensorboard_logger(trainer)
        if logger is None:
            return
        say(trainer, f"run finished; results in {logger.log_dir}")
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            say(trainer, f"best checkpoint {ckpt.best_model_path}")
        root = Path(logger.save_dir) / logger.name
        say(trainer, f"view the curves with: tensorboard --logdir {root} --host 127.0.0.1")
