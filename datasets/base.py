"""The part both datamodules share: splits held as tensors and served by InMemoryLoader."""

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor

from machlite.errors import ConfigError
from machlite.paths import resolve_data_dir
from machlite.types import PositiveInt

from .loader import InMemoryLoader

Split = tuple[Tensor, Tensor]

#: Move the data to a GPU only when it takes at most this fraction of the free GPU memory.
_GPU_FRACTION = 0.25


class InMemoryDataModule(pl.LightningDataModule):
    """A LightningDataModule whose splits live in memory as ``(features, labels)`` tensors.

    Subclasses set ``num_classes`` and ``input_shape`` and implement ``prepare_data``
    (download, verify, preprocess; runs once per machine) and ``load_splits`` (read what
    ``prepare_data`` left; runs in every process).

    Args:
        data_dir: Data folder (None: ``$MACHLITE_DATA_DIR`` or ``~/.cache/machlite``).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict (results do not depend
            on it; larger is faster).
        seed: Seed of the validation split and of the per-epoch training order.
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}")
        if eval_batch_size < 1:
            raise ConfigError(
                f"data.eval_batch_size must be a positive integer, got {eval_batch_size}"
            )
        self.data_dir: Path = resolve_data_dir(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.splits: dict[str, Split] = {}

    @property
    def run_tag(self) -> str:
        """A word added to the run name (e.g. "synthetic"); empty for real data."""
        return ""

    def load_splits(self) -> dict[str, Split]:
        """Return the "train", "val" and "test" splits as (float features, int64 labels)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once, onto the training device when they fit there."""
        if self.splits:
            return
        splits = self.load_splits()
        device = self._target_device(splits)
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in splits.items()}

    def _target_device(self, splits: dict[str, Split]) -> torch.device:
        trainer = self.trainer
        if trainer is None:
            return torch.device("cpu")
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return torch.device("cpu")
        size = sum(x.nbytes + y.nbytes for x, y in splits.values())
        free, _ = torch.cuda.mem_get_info(device)
        return device if size <= _GPU_FRACTION * free else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _steps_per_call(self) -> int:
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        return int(getattr(module, "steps_per_call", 1))

    def _loader(self, split: str, shuffle: bool) -> InMemoryLoader:
        if split not in self.splits:
            self.setup()
        rank, world_size = self._rank()
        return InMemoryLoader(
            self.splits[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            drop_single=shuffle,
            batches_per_item=self._steps_per_call() if shuffle else 1,
        )

    def train_dataloader(self) -> InMemoryLoader:
        """Shuffled training batches, a new seeded order each epoch."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> InMemoryLoader:
        """Validation batches in a fixed order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> InMemoryLoader:
        """Test batches in a fixed order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> InMemoryLoader:
        """The test split, for ``machlite predict``."""
        return self._loader("test", shuffle=False)
