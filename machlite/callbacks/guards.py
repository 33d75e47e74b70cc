"""Training guards: stop on a non-finite loss, warn when accuracy collapses to chance level.

:class:`DivergenceGuard` stops a fit whose loss became NaN or infinite with one line naming
the step, the epoch and the learning rate, and refuses to checkpoint weights that are no
longer finite, so ``last.ckpt`` stays the last good state. To avoid a host-device sync per
step, each step's loss is only queued (a detached tensor); the queue is checked every
``check_every_n_steps`` optimizer steps (default: ``trainer.log_every_n_steps``), before each
validation and before each checkpoint. So training stops at most that many steps after the
first bad step, never after a checkpoint of bad weights, and the message names the exact
first bad step, and whether that step's batch had finite inputs (so the fix is the learning
rate) or not (so the fix is the data). A loss that stays finite but explodes (its epoch mean
more than ``explode_factor`` times the first step's loss) is a warning at that epoch's end.

:class:`CollapseWarning` prints a warning when ``val/acc`` stays at chance level (the
accuracy of always guessing the most common class) for several epochs, or falls to less
than half of its best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from machlite.datasets import InMemoryDataModule
from machlite.errors import MachliteError
from machlite.loggers import current_lr
from machlite.notices import warn

StepHook = Callable[[int, Tensor], None]


class DivergenceError(MachliteError):
    """Training produced a non-finite loss (or weights)."""


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"


class DivergenceGuard(Callback):
    """Stop training at the first non-finite loss; never checkpoint non-finite weights.

    With :class:`machlite.module.Classifier` it sees every optimizer step's loss (also with
    ``steps_per_call`` > 1) through the module's ``step_hooks``; with other modules it reads
    the loss returned by ``training_step`` (automatic optimization).

    The batch of each queued step is kept by reference (no copy, no device work) until the
    next check, so the message can say whether the first bad step's inputs were finite.

    Args:
        check_every_n_steps: Check the queued losses every this many optimizer steps (one
            host sync each); None: ``trainer.log_every_n_steps``. Checks also run before
            validation and before every checkpoint.
        explode_factor: Warn (once per fit, at the epoch's end) when an epoch's mean training
            loss exceeds this many times the fit's first step loss while staying finite.
    """

    def __init__(self, check_every_n_steps: int | None = None, explode_factor: float = 1e6) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if not explode_factor > 1:
            raise ValueError(f"explode_factor must be > 1, got {explode_factor}")
        self.check_every_n_steps = check_every_n_steps
        self.explode_factor = float(explode_factor)
        self.error: DivergenceError | None = None
        # (step, epoch, lr, loss, the step's inputs or None, the batch's number in its epoch)
        self._queue: list[tuple[int, int, float | None, Tensor, Tensor | None, int]] = []
        self._trainer: pl.Trainer | None = None
        self._hooked: list[StepHook] | None = None
        self._call: tuple[int, int, list[Tensor | None]] | None = None
        self._first: tuple[int, float] | None = None
        self._epoch_losses: dict[int, list[float]] = {}
        self.exploded = False

    # -- wiring ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Register with the module's per-step hooks when it has them."""
        self._trainer, self._queue, self.error = trainer, [], None
        self._call, self._first, self._epoch_losses, self.exploded = None, None, {}, False
        hooks = getattr(pl_module, "step_hooks", None)
        if isinstance(hooks, list):
            hooks.append(self.observe)
            self._hooked = hooks

    def _unhook(self) -> None:
        if self._hooked is not None and self.observe in self._hooked:
            self._hooked.remove(self.observe)
        self._hooked = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check what is left in the queue and detach from the module."""
        try:
            self.check()
        finally:
            self._unhook()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Detach from the module."""
        self._unhook()

    @property
    def _every(self) -> int:
        if self.check_every_n_steps is not None:
            return self.check_every_n_steps
        trainer = self._trainer
        return max(1, int(getattr(trainer, "log_every_n_steps", 0) or 1))

    # -- observing ---------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Note the call's batches (by reference), for the steps :meth:`observe` queues."""
        inputs = _inputs(batch)
        self._call = (trainer.global_step, batch_idx * _batches_per_call(trainer, inputs), inputs)

    def _step_inputs(self, step: int) -> tuple[Tensor | None, int]:
        if self._call is None:
            return None, -1
        start, first_batch, inputs = self._call
        i = step - start
        return (inputs[i], first_batch + i) if 0 <= i < len(inputs) else (None, -1)

    def observe(self, step: int, loss: Tensor) -> None:
        """Queue one optimizer step's loss; check the queue every ``check_every_n_steps``."""
        trainer = self._trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        lr = current_lr(trainer) if trainer is not None else None
        x, batch_no = self._step_inputs(step)
        self._queue.append((step, epoch, lr, loss.detach(), x, batch_no))
        if len(self._queue) >= self._every:
            self.check()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Without the module's step hooks, read the loss ``training_step`` returned."""
        if self._hooked is not None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self.observe(trainer.global_step - 1, loss)

    # -- checking ----------------------------------------------------------------------------
    def check(self) -> None:
        """Look at the queued losses (one host sync); raise DivergenceError at a bad one."""
        if self.error is not None:
            raise self.error
        queue, self._queue = self._queue, []
        if not queue:
            return
        values = torch.stack([q[3].float().reshape(()) for q in queue]).cpu().tolist()  # 1 sync
        for (step, epoch, lr, _, x, batch_no), value in zip(queue, values, strict=True):
            if not math.isfinite(value):
                self._fail(f"the loss became {value} at step {step}", epoch, lr, x, batch_no, step)
            if self._first is None:
                self._first = (step, value)
            self._epoch_losses.setdefault(epoch, []).append(value)

    def _inputs_clause(self, x: Tensor | None, batch_no: int, epoch: int, step: int) -> str:
        """Whether the step's inputs were finite, and so what to do first."""
        fix = (
            "lower the learning rate (--optimizer.lr) or clip gradients "
            "(--trainer.gradient_clip_val 1.0 with --model.steps_per_call 1)"
        )
        if x is None:
            return fix
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            return (
                f"batch {batch_no} of epoch {epoch} (step {step}) has non-finite inputs: check "
                "the data (the datamodule's splits, its transforms or augmentation)"
            )
        return f"the inputs were finite: {fix}"

    def _fail(
        self,
        what: str,
        epoch: int,
        lr: float | None,
        x: Tensor | None = None,
        batch_no: int = -1,
        step: int = -1,
    ) -> None:
        trainer = self._trainer
        kept = ""
        if trainer is not None:
            ckpt = trainer.checkpoint_callback
            last = getattr(ckpt, "last_model_path", "") if isinstance(ckpt, ModelCheckpoint) else ""
            if last and Path(last).is_file():
                kept = f"; the last good checkpoint is {last}"
            elif trainer.loggers:
                kept = "; no checkpoint was saved before it"
            if trainer.loggers and trainer.log_dir:
                kept += f" and the curves are in {trainer.log_dir}"
        clause = self._inputs_clause(x, batch_no, epoch, step)
        self.error = DivergenceError(
            f"training diverged: {what} (epoch {epoch}, learning rate {_fmt(lr)}); {clause}{kept}"
        )
        raise self.error

    def _check_weights(self, pl_module: pl.LightningModule) -> None:
        params = [p.detach() for p in pl_module.parameters()]
        if not params:
            return
        ok = torch.stack([torch.isfinite(p).all() for p in params]).all()
        if not bool(ok):
            trainer = self._trainer
            step = trainer.global_step if trainer else "?"
            self._fail(
                f"the weights are no longer finite at step {step}",
                trainer.current_epoch if trainer else 0,
                current_lr(trainer) if trainer else None,
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check before validating (so a diverged epoch logs no meaningless val/ scalars)."""
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.check()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at every epoch end (before the epoch-end checkpoint); warn of an explosion."""
        self.check()
        self._call = None
        losses = self._epoch_losses.pop(trainer.current_epoch, [])
        if self.exploded or not losses or self._first is None:
            return
        mean = sum(losses) / len(losses)
        first_step, first = self._first
        if mean <= self.explode_factor * abs(first):
            return
        self.exploded = True
        warn(
            trainer,
            f"the training loss exploded at epoch {trainer.current_epoch}: its mean "
            f"{mean:.3g} is more than {self.explode_factor:.0e}x the first step's loss "
            f"{first:.3g} (step {first_step}), though still finite: training is likely "
            f"diverging at learning rate {_fmt(current_lr(trainer))}; lower the learning rate "
            "(--optimizer.lr)",
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint after a non-finite loss or of non-finite weights."""
        if trainer.state.fn != "fit":
            return
        self.check()
        self._check_weights(pl_module)


def collapse_message(
    history: list[float],
    chance: float,
    patience: int = 3,
    margin: float = 0.02,
    name: str = "val/acc",
) -> str | None:
    """Say how an accuracy history has collapsed, or return None if it has not.

    Collapsed means: the last ``patience`` values are all at chance level (at most
    ``chance + margin``), or all below half the best value so far while that best was well
    above chance (more than twice it).

    Args:
        history: The accuracy after each epoch, oldest first.
        chance: Chance-level accuracy (always guessing the most common class).
        patience: Number of epochs the collapse must last.
        margin: Tolerance above ``chance`` that still counts as chance level.
        name: The metric's name, for the message.
    """
    recent = history[-patience:]
    if patience < 1 or len(recent) < patience:
        return None
    best = max(history)
    if all(a <= chance + margin for a in recent):
        return (
            f"{name} has stayed at chance level ({recent[-1]:.3f}; always guessing the most "
            f"common class gives {chance:.3f}) for {patience} epochs"
        )
    if best > 2 * chance and all(a < best / 2 for a in recent):
        return (
            f"{name} has collapsed from its best {best:.3f} to {recent[-1]:.3f} for {patience} "
            f"epochs (chance level is {chance:.3f})"
        )
    return None


class CollapseWarning(Callback):
    """Warn when ``val/acc`` stays at chance level, or below half its best, for a while.

    Chance level is the accuracy of always predicting the validation split's most common
    class (1 / number of classes when the labels are not at hand).

    Args:
        patience: Consecutive epochs before warning.
        margin: Accuracy up to ``chance + margin`` counts as chance level.
        monitor: The accuracy to watch.
    """

    def __init__(self, patience: int = 3, margin: float = 0.02, monitor: str = "val/acc") -> None:
        self.patience, self.margin, self.monitor = patience, margin, monitor
        self.history: list[float] = []
        self.warned = False

    @staticmethod
    def chance_level(trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Accuracy of always guessing the most common validation class."""
        splits = getattr(trainer.datamodule, "splits", None) if trainer.datamodule else None
        labels = splits.get("val", (None, None))[1] if isinstance(splits, dict) else None
        if isinstance(labels, Tensor) and labels.numel() > 0:
            counts = torch.bincount(labels.flatten().long().cpu())
            return float(counts.max()) / labels.numel()
        return 1.0 / max(2, int(getattr(pl_module, "num_classes", 2)))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch's accuracy and warn once when it has collapsed."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.warned:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        acc = float(value)
        if not math.isfinite(acc):
            return
        self.history.append(acc)
        chance = self.chance_level(trainer, pl_module)
        what = collapse_message(self.history, chance, self.patience, self.margin, self.monitor)
        if what is None:
            return
        if trainer.current_epoch + 1 >= self.patience:
            first = trainer.current_epoch - self.patience + 1
            what += f" (epochs {first}-{trainer.current_epoch})"
        self.warned = True
        warn(
            trainer,
            f"{what}: the network has stopped learning; lower the learning rate "
            "(--optimizer.lr), or look at train/loss for a blow-up",
        )


def _batches_per_call(trainer: pl.Trainer, inputs: list[Tensor | None]) -> int:
    """How many batches each training call hands over: machlite's datamodules say
    (``steps_per_call``, also for an epoch's shorter last group); otherwise the call's own
    count (a group, or one batch)."""
    datamodule = trainer.datamodule
    if isinstance(datamodule, InMemoryDataModule):
        return datamodule.steps_per_call
    return len(inputs)


def _inputs(batch: Any) -> list[Tensor | None]:
    """The inputs of each batch of a Lightning call: one ``(x, y)``, or K of them (a group)."""
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], list | tuple):
        return [b[0] if b and isinstance(b[0], Tensor) else None for b in batch]
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        return [batch[0]]
    return [batch] if isinstance(batch, Tensor) else [None]
