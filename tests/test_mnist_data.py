from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST

from machlite.datasets import MNISTDataModule
from machlite.datasets.mnist import MNIST_MEAN, MNIST_STD
from machlite.errors import ConfigError, DataError


def test_split_is_seeded_disjoint_and_complete(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir), seed=0)
    splits = dm.load_splits()
    assert len(splits["train"][1]) == 55_000 and len(splits["val"][1]) == 5_000
    assert len(splits["test"][1]) == 10_000
    again = MNISTDataModule(data_dir=str(mnist_dir), seed=0).load_splits()
    assert torch.equal(again["val"][0], splits["val"][0])
    other = MNISTDataModule(data_dir=str(mnist_dir), seed=1).load_splits()
    assert not torch.equal(other["val"][1], splits["val"][1])
    # disjoint and complete: train + val label counts are torchvision's training counts
    raw = MNIST(str(mnist_dir), train=True)
    counts = torch.bincount(torch.cat([splits["train"][1], splits["val"][1]]), minlength=10)
    assert torch.equal(counts, torch.bincount(raw.targets, minlength=10))
    flat = torch.cat([splits["train"][0], splits["val"][0]]).flatten(1)
    assert torch.unique(flat[:2000], dim=0).shape[0] == 2000


def test_normalisation_matches_the_config(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir))
    raw = MNIST(str(mnist_dir), train=True).data.float() / 255.0
    assert raw.mean().item() == pytest.approx(MNIST_MEAN, abs=5e-4)
    assert raw.std().item() == pytest.approx(MNIST_STD, abs=5e-4)
    x = dm.load_splits()["train"][0]
    assert x.shape[1:] == (1, 28, 28)
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.std().item() == pytest.approx(1.0, abs=0.01)


def test_missing_files_offline_say_where_to_put_them(tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"))
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "empty" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg


def test_corrupt_file_is_named(tmp_path: Path, mnist_dir: Path) -> None:
    raw = tmp_path / "m" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (mnist_dir / "MNIST" / "raw").glob("*.gz"):
        (raw / gz.name).write_bytes(gz.read_bytes())
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is corrupt \(md5"):
        MNISTDataModule(data_dir=str(tmp_path / "m")).prepare_data()
    # the intact files were unpacked; running again after a fix works
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(
        (mnist_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").read_bytes()
    )
    MNISTDataModule(data_dir=str(tmp_path / "m")).prepare_data()
    assert (raw / "train-labels-idx1-ubyte").stat().st_size == 60_008


def test_pool_averages_the_normalised_images(mnist_dir: Path) -> None:
    full = MNISTDataModule(data_dir=str(mnist_dir)).load_splits()
    dm = MNISTDataModule(data_dir=str(mnist_dir), pool=2)
    assert dm.input_shape == (1, 14, 14) and MNISTDataModule().input_shape == (1, 28, 28)
    pooled = dm.load_splits()
    for split in ("train", "val", "test"):
        x, y = pooled[split]
        assert x.shape[1:] == (1, 14, 14) and torch.equal(y, full[split][1])
        blocks = full[split][0][:50].unflatten(2, (14, 2)).unflatten(4, (14, 2))
        assert torch.allclose(x[:50], blocks.mean(dim=(3, 5)), atol=1e-6)


@pytest.mark.parametrize("pool", [0, 3, 5])
def test_pool_must_divide_28(pool: int) -> None:
    with pytest.raises(ConfigError, match=f"data.pool must divide 28.*got {pool}"):
        MNISTDataModule(pool=pool)
