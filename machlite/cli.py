"""machlite's LightningCLI: the ``fit``, ``validate``, ``test`` and ``predict`` subcommands.

machlite fit --config configs/jsc_will.yaml
machlite fit --config configs/jsc_tiny.yaml --data.batch_size 64 --optimizer.lr 1e-3
machlite test --config configs/jsc_tiny.yaml --ckpt_path PATH/TO/last.ckpt

:func:`run_lightning` runs one in-process and returns the finished CLI (its trainer, model
and config); :func:`check_args` only parses. Both raise machlite's errors instead of
exiting; the ``machlite`` command (:mod:`machlite.commands`) prints them.
"""

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import ActionConfigFile
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from machlite.accelerator_setup import set_up_accelerator
from machlite.callbacks.wiring import CALLBACKS, hparams_settings, wire_trainer
from machlite.checkpoint import (
    AtomicCheckpointIO,
    MachliteCheckpoint,
    load_checkpoint_file,
    model_config_of,
)
from machlite.config_files import check_config_syntax, name_config_file
from machlite.datasets import InMemoryDataModule
from machlite.errors import BadArguments, ConfigError, first_line
from machlite.explain import OneLineArgumentParser, explain
from machlite.module import Classifier
from machlite.runs.placement import experiment_name, resolve_last, run_logger, run_target
from machlite.types import PositiveInt

DESCRIPTION = """machlite: train small networks (JSC-Tiny/Toy/Will, the MNIST CNN) with Lightning.
`machlite --help` lists every subcommand. Start with: machlite fit --config configs/jsc_will.yaml"""


def _class_path(cls: type) -> dict[str, str]:
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}"}


