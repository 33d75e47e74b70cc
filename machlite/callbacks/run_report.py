"""What a run prints about itself: where it writes, and where its results are."""

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from machlite.loggers import tensorboard_logger


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
        print(f"machlite: run {where} on {accel} x{trainer.num_devices}{nodes}", flush=True)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print where the results are, the best checkpoint and the TensorBoard command."""
        logger = tensorboard_logger(trainer)
        if logger is None:
            return
        print(f"machlite: run finished; results in {logger.log_dir}", flush=True)
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            print(f"machlite: best checkpoint {ckpt.best_model_path}", flush=True)
        root = Path(logger.save_dir) / logger.name
        print(f"machlite: view the curves with: tensorboard --logdir {root} --host 127.0.0.1")
