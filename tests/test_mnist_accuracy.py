"""configs/mnist.yaml learns real MNIST: one epoch on 10,000 training images gives >= 95%."""

import re
from pathlib import Path

import pytest
import torch

from machlite.datasets import MNISTDataModule
from machlite.datasets.augment import RandomShiftLoader, random_shift

from .conftest import CONFIGS, run


@pytest.mark.slow
def test_one_epoch_on_10k_images_reaches_95_percent(
    mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(CONFIGS / "mnist.yaml"), "--data.data_dir", str(mnist_dir)]
    # 157 batches of 64: the first 10,048 images of the shuffled 55,000
    fit = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "157"]
    fit += ["--trainer.enable_progress_bar", "false", "--experiment", "ten_k"]
    assert run(["fit", *config, *fit]) == 0
    ckpt = Path("runs/ten_k/version_0/checkpoints/last.ckpt")
    capsys.readouterr()
    assert run(["test", *config, "--experiment", "ten_k", "--ckpt_path", str(ckpt)]) == 0
    found = re.search(r"test accuracy ([\d.]+)% on 10,000 samples", capsys.readouterr().out)
    assert found and float(found.group(1)) >= 95.0, found


def test_augmentation_shifts_training_images_only(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=512, augment_shift=2, seed=3)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader, RandomShiftLoader)
    x_aug, y_aug = next(iter(loader))
    x_raw, y_raw = next(iter(loader.loader))  # the same batch, unshifted
    assert torch.equal(y_aug, y_raw)
    assert not torch.equal(x_aug, x_raw)
    # every image is its original shifted by at most 2 pixels: the total ink is nearly kept
    background = x_raw.min()
    ink_raw = (x_raw - background).sum(dim=(1, 2, 3))
    ink_aug = (x_aug - background).sum(dim=(1, 2, 3))
    assert torch.allclose(ink_aug, ink_raw, rtol=0.05)
    # seeded: the same epoch gives the same shifts
    assert torch.equal(next(iter(loader))[0], x_aug)
    # validation and test are never augmented
    assert not isinstance(dm.val_dataloader(), RandomShiftLoader)
    assert not isinstance(dm.test_dataloader(), RandomShiftLoader)


def test_random_shift_moves_pixels_by_whole_steps() -> None:
    x = torch.zeros(200, 1, 7, 7)
    x[:, 0, 3, 3] = 1.0
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0), fill=-1.0)
    where = (shifted[:, 0] == 1.0).nonzero()[:, 1:]  # the pixel's new (row, col)
    assert len(where) == 200
    offsets = where - 3
    assert offsets.abs().max() <= 2 and len(torch.unique(offsets, dim=0)) == 25
    assert ((shifted == -1.0).sum(dim=(1, 2, 3)) > 0).float().mean() > 0.9  # border filled
