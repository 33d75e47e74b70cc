"""Checkpoints that survive crashes, and resuming a killed fit where it stopped.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder,
  fsyncs it and renames it over the old one, so a kill at any moment leaves either the old or
  the new checkpoint, never half of one. Loading names the file and what is wrong with it in
  one line (missing, corrupt, or needing arbitrary code to unpickle).
- :class:`MachliteCheckpoint` is Lightning's ModelCheckpoint that can also refresh
  ``last.ckpt`` every N optimizer steps (``--checkpoint_every_n_steps``), also when the module
  takes several optimizer steps per Lightning step.
- :class:`ResumeState` stores what Lightning's checkpoints lack for an exact continuation: the
  RNG states, the half-accumulated epoch metrics and the scalars logged at the checkpoint's step.
- :class:`ResumableTensorBoardLogger` continues a run's curves in the same folder: it tells
  TensorBoard to drop what the killed run logged after its last checkpoint (``purge_step``)
  and writes again the scalars of the checkpoint's own step.
- :func:`allocate_version` claims ``version_N`` folders with ``os.mkdir`` (atomic), so runs
  started at the same moment never share one; :func:`find_last_checkpoint` picks the
  checkpoint ``--ckpt_path last`` resumes.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torchmetrics import Metric

from machlite.errors import ConfigError, DataError, MachliteError

#: Key of machlite's own entry in a checkpoint (RNG states, epoch metrics, curve snapshot).
RESUME_KEY = "machlite_resume"
#: Errors that mean "the disk is full" (ENOSPC) or "over quota" (EDQUOT).
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_VERSION = re.compile(r"version_(\d+)")


class DiskFullError(MachliteError):
    """The disk filled up while machlite was writing a file."""


def os_error_message(err: OSError, what: str, hint: str = "") -> str:
    """Return a one-line explanation of an OSError met while writing ``what``.

    Args:
        err: The error.
        what: What was being written, e.g. "checkpoint runs/x/last.ckpt".
        hint: How to write elsewhere (default: the CLI's --runs_dir / --data.data_dir).
    """
    where = f" ({err.filename})" if err.filename and str(err.filename) not in what else ""
    if err.errno in DISK_FULL:
        hint = hint or "write elsewhere with --runs_dir or --data.data_dir"
        return (
            f"the disk is full ({err.strerror or 'No space left on device'}) while writing "
            f"{what}{where}: free some space or {hint}, then run again (a fit continues "
            "from its last checkpoint with --ckpt_path last)"
        )
    reason = (err.strerror or _first_line(err)).rstrip(".")
    hint = hint or "choose a folder you can write to (--runs_dir, --data.data_dir)"
    return f"cannot write {what}{where} ({reason}): {hint}"


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash at any point leaves ``path`` as it was (or absent) or complete, never partial.
    The temporary file is removed when the write fails.

    Raises:
        DiskFullError: When the disk is full; the old ``path`` is untouched.
        OSError: Other write errors (the temporary file is removed first).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # where a full disk shows up on delayed-allocation filesystems
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in DISK_FULL:
            raise DiskFullError(os_error_message(err, f"checkpoint {path}")) from err
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint_file(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    weights_only: bool | None = True,
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load``; explain a missing, corrupt or unsafe file in one line.

    Args:
        path: The checkpoint file.
        map_location: Passed to ``torch.load`` (default: the CPU).
        weights_only: True (the default) unpickles tensors and plain containers only, so a
            file cannot run code; False allows any pickled object (trusted files only).

    Raises:
        DataError: The file is missing or not a readable checkpoint.
        ConfigError: The file needs arbitrary code to load and ``weights_only`` is true.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist: check the path given to --ckpt_path")
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        # weights_only refuses pickled classes and functions ("GLOBAL module.name"): code
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if weights_only is not False and found:
            raise ConfigError(
                f"checkpoint {path} needs arbitrary code to load ({found.group(1)}), so it was "
                "refused: load it only if you trust where it came from, with --weights_only false"
            ) from err
        raise DataError(
            f"checkpoint {path} is not a readable checkpoint (not a PyTorch file, or corrupt): "
            "use another one (e.g. the run's best-*.ckpt)"
        ) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        reason = _first_line(err).split(". ")[0]
        raise DataError(
            f"checkpoint {path} is not a readable checkpoint ({reason}): it may be truncated "
            "or not a PyTorch file; use another one (e.g. the run's best-*.ckpt)"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with crash-safe writes and one-line load errors.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in
    the system temp folder; moving it into place is then a copy, which a kill can cut short.
    This one serialises the checkpoint in memory and hands it to :func:`atomic_write_bytes`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Serialise ``checkpoint`` and write it to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _write_error(err, f"the checkpoint folder {path.parent}") from err
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write_bytes(path, buffer.getbuffer())
        except OSError as err:
            raise _write_error(err, f"checkpoint {path}") from err

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load ``path``; a missing, corrupt or unsafe file is a one-line MachliteError."""
        if str(path).startswith(("http://", "https://", "s3://", "gs://")):
            return super().load_checkpoint(path, map_location, weights_only)
        return load_checkpoint_file(path, map_location, weights_only)


def _write_error(err: OSError, what: str) -> MachliteError:
    return (DiskFullError if err.errno in DISK_FULL else DataError)(os_error_message(err, what))


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
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

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
            last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            if (
                step // every > previous // every
                and not last_batch
                and self.save_last
                and not self._should_skip_saving_checkpoint(trainer)
            ):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self._every_n_train_steps >= 1 or self._train_time_interval is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class ResumableTensorBoardLogger(TensorBoardLogger):
    """TensorBoardLogger that can continue a killed run's curves without duplicated steps.

    It remembers the scalars logged at the latest step (saved into each checkpoint by
    :class:`ResumeState`). Resuming from a checkpoint taken at step G, it opens the run's
    folder with ``purge_step=G`` (TensorBoard then hides everything the killed run logged at
    steps >= G) and writes again the scalars the checkpoint says were logged at step G.

    Args:
        resume_step: The checkpoint's ``global_step`` when resuming, else None.
        resume_scalars: The scalars logged at ``resume_step`` before the checkpoint.
        *args, **kwargs: As for TensorBoardLogger.
    """

    def __init__(
        self,
        *args: Any,
        resume_step: int | None = None,
        resume_scalars: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if resume_step is not None:
            kwargs["purge_step"] = int(resume_step)
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self._replay = dict(resume_scalars or {})
        self.latest_step: int | None = None
        self.latest_scalars: dict[str, float] = {}

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log as TensorBoardLogger does, remembering the scalars of the latest step."""
        self.replay()
        super().log_metrics(metrics, step)
        if step is None:
            return
        if step != self.latest_step:
            self.latest_step, self.latest_scalars = int(step), {}
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, int | float):
                self.latest_scalars[name] = float(value)

    def replay(self) -> None:
        """Write the checkpoint step's scalars again (once, after the purge marker)."""
        if self._replay and self.resume_step is not None:
            scalars, self._replay = self._replay, {}
            self.log_metrics(scalars, step=self.resume_step)

    def scalars_at(self, step: int) -> dict[str, float]:
        """The scalars logged at ``step`` so far (empty unless it is the latest step)."""
        return dict(self.latest_scalars) if step == self.latest_step else {}


class ResumeState(Callback):
    """Save and restore what an exact continuation needs beyond Lightning's checkpoint.

    Stored under ``checkpoint["machlite_resume"]`` (plain tensors and numbers, so
    ``weights_only`` loading accepts it): the CPU and CUDA RNG states (dropout masks), the
    state of the module's ``train_*`` torchmetrics (a mid-epoch checkpoint's half epoch), and
    the scalars logged at the checkpoint's step (see :class:`ResumableTensorBoardLogger`).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _train_metrics(pl_module: pl.LightningModule) -> dict[str, Metric]:
        return {
            name: module
            for name, module in pl_module.named_children()
            if name.startswith("train") and isinstance(module, Metric)
        }

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add the RNG states, the epoch metrics' state and the step's scalars."""
        state: dict[str, Any] = {"step": trainer.global_step, "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        state["metrics"] = {
            name: {k: v.detach().cpu().clone() for k, v in metric.metric_state.items()}
            for name, metric in self._train_metrics(pl_module).items()
            if all(isinstance(v, torch.Tensor) for v in metric.metric_state.values())
        }
        logger = next(
            (lg for lg in trainer.loggers if isinstance(lg, ResumableTensorBoardLogger)), None
        )
        state["scalars"] = logger.scalars_at(trainer.global_step) if logger else {}
        checkpoint[RESUME_KEY] = state

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the saved state; it is applied when training starts."""
        self._pending = checkpoint.get(RESUME_KEY)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the RNGs and epoch metrics; write the step's scalars again."""
        for logger in trainer.loggers:
            if isinstance(logger, ResumableTensorBoardLogger):
                logger.replay()
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch_rng"])
        cuda = state.get("cuda_rng")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)
        metrics = self._train_metrics(pl_module)
        for name, values in state.get("metrics", {}).items():
            metric = metrics.get(name)
            if metric is None or set(values) != set(metric.metric_state):
                continue
            for key, value in values.items():
                setattr(metric, key, value.to(metric.device))
            metric._update_count = max(metric._update_count, 1)  # compute() without a warning
            metric._computed = None


@dataclass
class ResumePlan:
    """Where ``--ckpt_path last`` continues: the checkpoint and its run folder.

    Attributes:
        ckpt: The checkpoint file (``RUN_DIR/checkpoints/last.ckpt``).
        run_dir: The run's folder (``RUNS_DIR/EXPERIMENT/version_N``), where it continues.
        step: The checkpoint's ``global_step``.
        epoch: The checkpoint's epoch.
        scalars: Scalars logged at ``step`` before the checkpoint was taken.
    """

    ckpt: Path
    run_dir: Path
    step: int
    epoch: int
    scalars: dict[str, float] = field(default_factory=dict)


def find_last_checkpoint(experiment_dir: str | os.PathLike) -> Path | None:
    """Return the most recently written ``version_N/checkpoints/last.ckpt``, or None.

    Args:
        experiment_dir: ``RUNS_DIR/EXPERIMENT``.
    """
    found = []
    for ckpt in Path(experiment_dir).glob("version_*/checkpoints/last.ckpt"):
        match = _VERSION.fullmatch(ckpt.parent.parent.name)
        if match and ckpt.is_file():
            found.append((ckpt.stat().st_mtime_ns, int(match.group(1)), ckpt))
    return max(found)[2] if found else None


def plan_resume(ckpt: Path, weights_only: bool = True) -> ResumePlan:
    """Read a run's ``RUN_DIR/checkpoints/last.ckpt`` into a :class:`ResumePlan`."""
    checkpoint = load_checkpoint_file(ckpt, "cpu", weights_only)
    state = checkpoint.get(RESUME_KEY) or {}
    return ResumePlan(
        ckpt=ckpt,
        run_dir=ckpt.parent.parent,
        step=int(checkpoint.get("global_step", 0)),
        epoch=int(checkpoint.get("epoch", 0)),
        scalars={str(k): float(v) for k, v in (state.get("scalars") or {}).items()},
    )


def allocate_version(experiment_dir: str | os.PathLike) -> int:
    """Create and return the next free ``version_N`` folder of an experiment, atomically.

    ``os.mkdir`` fails when the folder exists, so two runs started at the same moment that
    both pick N get one ``version_N`` each: the loser moves on to N+1.

    Raises:
        MachliteError: When the folder cannot be created (not writable, disk full).
    """
    root = Path(experiment_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.fullmatch(p.name))]
        version = max(taken, default=-1) + 1
        while True:
            try:
                os.mkdir(root / f"version_{version}")
                return version
            except FileExistsError:
                version += 1
    except OSError as err:
        raise _write_error(err, f"the run folder under {root}") from err
