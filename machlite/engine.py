"""The training-step engine: K optimizer steps per Lightning call, and logging when due.

It owns what the task does beyond forward and loss while training: with
``model.steps_per_call`` K > 1, manual optimization through the K batches Lightning hands
over at once, the fast path that skips Lightning's per-step hook dispatch when nothing could
notice (:func:`skips_step_hooks`), the LR schedulers (per step and per epoch), the epoch
metrics updated once per call, and the step curves (``train/loss``, ``train/acc``,
``train/lr``) logged every ``trainer.log_every_n_steps`` optimizer steps. With K = 1
Lightning optimizes and the engine only records each step. docs/performance.md explains
why each piece is there.

The seam. The task holds one :class:`MultiStepEngine` and drives it from four places:
``on_train_start`` calls :meth:`~MultiStepEngine.start`, ``training_step`` calls
:meth:`~MultiStepEngine.run` (K > 1) or :meth:`~MultiStepEngine.record` (K = 1),
``on_train_epoch_end`` calls :meth:`~MultiStepEngine.epoch_end`, and
``on_validation_epoch_start`` calls :func:`sync_buffers`. Each call is handed the module; the
engine keeps no reference to it and uses of it only the names in :data:`MODULE_API`
(Lightning's ``trainer``, ``optimizers``, ``manual_backward``, ``global_step``, ``log``,
``device``; the task's ``network``, ``loss_fn``, ``train_loss``, ``train_acc`` and
``step_hooks``; and, to choose the path, whether the module overrides
``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``, ``backward``
or ``manual_backward``), and of the trainer only the names in :data:`TRAINER_API`. Its one
use of Lightning's private state, the optimizer-step counter, goes through
:func:`machlite._compat.step_counter`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor

from machlite import notices
from machlite._compat import step_counter
from machlite.accelerator import on_ipu
from machlite.compiled import GROUP, CompiledSteps, group_lrs, unsupported_optimizer
from machlite.errors import first_line
from machlite.loggers import current_lr
from machlite.paths import compile_cache_dir

try:  # lightning >= 2.1
    from lightning.pytorch.plugins.precision import Precision
except ImportError:  # lightning 2.0 (the IPU stack)
    from lightning.pytorch.plugins.precision import PrecisionPlugin as Precision

Batch = tuple[Tensor, Tensor]
#: Hooks Lightning calls around every manual backward and optimizer step.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
#: What the engine uses of the module it is handed (see the module docstring).
MODULE_API = (
    "trainer",
    "optimizers",
    "manual_backward",
    "global_step",
    "log",
    "device",
    "network",
    "loss_fn",
    "train_loss",
    "train_acc",
    "step_hooks",
    *STEP_HOOKS,
    "backward",
)
#: What the engine uses of the trainer.
TRAINER_API = (
    "strategy",
    "profiler",
    "callbacks",
    "lr_scheduler_configs",
    "log_every_n_steps",
    "optimizers",
    "loggers",
    "is_global_zero",
    "sanity_checking",
    "world_size",
    "state",
)


def due(trainer: pl.Trainer, step: int) -> bool:
    """Whether optimizer step ``step`` is logged (every ``log_every_n_steps`` steps)."""
    return step % (trainer.log_every_n_steps or 1) == 0


def write_scalars(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Send scalars straight to every logger at ``step``; rank 0 only, not while sanity checking.

    Under DDP the step values are rank 0's own batch's.
    """
    if trainer.sanity_checking or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def show_loss(module: pl.LightningModule, value: float | None) -> None:
    """Put the latest logged ``train/loss`` on the progress bar (and callback_metrics).

    Called at most once per Lightning call: ``self.log`` costs about 0.6 ms on a 2-core CPU
    (Lightning moves and copies its result entry each time), more than a JSC-Tiny optimizer
    step, so calling it at every logged step made ``log_every_n_steps: 1`` 2.6x slower than
    the plain loop (docs/performance.md).
    """
    if value is not None:
        module.log("train/loss", value, prog_bar=True, logger=False)


def _inherits(obj: object, base: type, name: str) -> bool:
    """True when ``obj.name`` is ``base``'s method: not overridden by a subclass or instance."""
    return getattr(getattr(obj, name), "__func__", None) is getattr(base, name)


