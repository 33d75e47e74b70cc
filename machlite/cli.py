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
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import ActionConfigFile
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from machlite.accelerator import choose_accelerator, stop_gpu_probe
from machlite.callbacks import (
    CollapseWarning,
    ConfusionReport,
    DivergenceGuard,
    HParamsLogger,
    PredictionWriter,
    RunReport,
)
from machlite.callbacks.progress import count_steps, plain_default_bar
from machlite.callbacks.summary import summarize_network
from machlite.checkpoint import (
    AtomicCheckpointIO,
    MachliteCheckpoint,
    ResumeState,
    find_last_checkpoint,
    load_checkpoint_file,
    plan_resume,
)
from machlite.config_files import check_config_syntax, name_config_file
from machlite.datasets import InMemoryDataModule
from machlite.errors import BadArguments, ConfigError, first_line
from machlite.explain import OneLineArgumentParser, explain
from machlite.ipu import ipu_strategy
from machlite.loggers import ResumableTensorBoardLogger, allocate_version
from machlite.module import Classifier
from machlite.types import PositiveInt

DESCRIPTION = """machlite: train small networks (JSC-Tiny/Toy/Will, the MNIST CNN) with Lightning.
`machlite --help` lists every subcommand. Start with: machlite fit --config configs/jsc_will.yaml"""


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


def _class_path(cls: type) -> dict[str, str]:
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}"}


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