class MachliteCLI(LightningCLI):
    """LightningCLI with machlite's defaults: runs under ``runs/<experiment>/version_N`` with a
    TensorBoard logger, best and last checkpoints, linked data/model shapes, and a run report.

    Its own work is its arguments and their links; the rest it hands on: the accelerator to
    :mod:`machlite.accelerator_setup`, the run folder and ``--ckpt_path last`` to
    :mod:`machlite.runs.placement`, the callbacks and checkpoint IO to
    :mod:`machlite.callbacks.wiring`.
    """

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Experiment name: runs go to RUNS_DIR/EXPERIMENT/version_N "
            "(default: the network's name; '_synthetic' is appended for synthetic data)",
        )
        parser.add_argument(
            "--runs_dir", type=str, default="runs", help="Folder holding all experiments"
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Run folder under RUNS_DIR, used as given, e.g. 'lr=0.001/seed_0' (default: "
            "EXPERIMENT/version_N); `machlite sweep` sets it",
        )
        parser.add_argument(
            "--ipu.device_iterations",
            type=PositiveInt,
            default=1,
            help="IPU only: optimizer steps (training) or batches (evaluation) the IPU runs per "
            "host call; the Graphcore tutorial uses 50. Replication is --trainer.devices and "
            "gradient accumulation --trainer.accumulate_grad_batches (docs/ipu.md)",
        )
        parser.add_argument(
            "--ipu.ipu_model",
            type=bool,
            default=False,
            help="IPU only: run on the Poplar SDK's IPU Model simulator instead of IPU hardware",
        )
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=NonNegativeInt,
            default=0,
            help="Also refresh last.ckpt every N optimizer steps (0: at epoch ends only); a "
            "killed fit resumes with --ckpt_path last (docs/reliability.md)",
        )
        parser.add_lightning_class_args(MachliteCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        for key, cls in CALLBACKS.items():
            parser.add_subclass_arguments(
                cls, key, required=False, help=f"{(cls.__doc__ or '').splitlines()[0]} (null: off)"
            )
            parser.set_defaults({key: _class_path(cls)})
        parser.add_subclass_arguments(
            CheckpointIO,
            "checkpoint_io",
            required=False,
            help="How checkpoints are written and read (default: machlite's crash-safe "
            "AtomicCheckpointIO; null: Lightning's own)",
        )
        parser.set_defaults({"checkpoint_io": _class_path(AtomicCheckpointIO)})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        # the training loader hands over as many batches per call as the model steps through
        parser.link_arguments(
            "model.steps_per_call", "data.init_args.steps_per_call", apply_on="parse"
        )

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Pick the accelerator (IPU, GPU or CPU), say which and why, and adapt for IPUs."""
        config = self._subcommand_config()
        if config.model.steps_per_call > 1:
            # Lightning compares its calls (K steps each) with log_every_n_steps, which machlite
            # applies to optimizer steps: the warning would be wrong
            warnings.filterwarnings(
                "ignore", message=r"The number of training batches \(\d+\) is smaller than the logg"
            )
        #: The IPU strategy the trainer gets, or None (the configured strategy stands).
        self._ipu_strategy = set_up_accelerator(config)

    def experiment_name(self) -> str:
        """The configured experiment name, or the network's; tagged for synthetic data."""
        return experiment_name(
            self._get(self.config, "experiment"), self.model.network, self.datamodule
        )

    def hparams(self) -> dict[str, Any]:
        """The run's settings, flattened for TensorBoard's HPARAMS tab."""
        return hparams_settings(self._subcommand_config().as_dict())

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser, with one-line errors (machlite.explain.OneLineArgumentParser)."""
        if hasattr(self, "parser_class"):  # lightning >= 2.1
            if self.parser_class is LightningArgumentParser:
                self.parser_class = OneLineArgumentParser
            return super().init_parser(**kwargs)
        # lightning 2.0.x (the IPU stack) builds a LightningArgumentParser itself
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = OneLineArgumentParser(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file."
        )
        return parser

    def _parse_ckpt_path(self) -> None:
        """As LightningCLI's (the checkpoint's hyperparameters update the model config), but
        the file loads with ``--weights_only`` and a bad one is a one-line error."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        weights_only = self.config[subcommand].get("weights_only") is not False
        ckpt = load_checkpoint_file(ckpt_path, "cpu", weights_only=weights_only)
        hparams = model_config_of(ckpt)
        if not hparams:
            return
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does; explain bad values in one line (machlite.explain)."""
        try:
            super().instantiate_classes()
        except Exception as err:
            explain(err)
            raise

    def _weights_only(self) -> bool:
        """Checkpoints load with ``weights_only=True`` unless ``--weights_only false``."""
        return self._get(self.config, "weights_only", default=None) is not False

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add the TensorBoard logger (unless configured otherwise), machlite's callbacks
        (:data:`CALLBACKS`, those not switched off) and its checkpoint IO."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        target = run_target(
            self._get(self.config, "runs_dir"),
            self._get(self.config, "run_name"),
            self.experiment_name(),
        )
        self._resolved_ckpt_path, self._resume_plan = None, None
        if self._get(self.config, "ckpt_path", default=None) == "last":
            ckpt, self._resume_plan = resolve_last(target, self.subcommand, self._weights_only())
            self._resolved_ckpt_path = None if ckpt is None else str(ckpt)
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = run_logger(target, self._resume_plan)
        if self._ipu_strategy is not None:
            kwargs["strategy"] = self._ipu_strategy
        configured = trainer_config.get("callbacks")  # a copy: the trainer extends that list
        configured = list(configured) if isinstance(configured, list) else [configured]
        trainer = super().instantiate_trainer(**kwargs)
        wire_trainer(
            trainer,
            chosen={key: self._get(self.config_init, key) for key in CALLBACKS},
            subcommand=self.subcommand,
            settings=self.hparams,
            configured_callbacks=configured,
            checkpoint_io=self._get(self.config_init, "checkpoint_io"),
            last_every_n_steps=self._get(self.config, "checkpoint_every_n_steps", default=0) or 0,
            resumed=self._resume_plan is not None,
        )
        return trainer

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """Pass the resolved ``--ckpt_path last`` and ``weights_only=True`` by default."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = self._resolved_ckpt_path  # None: nothing to resume, a new run
        if "weights_only" in kwargs and kwargs["weights_only"] is None:
            kwargs["weights_only"] = True  # never unpickle code unless --weights_only false
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; explain user-fixable failures in one line (machlite.explain)."""
        try:
            super()._run_subcommand(subcommand)
        except Exception as err:
            ckpt = self._resolved_ckpt_path or self._get(self.config, "ckpt_path", default=None)
            explain(err, self.model, ckpt)
            raise


class _NoAdvertising(logging.Filter):
    """Drop Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_ADVERTISING = _NoAdvertising()


