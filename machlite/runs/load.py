"""A run loaded from its checkpoint: the task with the checkpoint's weights, and its datamodule.

    run = load_run("configs/jsc_tiny.yaml", "runs/jsc_tiny/version_0/checkpoints/last.ckpt")
    run.model         # machlite.module.Classifier, the checkpoint's weights loaded
    run.datamodule    # the configured datamodule (prepare_data/setup not yet run)
    trainer = evaluation_trainer(run)
    trainer.validate(run.model, datamodule=run.datamodule, verbose=False)

The config is read as ``machlite validate --config CONFIG [OVERRIDES] --ckpt_path CKPT``
reads it: the ``--config`` files and ``--KEY VALUE`` overrides, the links (``data.num_classes``
-> ``model.num_classes``, ``data.input_shape`` -> ``model.input_shape``), and the checkpoint's
``hyper_parameters`` over the model config (a QAT checkpoint reloads quantized; a pruned
one with its zeros as plain weights, :func:`machlite.sparsity.make_permanent`). The
checkpoint file is read once (:func:`machlite.checkpoint.load_checkpoint_file`); no
Lightning subcommand runs, nothing is printed and nothing is written. ``machlite quantize``
and ``machlite export`` stand on it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from machlite.accelerator import choose_accelerator, stop_gpu_probe
from machlite.checkpoint import load_checkpoint_file, model_config_of
from machlite.cli import MachliteCLI, build_cli, cli_defaults, quiet_lightning
from machlite.datasets import InMemoryDataModule
from machlite.errors import ConfigError, DataError, first_line
from machlite.explain import explain
from machlite.module import Classifier
from machlite.sparsity import make_permanent

#: The trainer settings of a run's config that an evaluation keeps (besides the accelerator).
EVALUATION_KEYS = ("precision", "limit_val_batches", "limit_test_batches", "deterministic")


@dataclass
class LoadedRun:
    """A run loaded from its checkpoint.

    Attributes:
        model: The task, with the checkpoint's weights.
        datamodule: The configured datamodule (nothing read yet).
        trainer_config: The config's ``trainer`` block, as plain data.
        ckpt_path: The checkpoint file.
    """

    model: Classifier
    datamodule: InMemoryDataModule
    trainer_config: dict[str, Any]
    ckpt_path: Path


class _CheckpointCLI(MachliteCLI):
    """MachliteCLI that only parses and builds the model and datamodule of a checkpoint.

    It runs with ``run=False``: no subcommand, no trainer, no run folder. The checkpoint is
    read once, before the classes are built, and its hyperparameters update the model config
    as ``MachliteCLI._parse_ckpt_path`` does for ``--ckpt_path``.
    """

    def __init__(self, ckpt_path: Path, args: list[str]) -> None:
        self.ckpt_path = ckpt_path
        #: The checkpoint's contents, read in :meth:`before_instantiate_classes`.
        self.checkpoint: dict[str, Any] = {}
        super().__init__(**cli_defaults(), save_config_callback=None, args=args, run=False)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """MachliteCLI's arguments, and ``machlite validate``'s own (``ckpt_path``,
        ``weights_only``, ...), which a run's saved config.yaml holds too.

        A ``ckpt_path`` in the config is ignored: the checkpoint is :func:`load_run`'s.
        """
        super().add_arguments_to_parser(parser)
        skip = {"model", "dataloaders", "datamodule"}
        added = parser.add_method_arguments(pl.Trainer, "validate", skip=skip)
        if "weights_only" not in added:  # lightning < 2.4
            parser.add_argument(
                "--weights_only",
                type=bool | None,
                default=None,
                help="Load the checkpoint with weights_only (default: true; false unpickles "
                "any object: trusted files only)",
            )

    def before_instantiate_classes(self) -> None:
        """Read the checkpoint; its hyperparameters update the model config.

        MachliteCLI's accelerator choice is left to :func:`evaluation_trainer`: building the
        model and data needs none, and nothing is printed.
        """
        weights_only = self.config.get("weights_only") is not False
        self.checkpoint = load_checkpoint_file(self.ckpt_path, "cpu", weights_only=weights_only)
        if not isinstance(self.checkpoint, dict):
            raise DataError(f"checkpoint {self.ckpt_path} is not a Lightning checkpoint")
        hparams = model_config_of(self.checkpoint)
        if not hparams:
            return
        self.config = self.parser.parse_object({"model": hparams}, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> None:
        """No trainer: :func:`evaluation_trainer` builds one when one is needed."""
        return None


def _quiet_lightning() -> None:
    """As every machlite CLI (:func:`machlite.cli.quiet_lightning`), and: validate/test log
    val/ and test/ scalars for their loggers, which an evaluation has none of."""
    quiet_lightning()
    warnings.filterwarnings("ignore", message=r".*but have no logger configured")


def load_run(
    config: str | os.PathLike,
    ckpt_path: str | os.PathLike,
    overrides: list[str] | None = None,
) -> LoadedRun:
    """Load the task and datamodule of ``ckpt_path``, configured by ``config``.

    Args:
        config: The run's config file (e.g. ``RunFolder.of_checkpoint(ckpt).config``).
        ckpt_path: The checkpoint file.
        overrides: ``--KEY VALUE`` flags over the config, as ``machlite validate`` takes
            them (e.g. ``["--data.source", "synthetic"]``; ``--weights_only false`` too).

    Returns:
        The task with the checkpoint's weights, and the datamodule.

    Raises:
        BadArguments: The config or an override does not parse.
        ConfigError: A bad value, or the checkpoint does not fit the configured network.
        DataError: The checkpoint is missing or unreadable.
    """
    ckpt = Path(ckpt_path)
    given = ["--config", str(config), *(overrides or [])]
    _quiet_lightning()
    cli = build_cli(given, lambda args: _CheckpointCLI(ckpt, args or given))
    assert isinstance(cli, _CheckpointCLI)
    model, checkpoint = cli.model, cli.checkpoint
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise DataError(
            f"checkpoint {ckpt} has no state_dict: give a checkpoint machlite fit wrote"
        )
    model.on_load_checkpoint(checkpoint)  # as Lightning's restore does
    try:
        model.load_state_dict(state, strict=getattr(model, "strict_loading", True))
    except RuntimeError as err:
        explain(err, model, ckpt)  # the weights do not fit the network: one line
        raise
    model.network = make_permanent(model.network)  # a pruned one's zeros, without torch's hooks
    trainer = cli.config.get("trainer")
    trainer_config = trainer.as_dict() if hasattr(trainer, "as_dict") else dict(trainer or {})
    return LoadedRun(model, cli.datamodule, trainer_config, ckpt)


def evaluation_trainer(run: LoadedRun) -> pl.Trainer:
    """A quiet trainer that validates and tests ``run`` as its config asks.

    The config's accelerator (``auto`` resolved as ``machlite validate`` resolves it; an
    IPU run is evaluated on the host CPU) and its :data:`EVALUATION_KEYS` are kept. One
    device; no logger, progress bar, model summary, checkpoints or callbacks: it writes
    nothing and prints nothing.

    Raises:
        ConfigError: The accelerator or a kept setting cannot be used here.
    """
    settings = run.trainer_config
    requested = settings.get("accelerator") or "auto"
    accelerator = choose_accelerator(requested)[0] if isinstance(requested, str) else "auto"
    if accelerator == "ipu":
        accelerator = "cpu"
    if accelerator == "cpu":
        stop_gpu_probe()
    kwargs: dict[str, Any] = {
        key: settings[key] for key in EVALUATION_KEYS if settings.get(key) is not None
    }
    _quiet_lightning()
    try:
        return pl.Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[],
            **kwargs,
        )
    except MisconfigurationException as err:
        raise ConfigError(f"trainer: {first_line(err)}") from err
    except ValueError as err:
        explain(err)
        raise


def split_inputs(datamodule: InMemoryDataModule, samples: int = 0) -> np.ndarray:
    """The test split's inputs (the first ``samples``; 0: all) as a float32 array.

    The datamodule's data is prepared (downloaded, synthesised or cached) first if need be.
    """
    datamodule.prepare_data()
    datamodule.setup("test")
    xs = [batch[0].detach().cpu() for batch in datamodule.test_dataloader()]
    x = torch.cat(xs).numpy().astype(np.float32)
    return x[:samples] if samples else x


__all__ = ["EVALUATION_KEYS", "LoadedRun", "evaluation_trainer", "load_run", "split_inputs"]
