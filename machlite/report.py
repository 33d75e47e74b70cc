"""The test report's text: the confusion matrix with each class's accuracy, as a table.

:class:`machlite.callbacks.confusion.ConfusionReport` computes the numbers (torchmetrics) and
prints this table at the end of ``machlite test``.
"""

from torch import Tensor


def format_confusion(matrix: Tensor, names: list[str], accuracy: Tensor) -> str:
    """Render the confusion matrix with per-class accuracy as a fixed-width text table.

    Args:
        matrix: Confusion matrix [C, C] of counts (rows true, columns predicted).
        names: One short name per class.
        accuracy: Accuracy of each true class [C]; NaN for a class absent from the test set
            (shown as ``n/a``).

    Returns:
        A multi-line string: accuracy, then one row per true class.
    """
    counts = matrix.long().cpu()
    total = int(counts.sum())
    overall = counts.diagonal().sum().item() / max(total, 1)
    width = max(6, *(len(n) for n in names), len(str(int(counts.max()))) + 1)
    lines = [
        f"test accuracy {overall:.2%} on {total:,} samples",
        "confusion matrix (rows: true class, columns: predicted class)",
        " " * width + " |" + "".join(f"{n:>{width}}" for n in names) + " | class acc",
    ]
    lines.append("-" * len(lines[-1]))
    for name, row, a in zip(names, counts.tolist(), accuracy.tolist(), strict=True):
        cells = "".join(f"{v:>{width}}" for v in row)
        shown = "    n/a" if a != a else f"{a:>9.2%}"  # NaN: class absent from the test set
        lines.append(f"{name:>{width}} |{cells} | {shown}")
    return "\n".join(lines)
