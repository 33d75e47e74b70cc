"""The part both datamodules share: splits held as tensors and served by InMemoryLoader."""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from machlite.accelerator import on_ipu
from machlite.errors import ConfigError, MachliteError
from machlite.paths import resolve_data_dir
from machlite.types import PositiveInt

from .ipu import ipu_loader
from .loader import InMemoryLoader
from .validate import check_splits

Split = tuple[Tensor, Tensor]

#: Move the data to a GPU only when it takes at most this fraction of the free GPU memory.
_GPU_FRACTION = 0.25


class InMemoryDataModule(pl.LightningDataModule):
    """A LightningDataModule whose splits live in memory as ``(features, labels)`` tensors.

    Subclasses set ``num_classes`` and ``input_shape`` and implement ``prepare_data``
    (download, verify, preprocess; runs once per machine) and ``load_splits`` (read what
    ``prepare_data`` left; runs in every process).

    Distributed (DDP): Lightning runs ``prepare_data`` in local rank 0 only, while the other
    ranks wait at a barrier, so downloads, unpacking and caches are written once; then every
    rank reads them in ``setup``. If ``prepare_data`` fails with a machlite error (say, the
    data file is missing offline), the error is handed to every rank in ``setup``: rank 0
    raises it (one line from the CLI) and the other ranks end quietly, instead of printing
    tracebacks of a broken connection. The loaders shard every split by rank
    (:class:`~machlite.datasets.loader.InMemoryLoader`).

    Bad data is named at load: ``setup`` checks the splits ``load_splits`` returns (none
    empty, every feature finite, every label a class index; :mod:`machlite.datasets.validate`)
    and raises one-line :class:`~machlite.errors.DataError`, unless the subclass checked them
    itself before caching (``checks_own_splits``).

    Args:
        data_dir: Data folder (None: ``$MACHLITE_DATA_DIR`` or ``~/.cache/machlite``).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict (results do not depend
            on it; larger is faster).
        seed: Seed of the validation split and of the per-epoch training order.
        steps_per_call: Batches the training loader hands over per Lightning call, as one
            :class:`~machlite.datasets.loader.BatchGroup`: the model's ``steps_per_call``.
            The CLI links it from ``model.steps_per_call`` (set that one); as a library, give
            the datamodule the model's value: :class:`~machlite.module.Classifier` stops a
            fit at its start when the two differ.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    #: True when ``load_splits`` returns arrays already checked before caching (JSC): then
    #: ``setup`` does not check them again (machlite.datasets.validate.check_splits).
    checks_own_splits: bool = False

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt = 1024,
        seed: int = 0,
        steps_per_call: PositiveInt = 1,
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
        if steps_per_call < 1:
            raise ConfigError(f"data.steps_per_call must be >= 1, got {steps_per_call}")
        self.steps_per_call = int(steps_per_call)
        self.splits: dict[str, Split] = {}
        self._prepare_error: MachliteError | None = None
        self._loading = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "prepare_data" in cls.__dict__:
            cls.prepare_data = _hold_error_under_ddp(cls.__dict__["prepare_data"])

    def _distributed(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.world_size > 1

    @property
    def run_tag(self) -> str:
        """A word added to the run name (e.g. "synthetic"); empty for real data."""
        return ""

    @property
    def data_source(self) -> str:
        """What the splits are read from, for messages (e.g. "JSC file data/jsc/x.h5")."""
        return f"the {type(self).__name__} data in {self.data_dir}"

    def load_splits(self) -> dict[str, Split]:
        """Return the "train", "val" and "test" splits as (float features, int64 labels)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once, onto the training device when they fit there."""
        if stage is not None and self._distributed():
            self._share_prepare_error()
        if self.splits:
            return
        self._loading = True
        try:
            splits = self.load_splits()
        finally:
            self._loading = False
        if not self.checks_own_splits:  # none empty, features finite, labels class indices
            check_splits(splits, self.num_classes, self.data_source, "fix the data files")
        device = self._target_device(splits)
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in splits.items()}

    def _share_prepare_error(self) -> None:
        """DDP: raise rank 0's ``prepare_data`` error in rank 0; end the other ranks quietly."""
        strategy = self.trainer.strategy
        error, self._prepare_error = self._prepare_error, None
        shared = strategy.broadcast(error, src=0)
        if shared is None:
            if error is not None:  # another node's local rank 0 failed: say so there
                raise error
            return
        strategy.barrier("machlite_prepare_error")  # every rank has it before any leaves
        if self.trainer.is_global_zero:
            raise shared
        raise SystemExit(0)  # rank 0 reports the error and sets the exit code

    def _target_device(self, splits: dict[str, Split]) -> torch.device:
        trainer = self.trainer
        if trainer is None:
            return torch.device("cpu")
        device = trainer.strategy.root_device
        if device is None or device.type != "cuda":  # IPUStrategy has no root device
            return torch.device("cpu")
        size = sum(x.nbytes + y.nbytes for x, y in splits.values())
        free, _ = torch.cuda.mem_get_info(device)
        return device if size <= _GPU_FRACTION * free else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, shuffle: bool) -> InMemoryLoader:
        if split not in self.splits:
            self.setup()
        if on_ipu(self.trainer):  # poptorch batches an ordinary DataLoader itself
            size = self.batch_size if shuffle else self.eval_batch_size
            return ipu_loader(self.splits[split], size, shuffle, self.seed)
        rank, world_size = self._rank()
        need = 2 * world_size if shuffle else world_size  # training batches need 2 samples
        if len(self.splits[split][1]) < need:
            raise ConfigError(
                f"the {split} split has {len(self.splits[split][1])} samples, too few for "
                f"{world_size} processes (at least {need} needed): use fewer devices or more data"
            )
        return InMemoryLoader(
            self.splits[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            batches_per_item=self.steps_per_call if shuffle else 1,
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


def _hold_error_under_ddp(prepare: Callable[[Any], None]) -> Callable[[Any], None]:
    """Wrap a ``prepare_data``: under DDP keep its machlite error for ``setup`` to share."""

    @functools.wraps(prepare)
    def prepare_data(self: InMemoryDataModule) -> None:
        if not self._distributed() or self._loading:
            prepare(self)
            return
        try:
            prepare(self)
        except MachliteError as err:
            self._prepare_error = err

    return prepare_data
