"""Reading and writing checkpoint files.

:class:`AtomicCheckpointIO` writes each checkpoint through machlite's one atomic writer
(:mod:`machlite.atomic`), so a kill at any moment leaves either the old or the new checkpoint,
never half of one. :func:`load_checkpoint_file` (which it uses to load) names the file and
what is wrong with it in one line: missing, corrupt, or needing arbitrary code to unpickle.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from machlite.atomic import atomic_write
from machlite.errors import ConfigError, DataError, first_line, write_error


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
        reason = first_line(err).split(". ")[0]
        raise DataError(
            f"checkpoint {path} is not a readable checkpoint ({reason}): it may be truncated "
            "or not a PyTorch file; use another one (e.g. the run's best-*.ckpt)"
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with crash-safe writes and one-line load errors.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in
    the system temp folder; moving it into place is then a copy, which a kill can cut short.
    This one serialises the checkpoint in memory and hands it to machlite's one atomic writer
    (:func:`machlite.atomic.atomic_write`).
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
            raise write_error(err, f"the checkpoint folder {path.parent}") from err
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write(path, buffer.getbuffer(), what=f"checkpoint {path}")
        except OSError as err:
            raise write_error(err, f"checkpoint {path}") from err

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


def model_config_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model config a Lightning checkpoint's ``hyper_parameters`` give, in the form
    LightningCLI parses (``class_path`` and ``dict_kwargs`` for a class path); empty: none."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    if "_class_path" in hparams:
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    return hparams
