"""``machlite test``'s confusion matrix with each class's accuracy.

:class:`ConfusionReport` owns it end to end: its own torchmetrics, updated from each test
step's ``(outputs, labels)``; at the end of the test epoch, the text table on the console
(:func:`format_confusion`), the ``test/acc_class/<class>`` scalars and the
``test/confusion_matrix`` figure in TensorBoard.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from machlite.loggers import tensorboard_logger


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


class ConfusionReport(Callback):
    """Print and log the test set's confusion matrix and the accuracy of each class.

    At the end of a test epoch (rank 0) it prints the confusion matrix with each class's
    accuracy, logs ``test/acc_class/<class>`` scalars to every logger at the module's
    optimizer step (NaN for a class absent from the test set) and adds the
    ``test/confusion_matrix`` figure (torchmetrics' own plot) to the TensorBoard logger.
    Under DDP the matrix counts the test samples of every rank (torchmetrics syncs them).

    It needs a module whose ``test_step`` returns ``(outputs, labels)`` and that has
    ``num_classes``, such as :class:`machlite.module.Classifier`; class names come from its
    ``class_names()`` (else 0..C-1). Other modules are left alone.
    """

    def __init__(self) -> None:
        self.confusion: MulticlassConfusionMatrix | None = None
        self.accuracy: MulticlassAccuracy | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start counting, on the module's device."""
        num_classes = getattr(pl_module, "num_classes", None)
        if num_classes is None:
            self.confusion = self.accuracy = None
            return
        kwargs = {"num_classes": num_classes, "validate_args": False}
        self.confusion = MulticlassConfusionMatrix(**kwargs).to(pl_module.device)
        self.accuracy = MulticlassAccuracy(average="none", **kwargs).to(pl_module.device)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count the batch: ``outputs`` is the test step's ``(outputs, labels)``."""
        if self.confusion is None or self.accuracy is None:
            return
        out, y = outputs
        self.confusion.update(out, y)
        self.accuracy.update(out, y)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the table and log the scalars and the figure (rank 0)."""
        if self.confusion is None or self.accuracy is None:
            return
        matrix = self.confusion.compute()  # on every rank: compute() syncs them under DDP
        accuracy = self.accuracy.compute()
        self.confusion.reset()
        self.accuracy.reset()
        if not trainer.is_global_zero:
            return
        # torchmetrics gives 0 to a class without test samples; it has no accuracy
        accuracy = torch.where(matrix.sum(dim=1) > 0, accuracy, float("nan")).cpu()
        names = _class_names(pl_module, len(accuracy))
        print(format_confusion(matrix, names, accuracy), flush=True)
        step = trainer.global_step
        scalars = {f"test/acc_class/{n}": float(a) for n, a in zip(names, accuracy, strict=True)}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        logger = tensorboard_logger(trainer)
        if logger is not None:
            import matplotlib

            matplotlib.use("Agg")  # off-screen, as on a machine without a display
            figure, _ = self.confusion.plot(val=matrix.cpu(), labels=names)
            logger.experiment.add_figure("test/confusion_matrix", figure, step)  # closes it
            logger.experiment.flush()


def _class_names(pl_module: pl.LightningModule, num_classes: int) -> list[str]:
    names = getattr(pl_module, "class_names", None)
    return names() if callable(names) else [str(k) for k in range(num_classes)]
