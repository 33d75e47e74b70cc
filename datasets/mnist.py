"""MNISTDataModule: torchvision's MNIST, normalised once into tensors, with a seeded val split."""

import gzip
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST

from machlite.atomic import atomic_path
from machlite.download import download, md5sum
from machlite.errors import ConfigError, DataError
from machlite.types import NonNegativeInt, PositiveInt

from .augment import RandomShiftLoader
from .base import InMemoryDataModule, Split
from .loader import InMemoryLoader
from .validate import check_labels

#: The four files, as torchvision's MNIST declares them: (gz name, gz md5, unpacked size).
MNIST_FILES: tuple[tuple[str, str, int], ...] = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 47_040_016),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 60_008),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 7_840_016),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 10_008),
)
#: HTTPS mirror torchvision uses (the original LeCun site is plain HTTP).
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
#: The tutorial's normalisation, Normalize((0.1307,), (0.3081,)).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_TRAIN_SIZE = 60_000


class MNISTDataModule(InMemoryDataModule):
    """MNIST in torchvision's layout (``data_dir/MNIST/raw/``), as normalised tensors.

    The 60,000 training images are split into train and validation with a seeded
    permutation (55,000 / 5,000 by default); the 10,000 test images are the test split.
    Images are scaled to [0, 1] and normalised with mean 0.1307 and std 0.3081 once, at
    setup, instead of per sample.

    Args:
        data_dir: Data folder holding ``MNIST/raw/`` (None: ``$MACHLITE_DATA_DIR`` or
            ``~/.cache/machlite``).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict.
        val_size: Number of training images held out for validation (1 to 59,999).
        seed: Seed of the validation split, of the per-epoch training order and of the
            augmentation.
        augment_shift: Light augmentation of the training images: each is shifted by a random
            whole number of pixels, at most this many each way (0: none; 2 is a good value).
            Validation and test images are never augmented. Not applied on the IPU path,
            which feeds poptorch the plain dataset.
        steps_per_call: Batches per training call, the model's ``steps_per_call`` (the CLI
            links it; see :class:`~machlite.datasets.base.InMemoryDataModule`).
        pool: Reduce every image by ``pool`` x ``pool`` average pooling after normalising
            (a divisor of 28: 1 keeps the 28x28 images, 2 gives 14x14, 4 gives 7x7). A
            small network with a fully unrolled Verilog design (``MNISTMLP``) takes 14x14.
            ``input_shape`` follows: ``(1, 28 // pool, 28 // pool)``.
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 1000,
        val_size: PositiveInt = 5000,
        seed: int = 0,
        augment_shift: NonNegativeInt = 0,
        steps_per_call: PositiveInt = 1,
        pool: PositiveInt = 1,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, seed, steps_per_call)
        if pool < 1 or 28 % pool != 0:
            raise ConfigError(f"data.pool must divide 28 (1, 2, 4, 7, 14 or 28), got {pool}")
        self.pool = pool
        self.input_shape = (1, 28 // pool, 28 // pool)
        if not 0 < val_size < MNIST_TRAIN_SIZE:
            raise ConfigError(
                f"data.val_size must be in [1, {MNIST_TRAIN_SIZE - 1}], got {val_size}"
            )
        self.val_size = val_size
        if not 0 <= augment_shift <= 8:
            raise ConfigError(f"data.augment_shift must be in [0, 8] pixels, got {augment_shift}")
        self.augment_shift = augment_shift

    @property
    def raw_folder(self) -> Path:
        """Where the four files go: ``data_dir/MNIST/raw``, as in torchvision."""
        return self.data_dir / "MNIST" / "raw"

    @property
    def data_source(self) -> str:
        """The MNIST folder, for messages."""
        return f"MNIST files in {self.raw_folder}"

    def _offline_hint(self) -> str:
        names = ", ".join(name for name, _, _ in MNIST_FILES)
        return f"Offline: copy the four MNIST files ({names}) into {self.raw_folder}/"

    def prepare_data(self) -> None:
        """Make sure the four files are unpacked and intact; download what is missing.

        Safe to run twice: an unpacked file of the right size is kept, a ``.gz`` present is
        checked against its MD5 and unpacked, and only a missing one is downloaded.
        """
        try:
            self.raw_folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the MNIST folder {self.raw_folder}: {err}") from err
        for name, md5, size in MNIST_FILES:
            gz = self.raw_folder / name
            raw = gz.with_suffix("")
            if raw.is_file() and raw.stat().st_size == size:
                continue
            if not gz.exists():
                try:
                    download(
                        MNIST_MIRROR + name,
                        gz,
                        verify=lambda p, n=name, m=md5: self._check(p, n, m),
                    )
                except DataError as err:
                    raise DataError(
                        f"MNIST file {gz} is missing and {err}. {self._offline_hint()}"
                    ) from err
            self._check(gz, name, md5)
            self._unpack(gz, raw, size)

    def _check(self, path: Path, name: str, md5: str) -> None:
        actual = md5sum(path)
        if actual != md5:
            raise DataError(
                f"MNIST file {self.raw_folder / name} is corrupt (md5 {actual}, expected {md5}): "
                f"delete it and run again. {self._offline_hint()}"
            )

    def _unpack(self, gz: Path, raw: Path, size: int) -> None:
        try:
            with atomic_path(raw, what=f"MNIST file {raw}") as tmp:
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if tmp.stat().st_size != size:
                    raise DataError(
                        f"MNIST file {gz} unpacks to the wrong size: delete it and run again"
                    )
        except (OSError, EOFError) as err:
            raise DataError(
                f"cannot unpack MNIST file {gz} ({err}): delete it and run again"
            ) from err

    def train_dataloader(self) -> InMemoryLoader | RandomShiftLoader:
        """Shuffled training batches, randomly shifted when ``augment_shift`` > 0."""
        loader = super().train_dataloader()
        if self.augment_shift == 0 or not isinstance(loader, InMemoryLoader):  # IPU: plain data
            return loader
        background = (0.0 - MNIST_MEAN) / MNIST_STD
        return RandomShiftLoader(loader, self.augment_shift, fill=background)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 [N, 28, 28] images into normalised float [N, 1, 28, 28] tensors.

        With ``pool`` > 1, each is then average-pooled to [N, 1, 28 // pool, 28 // pool].
        """
        x = ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training and validation indices (sorted) into the ``n`` MNIST training images.

        A seeded random choice of ``val_size`` images is held out for validation.
        """
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return perm[self.val_size :].sort().values, perm[: self.val_size].sort().values

    def load_splits(self) -> dict[str, Split]:
        """Read the files with torchvision's MNIST and split off the validation images."""
        self.prepare_data()
        try:
            train = MNIST(str(self.data_dir), train=True, download=False)
            test = MNIST(str(self.data_dir), train=False, download=False)
        except RuntimeError as err:
            raise DataError(f"cannot read MNIST from {self.raw_folder}: {err}") from err
        for name, labels in (("train", train.targets), ("t10k", test.targets)):
            check_labels(
                labels,
                self.num_classes,
                f"MNIST file {self.raw_folder / f'{name}-labels-idx1-ubyte'}",
                "delete it (and its .gz) and run again to re-download it",
            )
        x, y = self.normalise(train.data), train.targets.long()
        train_idx, val_idx = self.split_indices(len(x))
        return {
            "train": (x[train_idx], y[train_idx]),
            "val": (x[val_idx], y[val_idx]),
            "test": (self.normalise(test.data), test.targets.long()),
        }
