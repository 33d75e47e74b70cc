"""``TrialPruner``: the Lightning callback that lets Optuna stop a hopeless trial early.

A search adds it to the fit of each trial's first seed (``--trainer.callbacks+=...``). At
every validation end it opens the study's storage itself (the trial runs in its own
process), reports the monitored metric for the epoch to the trial and asks the pruner. When
the pruner says stop, it writes ``pruned.json`` in the run folder and raises
:class:`TrialPruned`, which ends the fit; the search then tells the study the trial was
PRUNED.
"""

from __future__ import annotations

import json
import math
from typing import Any

from lightning.pytorch.callbacks import Callback

from machlite.atomic import atomic_write_json
from machlite.errors import MachliteError
from machlite.runs.layout import RunFolder


def callback_args(
    storage: str, study: str, trial: int, run_dir: str, monitor: str, pruner: dict[str, Any]
) -> list[str]:
    """The ``machlite fit`` flags that add a :class:`TrialPruner` to the fit's callbacks
    (after any the config has)."""
    return [
        f"--trainer.callbacks+={TrialPruner.__module__}.{TrialPruner.__qualname__}",
        f"--trainer.callbacks.storage={storage}",
        f"--trainer.callbacks.study={study}",
        f"--trainer.callbacks.trial={trial}",
        f"--trainer.callbacks.run_dir={run_dir}",
        f"--trainer.callbacks.monitor={monitor}",
        f"--trainer.callbacks.pruner={json.dumps(pruner)}",
    ]


class TrialPruned(MachliteError):
    """The pruner stopped this trial (not a failure: the search records it as PRUNED)."""

    exit_code = 3


class TrialPruner(Callback):
    """Report ``monitor`` to an Optuna trial at each epoch's validation; stop when pruned.

    Args:
        storage: The study's storage (see :func:`machlite.search.study.open_storage`).
        study: The study's name.
        trial: The trial's number.
        run_dir: The run folder (``pruned.json`` goes there).
        monitor: The logged metric reported to the trial, e.g. ``val/acc``.
        pruner: The pruner's settings, e.g. ``{"type": "median"}`` (the default); an Optuna
            study does not store its pruner, so each trial's process builds it again.
    """

    def __init__(
        self,
        storage: str,
        study: str,
        trial: int,
        run_dir: str,
        monitor: str = "val/acc",
        pruner: dict[str, Any] | None = None,
    ) -> None:
        self.storage = storage
        self.study = study
        self.trial = trial
        self.run_dir = run_dir
        self.monitor = monitor
        self.pruner = pruner
        self._trial: Any = None

    def _optuna_trial(self) -> Any:
        if self._trial is None:
            import optuna

            from machlite.search.study import make_pruner, open_storage, trial_id

            storage = open_storage(self.storage)
            pruner = make_pruner(self.pruner, prune=True)
            study = optuna.load_study(study_name=self.study, storage=storage, pruner=pruner)
            self._trial = optuna.trial.Trial(study, trial_id(storage, self.study, self.trial))
        return self._trial

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Report this epoch's value; raise :class:`TrialPruned` when the pruner says so."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = int(trainer.current_epoch)
        trial = self._optuna_trial()
        if math.isfinite(value):
            trial.report(value, epoch)
        if not math.isfinite(value) or trial.should_prune():
            atomic_write_json(
                RunFolder(self.run_dir).pruned,
                {"trial": self.trial, "epoch": epoch + 1, "monitor": self.monitor, "value": value},
            )
            raise TrialPruned(
                f"trial {self.trial} pruned after epoch {epoch + 1}: {self.monitor} {value:.4f}"
            )
