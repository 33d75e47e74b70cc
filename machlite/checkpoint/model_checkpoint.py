"""The run's checkpoint callback: best on ``val/acc``, and a ``last.ckpt`` that is really last."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from machlite._compat import is_last_batch, save_last_checkpoint


class MachliteCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is the latest epoch, and every N steps if asked.

    ``last.ckpt`` is written at every epoch end (Lightning 2.6 skips it when ``val/acc`` did
    not improve), and also every ``last_every_n_steps`` optimizer steps.

    Lightning's ``every_n_train_steps`` saves only when ``global_step`` is an exact multiple,
    which a module taking K optimizer steps per call (``model.steps_per_call``) can jump over;
    here ``last.ckpt`` is written whenever a multiple of N is reached or passed. Only
    ``last.ckpt`` is refreshed between epochs (the best checkpoint needs a fresh ``val/acc``),
    and not on an epoch's last batch, whose epoch-end checkpoint follows at once.
    ``machlite fit --checkpoint_every_n_steps N`` sets it; 0 saves at epoch ends only.
    """

    last_every_n_steps: int = 0
    _step_seen: int = 0

    def _save_last_at_epoch_end(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` if this epoch end wrote nothing.

        Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint was saved at the
        same step, so after an epoch that did not improve ``val/acc`` the "last" checkpoint
        would be an older epoch's. Here it is always the latest epoch.
        """
        if (
            self.save_last is True
            and self._every_n_epochs >= 1
            and (trainer.current_epoch + 1) % self._every_n_epochs == 0
            and not self._should_skip_saving_checkpoint(trainer)  # incl. saved at this step
        ):
            save_last_checkpoint(self, trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save as ModelCheckpoint does, and ``last.ckpt`` at every epoch end."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_at_epoch_end(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save as ModelCheckpoint does, and ``last.ckpt`` after every epoch's validation."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_at_epoch_end(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start counting steps from where the run (or the resumed run) starts."""
        super().on_train_start(trainer, pl_module)
        self._step_seen = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Refresh ``last.ckpt`` when a multiple of ``last_every_n_steps`` has been passed."""
        every = int(self.last_every_n_steps or 0)
        if every > 0:
            step, previous = trainer.global_step, self._step_seen
            self._step_seen = step
            last_batch = is_last_batch(trainer)
            if (
                step // every > previous // every
                and not last_batch
                and self.save_last
                and not self._should_skip_saving_checkpoint(trainer)
            ):
                save_last_checkpoint(self, trainer)
        if self._every_n_train_steps >= 1 or self._train_time_interval is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
