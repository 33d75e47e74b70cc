"""Which accelerator a run uses (IPU, GPU or CPU), and why.

IPUs are driven by Lightning's in-tree ``IPUStrategy``, which exists only up to lightning
2.0.9, and by ``poptorch``, which ships with Graphcore's Poplar SDK (not on PyPI). See
docs/ipu.md. The IPU strategy and the task's IPU side are :mod:`machlite.ipu`.
"""

import importlib.util
import os
from importlib import metadata
from typing import Any

import torch

from machlite.errors import ConfigError

#: The one stack with working IPU support (NOTES §4, docs/ipu.md).
IPU_STACK = "Python 3.10, torch 2.0.1, lightning 2.0.9 and poptorch from the Poplar SDK"
IPU_INSTALL = (
    "Install on a Poplar SDK machine: source the SDK's enable.sh in a Python 3.10 venv, "
    "pip install $POPLAR_SDK/poptorch-*.whl, then pip install -e '.[ipu]' (docs/ipu.md)"
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def lightning_has_ipu() -> bool:
    """Whether the installed lightning has the in-tree IPU accelerator (2.0.x and older)."""
    try:
        from lightning.pytorch.accelerators import IPUAccelerator  # noqa: F401
    except ImportError:
        return False
    return True


def poptorch_state() -> tuple[bool, str]:
    """Whether poptorch reports IPU hardware, and a short description of what was found."""
    if importlib.util.find_spec("poptorch") is None:
        return False, "poptorch is not installed"
    import poptorch

    version = getattr(poptorch, "__version__", None) or _version("poptorch") or "?"
    if not poptorch.ipuHardwareIsAvailable():
        return False, f"poptorch {version} finds no IPU hardware"
    return True, f"poptorch {version} reports IPU hardware"


def _gpu_reason() -> str:
    name = torch.cuda.get_device_name(0)
    return f"CUDA GPU found ({torch.cuda.device_count()} x {name})"


def choose_accelerator(requested: str) -> tuple[str, str]:
    """Resolve ``trainer.accelerator`` to what the run will use, with the reason.

    ``auto`` takes an IPU when lightning supports IPUs and poptorch reports hardware, else a
    CUDA GPU, else the CPU. ``ipu`` is checked here so that a missing piece is one clear line.

    Args:
        requested: The configured accelerator name (``auto``, ``ipu``, ``gpu``, ``cuda``,
            ``cpu``, ...).

    Returns:
        ``(accelerator, reason)``; the accelerator is a name Lightning accepts.

    Raises:
        ConfigError: ``ipu`` was requested but this environment cannot run it.
    """
    name = requested.lower()
    lightning = _version("lightning") or "?"
    if name == "ipu":
        if not lightning_has_ipu():
            raise ConfigError(
                f"--trainer.accelerator ipu: lightning {lightning} has no IPU support; IPUs "
                f"need {IPU_STACK}. {IPU_INSTALL}"
            )
        available, found = poptorch_state()
        if not available:
            raise ConfigError(
                f"--trainer.accelerator ipu: {found}; IPUs need {IPU_STACK}. {IPU_INSTALL}. "
                "Or drop the flag to train on the CPU/GPU"
            )
        return "ipu", found
    if name != "auto":
        return requested, "set by trainer.accelerator"
    if lightning_has_ipu():
        available, no_ipu = poptorch_state()
        if available:
            return "ipu", no_ipu
    else:
        no_ipu = f"no IPU: lightning {lightning} has no IPU support"
    if torch.cuda.is_available():
        return "cuda", f"{_gpu_reason()}; {no_ipu}"
    return "cpu", f"no CUDA GPU; {no_ipu}"


def stop_gpu_probe() -> bool:
    """On a machine without a CUDA GPU, stop torch looking for one at every optimizer step.

    A CUDA build of torch only caches its GPU count once CUDA is initialised, which never
    happens without a GPU. So every Adam or SGD step (its CUDA-graph capture check) asks
    NVML again and reloads the library: about 170 us per step on a 2-core CPU, a quarter of
    a JSC-Tiny step at batch 256 (docs/performance.md). With ``CUDA_VISIBLE_DEVICES`` set to
    the empty string, torch answers "no GPU" at once. Set only when torch is a CUDA build,
    no CUDA GPU is available and ``CUDA_VISIBLE_DEVICES`` is unset.

    Returns:
        Whether ``CUDA_VISIBLE_DEVICES`` was set.
    """
    if torch.version.cuda is None or "CUDA_VISIBLE_DEVICES" in os.environ:
        return False
    if torch.cuda.is_available():
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return True


def on_ipu(trainer: Any) -> bool:
    """Whether ``trainer`` runs on IPUs (lightning 2.0.9's ``IPUStrategy``)."""
    strategy = getattr(trainer, "strategy", None)
    return type(strategy).__name__ == "IPUStrategy"


__all__ = ["choose_accelerator", "lightning_has_ipu", "on_ipu", "poptorch_state", "stop_gpu_probe"]
