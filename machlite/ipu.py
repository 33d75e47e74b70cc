"""IPUs: lightning 2.0.9's ``IPUStrategy`` with machlite's options, and the task's IPU side.

- :func:`ipu_strategy` builds the strategy from the ``ipu:`` config block (the CLI calls it
  when the run's accelerator is ``ipu``); :func:`on_ipu` tells whether a trainer uses it.
- The task's IPU rules: poptorch traces the training step and runs forward, backward and the
  optimizer step on the IPU, so there the step returns only the loss and does no host work
  (the task notes :func:`on_ipu` at ``setup``). :func:`record_host_call` does that host work
  after each host call (``on_train_batch_end``): the epoch loss and, when due, the
  ``train/loss`` and ``train/lr`` scalars.

Which accelerator a run uses, and why, is :mod:`machlite.accelerator`. This module imports
on the IPU stack (Python 3.10, lightning 2.0.9) and on the main stack alike; docs/ipu.md.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl

from machlite.accelerator import on_ipu
from machlite.engine import due, write_scalars
from machlite.loggers import current_lr


def ipu_strategy(device_iterations: int, ipu_model: bool, replicas: int, accumulate: int) -> Any:
    """Build lightning 2.0.9's ``IPUStrategy`` with machlite's IPU options.

    Without ``ipu_model`` Lightning builds the poptorch options itself from these values
    (replication from ``trainer.devices``, gradient accumulation from
    ``trainer.accumulate_grad_batches``, the seed from ``seed_everything``).

    Args:
        device_iterations: Optimizer steps (training) or batches (inference) the IPU runs per
            host call.
        ipu_model: Run on the Poplar IPU Model (the SDK's simulator) instead of hardware.
        replicas: Number of model replicas (``trainer.devices``).
        accumulate: Micro-batches per optimizer step (``trainer.accumulate_grad_batches``).
    """
    from lightning.pytorch.strategies import IPUStrategy

    if not ipu_model:
        return IPUStrategy(device_iterations=device_iterations)
    import poptorch

    def options(training: bool) -> Any:
        opts = poptorch.Options().deviceIterations(device_iterations)
        opts.replicationFactor(replicas)
        opts.Training.gradientAccumulation(accumulate if training else 1)
        opts.useIpuModel(True)
        if os.environ.get("PL_GLOBAL_SEED"):
            opts.randomSeed(int(os.environ["PL_GLOBAL_SEED"]))
        return opts

    return IPUStrategy(
        device_iterations=device_iterations,
        training_opts=options(training=True),
        inference_opts=options(training=False),
    )


def record_host_call(module: pl.LightningModule, outputs: Any) -> None:
    """After a host call on IPUs: add its loss to the epoch loss; log it when due.

    poptorch returns the loss of the call's last micro-batch. One host call runs
    ``ipu.device_iterations`` optimizer steps and lightning 2.0.9 counts it as one
    ``global_step``; ``train/acc`` is not computed (the traced step returns only the loss).

    Args:
        module: The task; its ``train_loss`` metric is updated.
        outputs: What the training step returned through poptorch (the loss, or a dict
            with it under ``"loss"``).
    """
    loss = outputs["loss"] if isinstance(outputs, dict) else outputs
    loss = loss.detach().float().mean()
    module.train_loss.update(loss)
    trainer = module.trainer
    step = module.global_step - 1
    if due(trainer, step):
        write_scalars(trainer, {"train/loss": loss.item(), "train/lr": current_lr(trainer)}, step)


__all__ = ["ipu_strategy", "on_ipu", "record_host_call"]