def fast_path_blocker(module: pl.LightningModule, steps: str = "fast steps") -> str | None:
    """Why this fit's steps must go through Lightning's per-step hook dispatch, or None.

    The one test of whether the fast path may apply (:func:`skips_step_hooks` and
    :func:`compile_blocker` both ask it): only when nothing could notice the hooks skipped:
    one process (no DDP gradient hooks), 32-bit precision (no autocast or loss scaling), no
    profiler (its report lists the hooks), and no callback or module (subclass or instance)
    that overrides ``on_before_backward``, ``on_after_backward`` or
    ``on_before_optimizer_step``, nor ``backward`` or ``manual_backward`` on the module.

    Args:
        module: The task, attached to its trainer.
        steps: What the reason says cannot run, e.g. "compiled steps".
    """
    trainer = module.trainer
    if type(trainer.strategy) is not SingleDeviceStrategy:
        return f"strategy {type(trainer.strategy).__name__}: {steps} run on one device"
    if type(trainer.strategy.precision_plugin) is not Precision:
        return f"precision {trainer.precision}: {steps} run in 32-bit"
    if type(trainer.profiler) is not PassThroughProfiler:
        return "a profiler is attached (it times Lightning's per-step hooks)"
    for callback in trainer.callbacks:
        for hook in STEP_HOOKS:
            if not _inherits(callback, Callback, hook):
                return f"callback {type(callback).__name__} needs Lightning's {hook} hook"
    for hook in (*STEP_HOOKS, "backward", "manual_backward"):
        if not _inherits(module, pl.LightningModule, hook):
            return f"the task overrides {hook}"
    return None


def skips_step_hooks(module: pl.LightningModule) -> bool:
    """Whether the multi-step calls may bypass Lightning's per-step hook dispatch.

    Only when nothing could notice (:func:`fast_path_blocker` finds nothing). Otherwise every
    step goes through Lightning's ``manual_backward`` and ``LightningOptimizer.step``, with
    all their hooks.
    """
    return fast_path_blocker(module) is None


def compile_blocker(module: pl.LightningModule) -> str | None:
    """Why this fit's steps cannot run compiled (``model.compile``), or None when they can.

    Compiled steps need several steps per call, no IPU, no ``model.pruning``, what the fast
    path needs (one device, 32-bit, no profiler, no per-step hooks; :func:`fast_path_blocker`)
    and an optimizer whose update :mod:`machlite.compiled` writes out.
    """
    trainer = module.trainer
    if module.steps_per_call < 2:
        return "model.steps_per_call is 1; compiled steps run several per call (e.g. 32)"
    if on_ipu(trainer):
        return "on IPUs poptorch compiles the step itself"
    if getattr(module, "pruning", None) is not None:
        return "model.pruning: torch's pruning sets each weight in a forward hook"
    reason = fast_path_blocker(module, steps="compiled steps")
    if reason is not None:
        return reason
    optimizers = trainer.optimizers
    if len(optimizers) != 1:
        return f"{len(optimizers)} optimizers; compiled steps drive one"
    return unsupported_optimizer(optimizers[0])


def sync_buffers(module: pl.LightningModule) -> None:
    """DDP fit: copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at a forward through its wrapper, but Lightning's manual
    optimization (``steps_per_call`` > 1) switches that off, so each rank would keep the
    statistics of its own batches. Rank 0 writes the checkpoints: with its buffers on every
    rank before validation, all ranks evaluate the checkpointed model, and logged ``val/acc``
    equals a single-process validation of that checkpoint. Rank 0's statistics are what DDP
    keeps with one step per call too.
    """
    trainer = module.trainer
    if trainer.world_size == 1 or trainer.state.fn != "fit":
        return
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for buffer in module.network.buffers():
        torch.distributed.broadcast(buffer, src=0)


