"""``machlite predict``'s output file: one row per sample with its class and probabilities."""

import csv
import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from machlite.atomic import atomic_write
from machlite.notices import say


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
        """Write every prediction, in data order, to ``predictions.csv`` (rank 0)."""
        folder = Path(self.output_dir or trainer.log_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        classes = torch.cat([p[0] for p in predictions]).cpu()
        probs = torch.cat([p[1] for p in predictions]).float().cpu()
        if trainer.world_size > 1:  # DDP: rank 0 writes every rank's shard, in data order
            classes, probs = _gather_shards(trainer, classes, probs)
            if not trainer.is_global_zero:
                return
        self.path = folder / "predictions.csv"
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["index", "class", *[f"prob_{k}" for k in range(probs.shape[1])]])
        for i, (c, p) in enumerate(zip(classes.tolist(), probs.tolist(), strict=True)):
            writer.writerow([i, c, *[f"{v:.6g}" for v in p]])
        atomic_write(self.path, text.getvalue(), what=f"predictions {self.path}")
        say(trainer, f"{len(classes)} predictions written to {self.path}")
