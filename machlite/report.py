"""Test-set report: per-class accuracy and the confusion matrix, as text and as a figure."""

from typing import Any

import torch
from torch import Tensor


def per_class_accuracy(matrix: Tensor) -> Tensor:
    """Accuracy of each true class (row) of a confusion matrix; NaN for absent classes.

    Args:
        matrix: Confusion matrix [C, C], rows are true classes, columns predicted classes.

    Returns:
        A float tensor [C]: correct / total per true class.
    """
    matrix = matrix.double()
    totals = matrix.sum(dim=1)
    return torch.where(totals > 0, matrix.diagonal() / totals.clamp(min=1), float("nan"))


def format_confusion(matrix: Tensor, names: list[str]) -> str:
    """Render the confusion matrix with per-class accuracy as a fixed-width text table.

    Args:
        matrix: Confusion matrix [C, C] of counts (rows true, columns predicted).
        names: One short name per class.

    Returns:
        A multi-line string: accuracy, then one row per true class.
    """
    counts = matrix.long().cpu()
    acc = per_class_accuracy(counts)
    total = int(counts.sum())
    overall = counts.diagonal().sum().item() / max(total, 1)
    width = max(6, *(len(n) for n in names), len(str(int(counts.max()))) + 1)
    lines = [
        f"test accuracy {overall:.2%} on {total:,} samples",
        "confusion matrix (rows: true class, columns: predicted class)",
        " " * width + " |" + "".join(f"{n:>{width}}" for n in names) + " | class acc",
    ]
    lines.append("-" * len(lines[-1]))
    for name, row, a in zip(names, counts.tolist(), acc.tolist(), strict=True):
        cells = "".join(f"{v:>{width}}" for v in row)
        shown = "    n/a" if a != a else f"{a:>9.2%}"  # NaN: class absent from the test set
        lines.append(f"{name:>{width}} |{cells} | {shown}")
    return "\n".join(lines)


def confusion_figure(matrix: Tensor, names: list[str]) -> Any:
    """Draw the confusion matrix as a matplotlib figure (row-normalised colours, counts).

    Args:
        matrix: Confusion matrix [C, C] of counts (rows true, columns predicted).
        names: One short name per class.

    Returns:
        A ``matplotlib.figure.Figure`` (for ``SummaryWriter.add_figure``).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    counts = matrix.long().cpu()
    rates = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = 1.0 + 0.55 * len(names)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = per_class_accuracy(counts).tolist()
    ax.set_title("test confusion matrix")
    for i, row in enumerate(counts.tolist()):
        for j, value in enumerate(row):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=7)
    labels = [f"{n} ({a:.1%})" if a == a else n for n, a in zip(names, acc, strict=True)]
    ax.set_yticks(range(len(names)), labels)
    fig.tight_layout()
    return fig