def quiet_lightning() -> None:
    """Silence what Lightning says about what machlite does on purpose, and its advertising."""
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    # lightning 2.6 with torch >= 2.10 warns about its own use of a deprecated torch API
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # given in-process (tests, run jobs, load_run) the arguments differ from sys.argv on purpose
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NO_ADVERTISING)  # the same filter object: added once


def cli_defaults() -> dict[str, Any]:
    """The LightningCLI arguments every machlite CLI is built with: the task, the datamodule
    base class (any subclass by class path), seed 0 and the description."""
    return {
        "model_class": Classifier,
        "datamodule_class": InMemoryDataModule,
        "subclass_mode_data": True,
        "seed_everything_default": 0,
        "parser_kwargs": {"description": DESCRIPTION},
    }


def build_cli(
    args: list[str], make: Callable[[list[str] | None], MachliteCLI] | None = None
) -> MachliteCLI:
    """Build a machlite CLI from ``args`` with machlite's one-line errors.

    Args:
        args: The arguments (a subcommand and its flags, or flags only for a CLI built with
            ``run=False``).
        make: Builds the CLI from the arguments (None: the process's own ``sys.argv``);
            default: :class:`MachliteCLI` with :func:`cli_defaults`, which runs the
            subcommand.

    Raises:
        BadArguments: The arguments or config do not parse, naming the config file.
        MachliteError: A user-fixable problem while running (data, checkpoint, disk).
    """
    given = list(args)
    check_config_syntax(given)  # a broken YAML file is named, with its line and column
    quiet_lightning()
    make = make or (lambda argv: MachliteCLI(**cli_defaults(), args=argv))
    try:  # from the command line LightningCLI reads sys.argv itself
        return make(None if given == sys.argv[1:] else given)
    except MisconfigurationException as err:
        raise ConfigError(first_line(err)) from err
    except BadArguments as err:
        raise name_config_file(err, given) from None  # the config file with the bad key


def run_lightning(args: list[str]) -> MachliteCLI:
    """Run a Lightning subcommand (``fit``, ``validate``, ``test``, ``predict``) in-process.

    Args:
        args: The subcommand and its arguments, e.g. ``["fit", "--config", "c.yaml"]``.

    Returns:
        The finished CLI: ``.trainer`` (its ``checkpoint_callback`` knows the best
        checkpoint), ``.model``, ``.datamodule`` and ``.config``.

    Raises:
        BadArguments: The arguments or config do not parse (a SystemExit with exit code 2).
        MachliteError: A user-fixable problem while running (data, checkpoint, disk).
    """
    return build_cli(args)


def check_args(args: list[str]) -> None:
    """Check a Lightning subcommand's arguments without running anything.

    The arguments are parsed as ``run_lightning`` would (config files merged, every value
    type-checked); nothing is instantiated, no data is read.

    Raises:
        BadArguments: They do not parse; its ``message`` names the key and the problem.
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run_lightning([*args, "--print_config"])
        except BadArguments:
            raise
        except SystemExit as exit_:  # --print_config exits 0 after printing
            if exit_.code not in (0, None):
                raise BadArguments(f"the arguments do not parse (exit {exit_.code})") from None
