"""`machlite test` reports per-class accuracy and the confusion matrix (console + TensorBoard).

The report is the ConfusionReport callback (machlite.callbacks.confusion); the module itself
reports only test/loss and test/acc.
"""

import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from machlite.callbacks.confusion import ConfusionReport, format_confusion
from machlite.events import load_events
from machlite.module import Classifier

from .conftest import CONFIGS, run, synthetic


def _table(out: str, names: str) -> tuple[re.Match, dict[str, list[int]], dict[str, str]]:
    """The printed header, the matrix rows and the class-accuracy column, by class name."""
    header = re.search(r"test accuracy ([\d.]+)% on ([\d,]+) samples", out)
    assert header, out
    rows = {
        m.group(1): ([int(v) for v in m.group(2).split()], m.group(3).strip())
        for m in re.finditer(rf"^\s+([{names}]) \|([\d ]+)\|(.*)$", out, re.MULTILINE)
    }
    return header, {k: r for k, (r, _) in rows.items()}, {k: a for k, (_, a) in rows.items()}


def test_text_table() -> None:
    matrix = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    text = format_confusion(matrix, ["a", "b", "c"], torch.tensor([0.8, 0.75, float("nan")]))
    assert "test accuracy 78.57% on 14 samples" in text
    _, rows, acc = _table(text, "abc")
    assert rows == {"a": [8, 2, 0], "b": [1, 3, 0], "c": [0, 0, 0]}
    assert acc == {"a": "80.00%", "b": "75.00%", "c": "n/a"}  # c: absent from the test set


class _ThreeClasses(pl.LightningDataModule):
    """40 test samples of classes a and b; class c is absent."""

    class_names = ("a", "b", "c")

    def test_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(40, 4, generator=generator)
        y = torch.randint(0, 2, (40,), generator=generator)
        return DataLoader(TensorDataset(x, y), batch_size=16)


def _test(tmp_path: Path, model: Classifier, callbacks: list, runs: int = 1) -> Path:
    logger = TensorBoardLogger(tmp_path, name="report")
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    for _ in range(runs):
        trainer.test(model, datamodule=_ThreeClasses(), verbose=False)
    return Path(logger.log_dir)


def test_confusion_report_callback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed and logged report agree with a matrix counted here from the predictions."""
    torch.manual_seed(0)
    model = Classifier(nn.Linear(4, 3), num_classes=3, input_shape=(4,))
    x, y = next(iter(DataLoader(_ThreeClasses().test_dataloader().dataset, batch_size=40)))
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    matrix = torch.bincount(3 * y + predicted, minlength=9).reshape(3, 3)
    assert len(predicted.unique()) > 1  # a matrix with off-diagonal counts

    run_dir = _test(tmp_path, model, [ConfusionReport()], runs=2)  # counts restart each run
    out = capsys.readouterr().out
    assert out.count("confusion matrix (rows: true class") == 2
    header, rows, acc = _table(out[out.rindex("test accuracy") :], "abc")  # the second run
    assert header.group(2) == "40"
    assert torch.tensor(list(rows.values())).tolist() == matrix.tolist()
    accuracy = matrix.diagonal().sum().item() / 40
    assert float(header.group(1)) == pytest.approx(100 * accuracy, abs=0.006)
    assert acc["c"] == "n/a"

    events = load_events(run_dir)
    assert "test/confusion_matrix" in events.Tags()["images"]
    assert events.Scalars("test/acc")[-1].value == pytest.approx(accuracy, abs=1e-6)
    for k, name in enumerate("ab"):
        per_class = events.Scalars(f"test/acc_class/{name}")[-1]
        assert per_class.step == 0  # the module's optimizer step
        assert per_class.value == pytest.approx(matrix[k, k].item() / matrix[k].sum().item())
        assert acc[name] == f"{per_class.value:.2%}"
    assert math.isnan(events.Scalars("test/acc_class/c")[-1].value)

    # Without the callback the module reports test/loss and test/acc only.
    run_dir = _test(tmp_path, model, [])
    assert "confusion matrix" not in capsys.readouterr().out
    tags = load_events(run_dir).Tags()
    assert "test/acc" in tags["scalars"]
    assert not [t for t in tags["scalars"] if t.startswith("test/acc_class")]
    assert "test/confusion_matrix" not in tags["images"]


def test_machlite_test_prints_and_logs_the_confusion_matrix(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir)]
    fit = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    assert run(["fit", *config, *fit, "--experiment", "cm"]) == 0
    ckpt = Path("runs/cm_synthetic/version_0/checkpoints/last.ckpt")
    capsys.readouterr()
    assert run(["test", *config, "--experiment", "cm", "--ckpt_path", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert out.count("confusion matrix (rows: true class") == 1
    header, rows, _ = _table(out, "gqwzt")
    assert list(rows) == ["g", "q", "w", "z", "t"]
    matrix = torch.tensor(list(rows.values()))
    assert matrix.sum().item() == int(header.group(2).replace(",", ""))
    accuracy = matrix.diagonal().sum().item() / matrix.sum().item()
    assert float(header.group(1)) == pytest.approx(100 * accuracy, abs=0.006)

    events = load_events(ckpt.parents[2] / "version_1")
    tags = events.Tags()
    assert "test/confusion_matrix" in tags["images"]
    logged_acc = events.Scalars("test/acc")[-1].value
    assert logged_acc == pytest.approx(accuracy, abs=1e-6)
    for k, name in enumerate(rows):
        per_class = events.Scalars(f"test/acc_class/{name}")[-1].value
        assert per_class == pytest.approx(matrix[k, k].item() / matrix[k].sum().item(), abs=1e-6)
