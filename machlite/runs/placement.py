"""Where a CLI run writes: its experiment name, its run folder, and ``--ckpt_path last``.

:class:`~machlite.cli.MachliteCLI` asks this module three things before it builds the
trainer, and passes it the config values it read:

- :func:`experiment_name` and :func:`run_target`: the folder the run writes to,
  ``RUNS_DIR/EXPERIMENT/version_N`` (a new ``version_N``), or ``RUNS_DIR/RUN_NAME`` exactly
  (``--run_name``, as sweeps set it).
- :func:`resolve_last`: ``--ckpt_path last`` as a checkpoint file, and for a fit the
  :class:`~machlite.checkpoint.resume.ResumePlan` that continues that run in its own folder.
- :func:`run_logger`: the run's :class:`~machlite.loggers.ResumableTensorBoardLogger`, in the
  resumed run's folder or a ``version_N`` claimed atomically.

Every file name of a run folder comes from :mod:`machlite.runs.layout`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from machlite.checkpoint import ResumePlan, find_last_checkpoint, plan_resume
from machlite.datasets import InMemoryDataModule
from machlite.errors import ConfigError
from machlite.loggers import ResumableTensorBoardLogger, allocate_version
from machlite.runs.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT, VERSION_PREFIX, RunFolder


def experiment_name(
    configured: str | None, network: nn.Module, datamodule: InMemoryDataModule
) -> str:
    """The configured experiment name, or the network's; tagged for synthetic data.

    Args:
        configured: ``--experiment`` (None or empty: the network's class name, lowercased).
        network: The task's network.
        datamodule: The datamodule; its ``run_tag`` (e.g. "synthetic") is appended unless
            the name holds it already.
    """
    name = configured or type(network).__name__.lower()
    tag = datamodule.run_tag
    if tag and tag not in name:
        name = f"{name}_{tag}"
    return name


@dataclass(frozen=True)
class RunTarget:
    """The folder a run writes to: ``RUNS_DIR/EXPERIMENT/VERSION``.

    Attributes:
        runs_dir: The folder holding all experiments (``--runs_dir``).
        experiment: The experiment folder under ``runs_dir`` (with ``--run_name A/B``: ``A``).
        version: The run's folder under the experiment (with ``--run_name A/B``: ``B``), or
            None: a new ``version_N``, claimed when the logger is made.
    """

    runs_dir: str
    experiment: str
    version: str | None

    @property
    def experiment_dir(self) -> Path:
        """``RUNS_DIR/EXPERIMENT``."""
        return Path(self.runs_dir) / self.experiment


def run_target(runs_dir: str, run_name: str | None, experiment: str) -> RunTarget:
    """Where the run writes: ``RUNS_DIR/RUN_NAME`` exactly when given (TensorBoard then shows
    the run as RUN_NAME), else a new ``version_N`` under ``RUNS_DIR/EXPERIMENT``."""
    if run_name:
        parent, _, version = run_name.strip("/").rpartition("/")
        return RunTarget(runs_dir, parent, version)
    return RunTarget(runs_dir, experiment, None)


def resolve_last(
    target: RunTarget, subcommand: str | None, weights_only: bool
) -> tuple[Path | None, ResumePlan | None]:
    """Resolve ``--ckpt_path last`` to the latest ``last.ckpt`` of the run's experiment.

    Lightning's own "last" only looks in a new run's folder. Here it is the most recently
    written ``RUNS_DIR/EXPERIMENT/version_N/checkpoints/last.ckpt`` (with ``--run_name``:
    that run's). A fit then continues in that run's folder (the returned plan), or starts a
    new run when there is none; the other subcommands need one. Says what it found.

    Returns:
        ``(checkpoint, resume)``: the checkpoint file or None, and for a fit the plan.

    Raises:
        ConfigError: Not a fit, and there is no checkpoint.
    """
    root = target.experiment_dir
    if target.version:
        ckpt: Path | None = RunFolder(root / target.version).last_checkpoint
        ckpt = ckpt if ckpt.is_file() else None
    else:
        ckpt = find_last_checkpoint(root)
    if ckpt is None:
        if subcommand != "fit":
            raise ConfigError(
                f"--ckpt_path last: no checkpoint found under {root} ({VERSION_PREFIX}N/"
                f"{CHECKPOINTS_DIR}/{LAST_CHECKPOINT}): train first, or give the path of a "
                "checkpoint file"
            )
        print(f"machlite: no {LAST_CHECKPOINT} under {root}; starting a new run", flush=True)
        return None, None
    if subcommand != "fit":
        print(f"machlite: --ckpt_path last is {ckpt}", flush=True)
        return ckpt, None
    resume = plan_resume(ckpt, weights_only=weights_only)
    print(
        f"machlite: resuming {resume.run_dir} from {ckpt.name} (epoch {resume.epoch}, step "
        f"{resume.step})",
        flush=True,
    )
    return ckpt, resume


def run_logger(target: RunTarget, resume: ResumePlan | None) -> ResumableTensorBoardLogger:
    """The TensorBoard logger: the resumed run's folder, or a new ``version_N`` (atomic)."""
    version = target.version
    if resume is not None:
        warnings.filterwarnings("ignore", message=r".*exists and is not empty")
        version = resume.run_dir.name
    elif version is None and rank_zero_only.rank == 0:
        number = allocate_version(target.experiment_dir)
        version = RunFolder.version(target.experiment_dir, number).path.name
    return ResumableTensorBoardLogger(
        save_dir=target.runs_dir,
        name=target.experiment,
        version=version,
        default_hp_metric=False,
        resume_step=resume.step if resume else None,
        resume_scalars=resume.scalars if resume else None,
    )


__all__ = ["RunTarget", "experiment_name", "resolve_last", "run_logger", "run_target"]
