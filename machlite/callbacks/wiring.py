"""What the CLI adds to every run's trainer: machlite's callbacks, in order, and its IO.

- :data:`CALLBACKS`: machlite's callbacks by config key (``machlite.cli.CALLBACKS`` too).
- :func:`wire_trainer`: adds the callbacks a run's config did not switch off, fills
  ``HParamsLogger``'s settings (:func:`hparams_settings`), runs the checkpoint callbacks
  last, makes the progress bar count optimizer steps, replaces the model summary, installs
  the checkpoint IO and, for a resumed fit, lets the run's ``config.yaml`` be written again.

As a library the Trainer gets only the callbacks it is given; nothing here runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from machlite.callbacks.confusion import ConfusionReport
from machlite.callbacks.guards import CollapseWarning, DivergenceGuard
from machlite.callbacks.hparams import HParamsLogger
from machlite.callbacks.predictions import PredictionWriter
from machlite.callbacks.progress import count_steps, plain_default_bar
from machlite.callbacks.run_report import RunReport
from machlite.callbacks.summary import summarize_network
from machlite.checkpoint import MachliteCheckpoint, ResumeState

#: machlite's callbacks, by config key, in the order they run. Each is on by default, shown by
#: ``--print_config`` with its options, and switched off with ``KEY: null`` in a config (or
#: ``--KEY null``); ``prediction_writer`` is used by ``machlite predict`` only.
CALLBACKS: dict[str, type[Callback]] = {
    "run_report": RunReport,
    "hparams_logger": HParamsLogger,
    "resume_state": ResumeState,
    "divergence_guard": DivergenceGuard,
    "collapse_warning": CollapseWarning,
    "test_report": ConfusionReport,
    "prediction_writer": PredictionWriter,
}
#: The config blocks whose settings HPARAMS shows, and the trainer keys among them.
HPARAMS_BLOCKS = ("model", "data", "optimizer", "lr_scheduler", "seed_everything")
HPARAMS_TRAINER_KEYS = ("max_epochs", "precision", "accelerator")
#: Settings that copy another (linked by the CLI): HPARAMS shows the original only.
LINKED_COPIES = ("data.steps_per_call",)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            name = prefix if key == "init_args" else f"{prefix}.{key}" if prefix else key
            _flatten(name, sub, out)
    elif isinstance(value, bool | int | float | str):
        # plain types: jsonargparse's restricted types (PositiveInt...) are subclasses
        out[prefix] = next(t for t in (bool, int, float, str) if isinstance(value, t))(value)
    elif value is not None:
        out[prefix] = str(value)


def hparams_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's settings, flattened for TensorBoard's HPARAMS tab (``model.network``, ...).

    Args:
        config: The subcommand's config as a plain dict.
    """
    out: dict[str, Any] = {}
    for key in HPARAMS_BLOCKS:
        if key in config:
            _flatten(key, config[key], out)
    for key in LINKED_COPIES:
        out.pop(key, None)
    trainer = config.get("trainer", {})
    for key in HPARAMS_TRAINER_KEYS:
        if trainer.get(key) is not None:
            out[f"trainer.{key}"] = str(trainer[key]) if key != "max_epochs" else trainer[key]
    return out


def wire_trainer(
    trainer: pl.Trainer,
    *,
    chosen: Mapping[str, Callback | None],
    subcommand: str | None,
    settings: Callable[[], dict[str, Any]],
    configured_callbacks: list[Any],
    checkpoint_io: CheckpointIO | None,
    last_every_n_steps: int,
    resumed: bool,
) -> None:
    """Add machlite's callbacks and IO to a CLI run's trainer (see the module docstring).

    Args:
        trainer: The trainer, with the callbacks the config lists under ``trainer.callbacks``.
        chosen: Each :data:`CALLBACKS` key's instantiated callback, None where switched off.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        settings: Gives the run's HPARAMS settings (called when ``HParamsLogger`` has none).
        configured_callbacks: ``trainer.callbacks`` as configured (a progress bar in it
            stays).
        checkpoint_io: The checkpoint IO to install (None: Lightning's own).
        last_every_n_steps: Refresh ``last.ckpt`` every this many optimizer steps (0: at
            epoch ends only).
        resumed: The fit continues a run whose folder has its ``config.yaml`` already.
    """
    for key in CALLBACKS:
        callback = chosen.get(key)
        if callback is None or (key == "prediction_writer" and subcommand != "predict"):
            continue
        if isinstance(callback, HParamsLogger) and not callback.hparams:
            callback.hparams = settings()
        trainer.callbacks.append(callback)
    # checkpoint callbacks run last, as Lightning orders them: what the other callbacks
    # do at an epoch end (val/acc_best, divergence checks) is in that epoch's checkpoint
    callbacks = trainer.callbacks
    callbacks[:] = [c for c in callbacks if not isinstance(c, Checkpoint)] + [
        c for c in callbacks if isinstance(c, Checkpoint)
    ]
    plain_default_bar(trainer, configured_callbacks)  # TQDM unless the config asks for Rich
    count_steps(trainer)  # the progress bar counts optimizer steps, not calls of K
    summarize_network(trainer)  # the network's layers, exact parameters and FLOPs
    if checkpoint_io is not None and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = checkpoint_io  # crash-safe writes
    if isinstance(trainer.checkpoint_callback, MachliteCheckpoint):
        trainer.checkpoint_callback.last_every_n_steps = last_every_n_steps
    if resumed:  # the run folder has its config.yaml already
        for callback in trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.overwrite = True


__all__ = ["CALLBACKS", "hparams_settings", "wire_trainer"]