class MultiStepEngine:
    """Run a task's training steps: ``steps_per_call`` optimizer steps per Lightning call.

    Above one step per call the steps use manual optimization (:attr:`manual`) with the same
    arithmetic in the same order as Lightning's automatic optimization, so the weights,
    ``global_step`` and the logged curves are those of one step per call.

    With ``compile`` the steps of each call run :data:`~machlite.compiled.GROUP` at a time
    through one compiled graph (:class:`~machlite.compiled.CompiledSteps`), and the rest
    (a call's last ``steps_per_call % GROUP`` steps, a smaller last batch, each fit's first
    step) eagerly on the fast path, on the same tensors.

    Args:
        steps_per_call: Optimizer steps per Lightning training call (``model.steps_per_call``).
        compile: Run the steps compiled when this fit allows it (``model.compile``).

    Attributes:
        manual: Whether the steps use manual optimization (``steps_per_call`` > 1).
        fast: Whether this fit's steps skip Lightning's per-step hook dispatch (set by
            :meth:`start`; see :func:`skips_step_hooks`).
        compiled: This fit's compiled steps, or None (eager: not asked for, or not possible;
            :meth:`start` then says why in one line).
    """

    def __init__(self, steps_per_call: int = 1, compile: bool = False) -> None:
        self.steps_per_call = int(steps_per_call)
        self.manual = self.steps_per_call > 1
        self.compile = bool(compile)
        self.fast = False
        self.compiled: CompiledSteps | None = None
        self._stepped = False  # an eager step of this fit has run

    def start(self, module: pl.LightningModule) -> None:
        """Choose the path once per fit (``on_train_start``)."""
        self.fast = self.manual and skips_step_hooks(module)
        self.compiled = None
        self._stepped = False
        if not self.compile:
            return
        reason = compile_blocker(module)
        if reason is not None:
            notices.warn(module.trainer, f"model.compile: running eager steps, since {reason}")
            return
        optimizer = module.trainer.optimizers[0]
        group = min(GROUP, self.steps_per_call)
        # An earlier fit's graph (another CompiledSteps) would count as a recompile against
        # torch's limit of 8 per function; the on-disk cache keeps what was compiled.
        torch.compiler.reset()
        self.compiled = CompiledSteps(module.network, module.loss_fn, optimizer, group)

    def record(self, module: pl.LightningModule, out: Tensor, loss: Tensor, y: Tensor) -> None:
        """One step per call: update the epoch metrics, log when due, call the step hooks.

        Args:
            module: The task.
            out: The step's network outputs, detached.
            loss: The step's loss, detached.
            y: The step's labels.
        """
        module.train_loss.update(loss, weight=len(y))
        module.train_acc.update(out, y)
        show_loss(module, self._log_step(module, module.global_step, loss, out, y))

    def run(self, module: pl.LightningModule, batches: Sequence[Batch]) -> None:
        """Manual optimization: one optimizer step per batch of ``batches``, as Lightning would.

        On the fast path (:attr:`fast`) the backward pass and the optimizer step are called
        directly: the same arithmetic in the same order, without Lightning's per-step
        dispatch of hooks that nothing here overrides. Compiled (:attr:`compiled`), whole
        groups of steps run as one call. Lightning's optimizer-step counter
        (``global_step``) still counts every step. The epoch metrics are updated once per
        call, with all the call's outputs.
        """
        optimizer = module.optimizers()
        configs = module.trainer.lr_scheduler_configs
        schedulers = [c.scheduler for c in configs if c.interval == "step"]
        before_step, after_step = step_counter(optimizer)
        start = module.global_step
        outs, losses = [], []  # per step (eager) or per group (compiled)
        grouped = False
        shown = None
        i = 0
        while i < len(batches):
            chunk = self._compilable(batches, i)
            done = self._run_compiled(module, chunk, schedulers) if chunk else None
            if done is not None:
                step_losses, step_outs, lrs = done
                for _ in chunk:
                    before_step()  # Lightning's optimizer-step counter
                    after_step()
                losses.append(step_losses)
                outs.append(step_outs.flatten(0, 1))
                grouped = True
            else:
                chunk = batches[i : i + 1]
                x, y = chunk[0]
                step_losses, step_outs = self._eager_step(
                    module, optimizer, x, y, (before_step, after_step)
                )
                lrs = [None]
                losses.append(step_losses[0])
                outs.append(step_outs[0])
            for k, (_, y) in enumerate(chunk):
                step = start + i + k
                out = step_outs[k] if due(module.trainer, step) else None  # argmax when logged
                logged = self._log_step(module, step, step_losses[k], out, y, lrs[k])
                shown = shown if logged is None else logged
                if lrs[k] is None:  # eager: step the schedulers after the step, as Lightning does
                    for scheduler in schedulers:
                        scheduler.step()
            i += len(chunk)
        show_loss(module, shown)
        sizes = [len(y) for _, y in batches]
        weights = torch.tensor(sizes, dtype=torch.float32, device=module.device)
        loss = torch.cat([t.reshape(-1) for t in losses]) if grouped else torch.stack(losses)
        module.train_loss.update(loss, weight=weights)
        module.train_acc.update(torch.cat(outs), torch.cat([y for _, y in batches]))

    def epoch_end(self, module: pl.LightningModule) -> None:
        """At a training epoch's end: step the per-epoch LR schedulers (manual), sync buffers."""
        if self.manual:
            for config in module.trainer.lr_scheduler_configs:
                if config.interval == "epoch":
                    config.scheduler.step()
        sync_buffers(module)

    def _eager_step(
        self,
        module: pl.LightningModule,
        optimizer: Any,
        x: Tensor,
        y: Tensor,
        counter: tuple[Callable[[], None], Callable[[], None]],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """One eager optimizer step (fast path or through Lightning); detached loss and output.

        ``counter`` is :func:`~machlite._compat.step_counter`'s pair, fetched once per call.
        """
        self._stepped = True
        out = module.network(x)
        loss = module.loss_fn(out, y)
        if self.fast:
            before_step, after_step = counter
            optimizer.optimizer.zero_grad()
            loss.backward()
            before_step()  # Lightning's optimizer-step counter
            optimizer.optimizer.step()
            after_step()
        else:
            optimizer.zero_grad()
            module.manual_backward(loss)
            optimizer.step()
        return [loss.detach()], [out.detach()]

    def _compilable(self, batches: Sequence[Batch], start: int) -> Sequence[Batch]:
        """The group of batches from ``start`` to run compiled, or [] (run one eagerly).

        A fit's first step is eager: it creates the optimizer's state, and torch's LR
        schedulers expect a real ``optimizer.step()`` before their first ``step()``.
        """
        compiled = self.compiled
        if compiled is None or not self._stepped or not compiled.ready():
            return []
        chunk = batches[start : start + compiled.group]
        return chunk if compiled.fits(chunk) else []

    def _run_compiled(
        self, module: pl.LightningModule, chunk: Sequence[Batch], schedulers: list[Any]
    ) -> tuple[Tensor, Tensor, list[float]] | None:
        """Run ``chunk`` through the compiled steps; report the compile time at the first call.

        Returns None, after one line saying why, when the graph cannot be compiled (a layer
        torch.compile does not handle): this fit's steps then run eagerly.
        """
        compiled = self.compiled
        raw = module.trainer.optimizers[0]
        first = compiled.compile_seconds is None
        if first:  # the schedulers are stepped only once the graph exists
            try:
                compiled.compile(chunk)
            except Exception as err:  # noqa: BLE001 - whatever torch.compile cannot handle
                self.compiled = None
                reason = first_line(err)
                notices.warn(module.trainer, f"model.compile: running eager steps: {reason}")
                return None
        lrs = group_lrs(raw, schedulers, len(chunk))
        losses, outs = compiled(chunk, lrs)
        if first:
            what = f"{compiled.group} steps of {type(module.network).__name__} at batch"
            what = f"{what} {len(chunk[0][0])}"
            seconds = f"{compiled.compile_seconds:.1f} s"
            if compiled.from_cache:
                message = f"model.compile: {what} loaded from the compile cache in {seconds}"
            else:
                message = (
                    f"model.compile: {what} compiled in {seconds}; cached in "
                    f"{compile_cache_dir()} for later runs of the same shapes"
                )
            notices.say(module.trainer, message)
        return losses, outs, [step[0] for step in lrs]

    @staticmethod
    def _log_step(
        module: pl.LightningModule,
        step: int,
        loss: Tensor,
        out: Tensor | None,
        y: Tensor,
        lr: float | None = None,
    ) -> float | None:
        """Log a step's loss, accuracy and lr when due; then call the task's step hooks.

        ``out`` (the step's outputs) may be None when the step is not due to be logged;
        ``lr`` is the step's learning rate when the schedulers have already moved past it
        (compiled groups); None: the optimizer's current one.

        Returns:
            The logged loss, or None when this step was not logged. The caller shows it on
            the progress bar (:func:`show_loss`), once per call.
        """
        trainer = module.trainer
        value = None
        if due(trainer, step):
            value = loss.item()
            acc = (out.argmax(dim=1) == y).float().mean().item()
            lr = current_lr(trainer) if lr is None else lr
            scalars = {"train/loss": value, "train/acc": acc, "train/lr": lr}
            write_scalars(trainer, scalars, step)
        for hook in module.step_hooks:  # after logging: a diverged step still shows on the curves
            hook(step, loss)
        return value


__all__ = [
    "MODULE_API",
    "STEP_HOOKS",
    "TRAINER_API",
    "MultiStepEngine",
    "compile_blocker",
    "due",
    "fast_path_blocker",
    "show_loss",
    "skips_step_hooks",
    "sync_buffers",
    "write_scalars",
]
