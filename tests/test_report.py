"""`machlite test` reports per-class accuracy and the confusion matrix (console + TensorBoard)."""

import math
import re
from pathlib import Path

import pytest
import torch

from machlite.events import load_events
from machlite.report import confusion_figure, format_confusion, per_class_accuracy

from .conftest import CONFIGS, run, synthetic


def test_per_class_accuracy_and_text_table() -> None:
    matrix = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    acc = per_class_accuracy(matrix)
    assert acc[0].item() == pytest.approx(0.8) and acc[1].item() == pytest.approx(0.75)
    assert math.isnan(acc[2].item())  # class absent from the test set
    text = format_confusion(matrix, ["a", "b", "c"])
    assert "test accuracy 78.57% on 14 samples" in text
    rows = [line for line in text.splitlines() if re.match(r"^\s+[abc] \|", line)]
    assert [r.split("|")[1].split() for r in rows] == [["8", "2", "0"], ["1", "3", "0"]] + [
        ["0", "0", "0"]
    ]
    assert rows[0].endswith("80.00%") and rows[2].endswith("n/a")
    fig = confusion_figure(matrix, ["a", "b", "c"])
    assert fig.axes[0].get_xlabel() == "predicted class"


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
    header = re.search(r"test accuracy ([\d.]+)% on (\d+) samples", out)
    assert header, out
    rows = {
        m.group(1): [int(v) for v in m.group(2).split()]
        for m in re.finditer(r"^\s+(g|q|w|z|t) \|([\d ]+)\|", out, re.MULTILINE)
    }
    assert list(rows) == ["g", "q", "w", "z", "t"]
    matrix = torch.tensor(list(rows.values()))
    assert matrix.sum().item() == int(header.group(2))
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
