"""The parsed config of a CLI run, adapted to the accelerator it will use.

:func:`set_up_accelerator` resolves ``trainer.accelerator`` (IPU, GPU or CPU, with the reason,
:func:`machlite.accelerator.choose_accelerator`), says which, and adapts the config to it:
on a CPU it stops torch's GPU probe; on an IPU it takes one device unless told otherwise,
one optimizer step per call (``--ipu.device_iterations`` is the IPU's way to run several),
and builds the IPU strategy (:func:`machlite.ipu.ipu_strategy`).
:class:`~machlite.cli.MachliteCLI` calls it before the classes are instantiated.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from machlite.accelerator import choose_accelerator, stop_gpu_probe
from machlite.ipu import ipu_strategy


def set_steps_per_call(config: Any, steps: int) -> None:
    """Set ``model.steps_per_call`` and the datamodule's copy of it (the CLI links them when
    parsing; a change after parsing must set both)."""
    config.model.steps_per_call = steps
    data = config.data.init_args  # the datamodule is configured as class_path and init_args
    if "steps_per_call" in data:
        data.steps_per_call = steps


def set_up_accelerator(config: Any) -> Any | None:
    """Pick the accelerator, say which and why, and adapt ``config`` to it (in place).

    Args:
        config: The subcommand's parsed config (a jsonargparse Namespace with ``trainer``,
            ``model``, ``data`` and ``ipu``).

    Returns:
        The IPU strategy to give the trainer, or None (the configured strategy stands).

    Raises:
        ConfigError: ``ipu`` was requested but this environment cannot run it.
    """
    trainer = config.trainer
    if isinstance(trainer.devices, str) and trainer.devices.isdigit():
        trainer.devices = int(trainer.devices)  # lightning 2.0.9 gets '1' from the CLI
    if not isinstance(trainer.accelerator, str):
        return None
    accelerator, reason = choose_accelerator(trainer.accelerator)
    if accelerator == "cpu" and stop_gpu_probe():
        reason += "; CUDA_VISIBLE_DEVICES='' so torch stops probing for a GPU every step"
    if rank_zero_only.rank == 0:  # DDP: the launched ranks re-run this
        print(f"machlite: accelerator {accelerator} ({reason})", flush=True)
    trainer.accelerator = accelerator
    if accelerator != "ipu":
        return None
    if trainer.devices == "auto":
        trainer.devices = 1  # Lightning would take 4 IPUs (4 replicas)
    if config.model.steps_per_call != 1:
        print(
            f"machlite: model.steps_per_call {config.model.steps_per_call} -> 1 on the IPU; "
            "use --ipu.device_iterations to run several steps per host call",
            flush=True,
        )
        set_steps_per_call(config, 1)
    if trainer.strategy != "auto":
        return None
    return ipu_strategy(
        config.ipu.device_iterations,
        config.ipu.ipu_model,
        trainer.devices,
        trainer.accumulate_grad_batches or 1,
    )


__all__ = ["set_steps_per_call", "set_up_accelerator"]
