"""Callbacks the CLI adds: the run report, TensorBoard's HPARAMS tab, and the prediction file."""

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


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
        logger = _tensorboard(trainer)
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


class RunReport(Callback):
    """Say where a run writes, and after fit where its results are and how to view them."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir is a collective under DDP (rank 0 broadcasts it): every rank asks
        where = trainer.log_dir if trainer.loggers else "(no logger)"
        if not trainer.is_global_zero:
            return
        accel = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        nodes = f" on each of {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else ""
        print(f"machlite: run {where} on {accel} x{trainer.num_devices}{nodes}", flush=True)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if logger is None:
            return
        print(f"machlite: run finished; results in {logger.log_dir}", flush=True)
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            print(f"machlite: best checkpoint {ckpt.best_model_path}", flush=True)
        root = Path(logger.save_dir) / logger.name
        print(f"machlite: view the curves with: tensorboard --logdir {root} --host 127.0.0.1")


def _gather_shards(trainer: pl.Trainer, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Collect each rank's rows and interleave them back into data order.

    Rank ``r`` of N holds samples ``r, r + N, r + 2N, ...`` (the in-memory loaders' sharding).
    """
    world = trainer.world_size
    shards: list[Any] = [None] * world
    torch.distributed.all_gather_object(shards, tensors)
    total = sum(len(shard[0]) for shard in shards)
    out = []
    for k, t in enumerate(tensors):
        merged = t.new_empty((total, *t.shape[1:]))
        for rank, shard in enumerate(shards):
            merged[rank::world] = shard[k]
        out.append(merged)
    return tuple(out)


class PredictionWriter(BasePredictionWriter):
    """Write ``machlite predict`` results to ``predictions.csv`` (index, class, probabilities).

    Args:
        output_dir: Folder for the file (None: the run's log folder).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.path: Path | None = None

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        folder = Path(self.output_dir or trainer.log_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        classes = torch.cat([p[0] for p in predictions]).cpu()
        probs = torch.cat([p[1] for p in predictions]).float().cpu()
        if trainer.world_size > 1:  # DDP: rank 0 writes every rank's shard, in data order
            classes, probs = _gather_shards(trainer, classes, probs)
            if not trainer.is_global_zero:
                return
        self.path = folder / "predictions.csv"
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "class", *[f"prob_{k}" for k in range(probs.shape[1])]])
            for i, (c, p) in enumerate(zip(classes.tolist(), probs.tolist(), strict=True)):
                writer.writerow([i, c, *[f"{v:.6g}" for v in p]])
        print(f"machlite: {len(classes)} predictions written to {self.path}", flush=True)
