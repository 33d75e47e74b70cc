"""Progress bars that count optimizer steps, whatever ``model.steps_per_call`` is.

With ``steps_per_call`` K > 1, Lightning sees one training "batch" per K optimizer steps, so
its bars show an epoch of 288 steps as ``9/9`` at a ninth of the real rate. The bars here
count optimizer steps instead: the total is the epoch's steps, the count after each call is
the steps done, and so tqdm's rate is steps per second, as a plain loop would show. The
``v_num`` postfix (the last characters of ``version_N``) is dropped; the run folder is
printed when the run starts.

:func:`count_steps` turns the bar a trainer already has (Lightning's default TQDM bar, or a
``RichProgressBar`` given under ``trainer.callbacks``) into its step-counting subclass, so
every option the bar was configured with is kept.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class _StepCounting:
    """Mixin for Lightning's progress bars: totals and counts in optimizer steps."""

    trainer: pl.Trainer

    def _loader(self) -> Any:
        """The training loader: machlite's InMemoryLoader (inside an augmenting wrapper)."""
        loader = self.trainer.train_dataloader
        return getattr(loader, "loader", loader)

    def _steps_per_call(self) -> int:
        return int(getattr(self._loader(), "batches_per_item", 1) or 1)

    @property
    def total_train_batches(self) -> int | float:
        """The optimizer steps of this epoch (Lightning's calls times the steps per call)."""
        calls = super().total_train_batches  # type: ignore[misc]
        k = self._steps_per_call()
        if k == 1 or math.isinf(calls):
            return calls
        loader = self._loader()
        full = loader.num_batches()
        return full if calls >= len(loader) else min(calls * k, full)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Show the steps done after call ``batch_idx`` (the bar counts ``batch_idx + 1``)."""
        k = self._steps_per_call()
        if k > 1:
            batch_idx = min((batch_idx + 1) * k, int(self.total_train_batches)) - 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The bar's postfix: the logged metrics, without ``v_num``."""
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        metrics.pop("v_num", None)
        return metrics


class StepTQDMProgressBar(_StepCounting, TQDMProgressBar):
    """Lightning's TQDM progress bar, counting optimizer steps (see the module docstring)."""


class StepRichProgressBar(_StepCounting, RichProgressBar):
    """Lightning's Rich progress bar, counting optimizer steps (see the module docstring)."""


_STEP_BARS: dict[type, type] = {
    TQDMProgressBar: StepTQDMProgressBar,
    RichProgressBar: StepRichProgressBar,
}


def plain_default_bar(trainer: pl.Trainer, configured: list | None) -> None:
    """Keep Lightning's TQDM bar as the default even when the ``rich`` package is installed.

    Lightning picks ``RichProgressBar`` whenever ``rich`` can be imported, so the same run
    would look different on two machines. machlite draws the TQDM bar unless the config asks
    for the Rich one (``--trainer.callbacks RichProgressBar``: ``configured`` has it).
    """
    if any(isinstance(c, RichProgressBar) for c in configured or []):
        return
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = TQDMProgressBar()


def count_steps(trainer: pl.Trainer) -> None:
    """Make the trainer's progress bar count optimizer steps.

    Lightning's own TQDM and Rich bars become their step-counting subclasses in place (the
    instance keeps its configuration); other progress bars are left as they are.
    """
    for callback in trainer.callbacks:
        step_bar = _STEP_BARS.get(type(callback))
        if step_bar is not None:
            callback.__class__ = step_bar