class MachliteCLI(LightningCLI):
    """LightningCLI with machlite's defaults: runs under ``runs/<experiment>/version_N`` with a
    TensorBoard logger, best and last checkpoints, linked data/model shapes, and a run report."""

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

    def before_instantiate_classes(self) -> None:
        """Pick the accelerator (IPU, GPU or CPU), say which and why, and adapt for IPUs."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if getattr(config.model, "steps_per_call", 1) > 1:
            # Lightning compares its calls (K steps each) with log_every_n_steps, which machlite
            # applies to optimizer steps: the warning would be wrong
            warnings.filterwarnings(
                "ignore", message=r"The number of training batches \(\d+\) is smaller than the logg"
            )
        if isinstance(trainer.devices, str) and trainer.devices.isdigit():
            trainer.devices = int(trainer.devices)  # lightning 2.0.9 gets '1' from the CLI
        self._strategy = None
        if not isinstance(trainer.accelerator, str):
            return
        accelerator, reason = choose_accelerator(trainer.accelerator)
        if accelerator == "cpu" and stop_gpu_probe():
            reason += "; CUDA_VISIBLE_DEVICES='' so torch stops probing for a GPU every step"
        if rank_zero_only.rank == 0:  # DDP: the launched ranks re-run this
            print(f"machlite: accelerator {accelerator} ({reason})", flush=True)
        trainer.accelerator = accelerator
        if accelerator != "ipu":
            return
        if trainer.devices == "auto":
            trainer.devices = 1  # Lightning would take 4 IPUs (4 replicas)
        if config.model.steps_per_call != 1:
            print(
                f"machlite: model.steps_per_call {config.model.steps_per_call} -> 1 on the IPU; "
                "use --ipu.device_iterations to run several steps per host call",
                flush=True,
            )
            config.model.steps_per_call = 1
        if trainer.strategy == "auto":
            self._strategy = ipu_strategy(
                config.ipu.device_iterations,
                config.ipu.ipu_model,
                trainer.devices,
                trainer.accumulate_grad_batches or 1,
            )

    def experiment_name(self) -> str:
        """The configured experiment name, or the network's; tagged for synthetic data."""
        name = self._get(self.config, "experiment")
        if not name:
            name = type(self.model.network).__name__.lower()
        tag = getattr(self.datamodule, "run_tag", "")
        if tag and tag not in name:
            name = f"{name}_{tag}"
        return name

    def hparams(self) -> dict[str, Any]:
        """The run's settings, flattened for TensorBoard's HPARAMS tab."""
        config = self._config_dict()
        out: dict[str, Any] = {}
        for key in ("model", "data", "optimizer", "lr_scheduler", "seed_everything"):
            if key in config:
                _flatten(key, config[key], out)
        trainer = config.get("trainer", {})
        for key in ("max_epochs", "precision", "accelerator"):
            if trainer.get(key) is not None:
                out[f"trainer.{key}"] = str(trainer[key]) if key != "max_epochs" else trainer[key]
        return out

    def _config_dict(self) -> dict[str, Any]:
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config.as_dict()

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
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does; explain bad values in one line (machlite.explain)."""
        try:
            super().instantiate_classes()
        except Exception as err:
            explain(err)
            raise

    def _resolve_ckpt_path(self, save_dir: str, name: str, version: str | None) -> None:
        """Resolve ``--ckpt_path last`` to the latest ``last.ckpt`` of this experiment.

        Lightning's own "last" only looks in a new run's folder. Here it is the most recently
        written ``RUNS_DIR/EXPERIMENT/version_N/checkpoints/last.ckpt`` (with ``--run_name``:
        that run's). A fit then continues in that run's folder (``self._resume``), or starts a
        new run when there is none; the other subcommands need one.
        """
        self._resume, self._ckpt_path = None, None
        if self._get(self.config, "ckpt_path", default=None) != "last":
            return
        root = Path(save_dir) / name
        if version:
            ckpt = root / version / "checkpoints" / "last.ckpt"
            ckpt = ckpt if ckpt.is_file() else None
        else:
            ckpt = find_last_checkpoint(root)
        if ckpt is None:
            if self.subcommand != "fit":
                raise ConfigError(
                    f"--ckpt_path last: no checkpoint found under {root} (version_N/checkpoints/"
                    "last.ckpt): train first, or give the path of a checkpoint file"
                )
            print(f"machlite: no last.ckpt under {root}; starting a new run", flush=True)
            return
        self._ckpt_path = str(ckpt)
        if self.subcommand != "fit":
            print(f"machlite: --ckpt_path last is {ckpt}", flush=True)
        else:
            self._resume = plan_resume(ckpt, weights_only=self._weights_only())
            print(
                f"machlite: resuming {self._resume.run_dir} from {ckpt.name} (epoch "
                f"{self._resume.epoch}, step {self._resume.step})",
                flush=True,
            )

    def _weights_only(self) -> bool:
        """Checkpoints load with ``weights_only=True`` unless ``--weights_only false``."""
        return self._get(self.config, "weights_only", default=None) is not False

    def _logger(self, save_dir: str, name: str, version: str | None) -> ResumableTensorBoardLogger:
        """The TensorBoard logger: the resumed run's folder, or a new version_N (atomic)."""
        resume = self._resume
        if resume is not None:
            warnings.filterwarnings("ignore", message=r".*exists and is not empty")
            version = resume.run_dir.name
        elif version is None and rank_zero_only.rank == 0:
            version = f"version_{allocate_version(Path(save_dir) / name)}"
        return ResumableTensorBoardLogger(
            save_dir=save_dir,
            name=name,
            version=version,
            default_hp_metric=False,
            resume_step=resume.step if resume else None,
            resume_scalars=resume.scalars if resume else None,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add the TensorBoard logger (unless configured otherwise), machlite's callbacks
        (:data:`CALLBACKS`, those not switched off) and its checkpoint IO."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        run_name = self._get(self.config, "run_name")
        name, version = self.experiment_name(), None
        if run_name:  # RUNS_DIR/RUN_NAME exactly: TensorBoard shows the run as RUN_NAME
            name, _, version = run_name.strip("/").rpartition("/")
        self._resolve_ckpt_path(self._get(self.config, "runs_dir"), name, version)
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = self._logger(self._get(self.config, "runs_dir"), name, version)
        if getattr(self, "_strategy", None) is not None:
            kwargs["strategy"] = self._strategy
        configured = trainer_config.get("callbacks")  # a copy: the trainer extends that list
        configured = list(configured) if isinstance(configured, list) else [configured]
        trainer = super().instantiate_trainer(**kwargs)
        for key in CALLBACKS:
            callback = self._get(self.config_init, key)
            if callback is None or (key == "prediction_writer" and self.subcommand != "predict"):
                continue
            if isinstance(callback, HParamsLogger) and not callback.hparams:
                callback.hparams = self.hparams()
            trainer.callbacks.append(callback)
        # checkpoint callbacks run last, as Lightning orders them: what the other callbacks
        # do at an epoch end (val/acc_best, divergence checks) is in that epoch's checkpoint
        callbacks = trainer.callbacks
        callbacks[:] = [c for c in callbacks if not isinstance(c, Checkpoint)] + [
            c for c in callbacks if isinstance(c, Checkpoint)
        ]
        plain_default_bar(trainer, configured)  # TQDM unless the config asks for Rich
        count_steps(trainer)  # the progress bar counts optimizer steps, not calls of K
        summarize_network(trainer)  # the network's layers, exact parameters and FLOPs
        checkpoint_io = self._get(self.config_init, "checkpoint_io")
        if checkpoint_io is not None and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = checkpoint_io  # crash-safe writes
        if isinstance(trainer.checkpoint_callback, MachliteCheckpoint):
            every = self._get(self.config, "checkpoint_every_n_steps", default=0) or 0
            trainer.checkpoint_callback.last_every_n_steps = every
        if self._resume is not None:  # the run folder has its config.yaml already
            for callback in trainer.callbacks:
                if isinstance(callback, SaveConfigCallback):
                    callback.overwrite = True
        return trainer

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """Pass the resolved ``--ckpt_path last`` and ``weights_only=True`` by default."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = self._ckpt_path  # None: nothing to resume, a new run
        if "weights_only" in kwargs and kwargs["weights_only"] is None:
            kwargs["weights_only"] = True  # never unpickle code unless --weights_only false
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; explain user-fixable failures in one line (machlite.explain)."""
        try:
            super()._run_subcommand(subcommand)
        except Exception as err:
            ckpt = self._ckpt_path or self._get(self.config, "ckpt_path", default=None)
            explain(err, self.model, ckpt)
            raise


class _NoAdvertising(logging.Filter):
    """Drop Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_ADVERTISING = _NoAdvertising()


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
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    # lightning 2.6 with torch >= 2.10 warns about its own use of a deprecated torch API
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NO_ADVERTISING)  # the same filter object: added once
    # From the command line LightningCLI reads sys.argv itself; given in-process (tests, the
    # sweep's jobs) the arguments are meant to differ from sys.argv, which it warns about.
    given = list(args)
    check_config_syntax(given)  # a broken YAML file is named, with its line and column
    args = None if given == sys.argv[1:] else given
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    try:
        return MachliteCLI(
            model_class=Classifier,
            datamodule_class=InMemoryDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_kwargs={"description": DESCRIPTION},
            args=args,
        )
    except MisconfigurationException as err:
        raise ConfigError(first_line(err)) from err
    except BadArguments as err:
        raise name_config_file(err, given) from None  # the config file with the bad key


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
