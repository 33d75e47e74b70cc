"""Classifier: the one LightningModule, training any ``nn.Module`` network on any datamodule."""

import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from machlite.accelerator import on_ipu
from machlite.errors import ConfigError
from machlite.report import confusion_figure, format_confusion, per_class_accuracy
from machlite.types import PositiveInt

try:  # lightning >= 2.1
    from lightning.pytorch.plugins.precision import Precision
except ImportError:  # lightning 2.0 (the IPU stack)
    from lightning.pytorch.plugins.precision import PrecisionPlugin as Precision

Batch = tuple[Tensor, Tensor]
#: Hooks Lightning calls around every manual backward and optimizer step.
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")

# Under DDP the epoch values logged below come from torchmetrics' compute(), which already
# reduces over all ranks; Lightning's advice to add sync_dist=True does not apply to them.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('(train|val|test)/(loss|acc)"
)


def _inherits(obj: object, base: type, name: str) -> bool:
    """True when ``obj.name`` is ``base``'s method: not overridden by a subclass or instance."""
    return getattr(getattr(obj, name), "__func__", None) is getattr(base, name)


class Classifier(pl.LightningModule):
    """Train and evaluate a classification network with CrossEntropyLoss.

    Logged to TensorBoard, all against the optimizer step (``global_step``):
    ``train/loss``, ``train/acc`` (the batch's) and ``train/lr`` every
    ``trainer.log_every_n_steps`` optimizer steps; ``train/loss_epoch`` and
    ``train/acc_epoch`` per epoch; ``val/loss`` and ``val/acc`` per epoch; ``test/loss`` and
    ``test/acc``. Accuracies are torchmetrics' multiclass micro accuracy, one object per stage.
    ``test`` also prints the confusion matrix with per-class accuracy, logs
    ``test/acc_class/<class>`` scalars and a ``test/confusion_matrix`` figure.

    The optimizer and LR scheduler come from the config's ``optimizer:`` and
    ``lr_scheduler:`` blocks (LightningCLI); without them (or as a library) the module
    trains with Adam at learning rate 1e-3.

    Args:
        network: The network to train, e.g. ``machlite.models.JSCWill``. Required.
        num_classes: Number of classes (linked from the datamodule by the CLI).
        input_shape: Shape of one input sample without the batch dimension (linked from the
            datamodule by the CLI); used to check the network fits the data.
        steps_per_call: Optimizer steps per Lightning training step. Above 1, the training
            loader hands over this many batches at once and the module steps through them
            (manual optimization), so Lightning's per-step overhead is paid once per call:
            much faster for tiny networks, with identical results (same seed, same batches,
            same updates). Every optimizer step still counts in ``global_step`` and in the
            logged curves. On one device at 32-bit precision, unless a callback overrides
            Lightning's per-step hooks, the steps also skip Lightning's per-step hook
            dispatch (docs/performance.md). Use 1 for Trainer features that need automatic
            optimization (``accumulate_grad_batches``, ``gradient_clip_val``).
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        num_classes: int = 5,
        input_shape: tuple[int, ...] | None = None,
        steps_per_call: PositiveInt = 1,
    ) -> None:
        super().__init__()
        if network is None:
            raise ConfigError(
                "model.network is required, e.g. --model.network machlite.models.JSCTiny"
            )
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {num_classes}")
        if steps_per_call < 1:
            raise ConfigError(f"model.steps_per_call must be >= 1, got {steps_per_call}")
        self.save_hyperparameters(ignore=["network"], logger=False)
        self.network = network
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.steps_per_call = int(steps_per_call)
        self.automatic_optimization = self.steps_per_call == 1
        #: Called as ``hook(step, loss)`` for every optimizer step, also with steps_per_call > 1
        #: (machlite.guards.DivergenceGuard registers here).
        self.step_hooks: list[Callable[[int, Tensor], None]] = []
        self._on_ipu = False
        self._fast_steps = False
        self.loss_fn = nn.CrossEntropyLoss()
        acc = {"num_classes": num_classes, "average": "micro", "validate_args": False}
        self.train_acc = MulticlassAccuracy(**acc)
        self.val_acc = MulticlassAccuracy(**acc)
        self.test_acc = MulticlassAccuracy(**acc)
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        if self.input_shape is not None:
            self.check_network()

    @property
    def outputs_probabilities(self) -> bool:
        """True when the network ends in a softmax (the Graphcore tutorial's MNIST net)."""
        return bool(getattr(self.network, "outputs_probabilities", False))

    def check_network(self) -> None:
        """Run two dummy samples through the network; explain a shape mismatch in one line."""
        name = type(self.network).__name__
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                out = self.network(torch.zeros(2, *self.input_shape))
        except RuntimeError as err:
            raise ConfigError(
                f"network {name} does not accept inputs of shape {self.input_shape} from "
                f"this datamodule ({str(err).splitlines()[0]}): pick a network for this data"
            ) from err
        finally:
            self.network.train(was_training)
        if out.shape != (2, self.num_classes):
            raise ConfigError(
                f"network {name} gives {tuple(out.shape[1:])} outputs per sample but the data "
                f"has {self.num_classes} classes: pick a network for this data"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Return the network's output (logits, or probabilities for softmax networks)."""
        return self.network(x)

    # -- logging -----------------------------------------------------------------------------
    def _write(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Send scalars to every logger at ``step`` (default: the current optimizer step).

        Under DDP only rank 0 writes (its step values are its own batch's).
        """
        if self._trainer is None or self.trainer.sanity_checking:
            return
        if not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step if step is None else step)

    def _log_step(self, step: int, loss: Tensor, out: Tensor, y: Tensor) -> float | None:
        """Log a step's loss, accuracy and lr when due (every ``log_every_n_steps`` steps).

        Returns:
            The logged loss, or None when this step was not logged. The caller shows it on
            the progress bar (:meth:`_show_loss`), once per call.
        """
        value = None
        if step % (self.trainer.log_every_n_steps or 1) == 0:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            value = loss.item()
            acc = (out.argmax(dim=1) == y).float().mean().item()
            self._write({"train/loss": value, "train/acc": acc, "train/lr": lr}, step=step)
        for hook in self.step_hooks:  # after logging: a diverged step still shows on the curves
            hook(step, loss)
        return value

    def _show_loss(self, value: float | None) -> None:
        """Put the latest logged ``train/loss`` on the progress bar (and callback_metrics).

        Called at most once per Lightning call: ``self.log`` costs about 0.6 ms on a 2-core
        CPU (Lightning moves and copies its result entry each time), more than a JSC-Tiny
        optimizer step, so calling it at every logged step made ``log_every_n_steps: 1``
        2.6x slower than the plain loop (docs/performance.md).
        """
        if value is not None:
            self.log("train/loss", value, prog_bar=True, logger=False)

    def _epoch_done(self, stage: str, loss: MeanMetric, acc: MulticlassAccuracy) -> None:
        """Compute, log (at the optimizer step) and reset a stage's epoch metrics."""
        suffix = "_epoch" if stage == "train" else ""
        values = {f"{stage}/loss{suffix}": loss.compute()}
        if acc.update_called:  # not on IPUs for train (the traced step returns only the loss)
            values[f"{stage}/acc{suffix}"] = acc.compute()
        loss.reset()
        acc.reset()
        # While fitting, scalars go to the loggers at the optimizer step (the x axis of the
        # train curves); in validate/test, Lightning logs them and prints its results table.
        fitting = self.trainer.state.fn == "fit"
        for name, value in values.items():
            self.log(name, value, prog_bar=stage == "val", logger=not fitting)
        if fitting:
            self._write({name: value.item() for name, value in values.items()})

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> Tensor | None:
        """One optimizer step (or ``steps_per_call`` of them); returns the loss when automatic."""
        if self.automatic_optimization:
            x, y = batch
            out = self.network(x)
            loss = self.loss_fn(out, y)
            if self._on_ipu:  # traced by poptorch: no host work here (see on_train_batch_end)
                return loss
            out, value = out.detach(), loss.detach()
            self.train_loss.update(value, weight=len(y))
            self.train_acc.update(out, y)
            self._show_loss(self._log_step(self.global_step, value, out, y))
            return loss
        return self._multi_step(batch)

    def _multi_step(self, batch: list[Batch]) -> None:
        """Manual optimization: one optimizer step per batch of ``batch``, as Lightning would.

        On the fast path (see :meth:`_skips_step_hooks`) the backward pass and the optimizer
        step are called directly: the same arithmetic in the same order, without Lightning's
        per-step dispatch of hooks that nothing here overrides. Lightning's optimizer-step
        counter (``global_step``) still counts every step. The epoch metrics are updated
        once per call, with all the call's outputs.
        """
        optimizer = self.optimizers()
        raw = optimizer.optimizer
        configs = self.trainer.lr_scheduler_configs
        schedulers = [c.scheduler for c in configs if c.interval == "step"]
        fast = self._fast_steps
        start = self.global_step
        outs, losses = [], []
        shown = None
        for i, (x, y) in enumerate(batch):
            out = self.network(x)
            loss = self.loss_fn(out, y)
            if fast:
                raw.zero_grad()
                loss.backward()
                optimizer._on_before_step()  # Lightning's optimizer-step counter
                raw.step()
                optimizer._on_after_step()
            else:
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            out, loss = out.detach(), loss.detach()
            outs.append(out)
            losses.append(loss)
            logged = self._log_step(start + i, loss, out, y)  # with the lr this step used
            shown = shown if logged is None else logged
            for scheduler in schedulers:
                scheduler.step()
        self._show_loss(shown)
        sizes = torch.tensor([len(y) for _, y in batch], dtype=torch.float32, device=self.device)
        self.train_loss.update(torch.stack(losses), weight=sizes)
        self.train_acc.update(torch.cat(outs), torch.cat([y for _, y in batch]))

    def _skips_step_hooks(self) -> bool:
        """Whether the multi-step calls may bypass Lightning's per-step hook dispatch.

        Only when nothing could notice: one process (no DDP gradient hooks), 32-bit
        precision (no autocast or loss scaling), no profiler (its report lists the hooks),
        and no callback or module (subclass or instance) that overrides
        ``on_before_backward``, ``on_after_backward`` or ``on_before_optimizer_step``, nor
        ``backward`` or ``manual_backward`` on the module. Otherwise every step goes through
        Lightning's ``manual_backward`` and ``LightningOptimizer.step``, with all their hooks.
        """
        trainer = self.trainer
        if type(trainer.strategy) is not SingleDeviceStrategy:
            return False
        if type(trainer.strategy.precision_plugin) is not Precision:
            return False
        if type(trainer.profiler) is not PassThroughProfiler:
            return False
        for callback in trainer.callbacks:
            if not all(_inherits(callback, Callback, hook) for hook in _STEP_HOOKS):
                return False
        own = (*_STEP_HOOKS, "backward", "manual_backward")
        return all(_inherits(self, Classifier, hook) for hook in own)

    def on_train_start(self) -> None:
        """Choose the multi-step path once per fit (see :meth:`_skips_step_hooks`)."""
        self._fast_steps = not self.automatic_optimization and self._skips_step_hooks()

    def setup(self, stage: str) -> None:
        """Note whether the steps run on IPUs (traced by poptorch) or eagerly."""
        self._on_ipu = on_ipu(self.trainer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """IPU only: log the loss poptorch returns (of the call's last micro-batch).

        On IPUs one host call runs ``ipu.device_iterations`` optimizer steps and Lightning
        2.0.9 counts it as one ``global_step``; ``train/acc`` is not computed there.
        """
        if not self._on_ipu:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = loss.detach().float().mean()
        self.train_loss.update(loss)
        step = self.global_step - 1
        if step % (self.trainer.log_every_n_steps or 1) == 0:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self._write({"train/loss": loss.item(), "train/lr": lr}, step=step)

    def _step_schedulers(self, interval: str) -> None:
        """Manual optimization: step the LR schedulers of this interval, as Lightning would."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self._step_schedulers("epoch")
        self._sync_buffers()
        self._epoch_done("train", self.train_loss, self.train_acc)

    def _sync_buffers(self) -> None:
        """DDP fit: copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts buffers at a forward through its wrapper, but Lightning's manual
        optimization (``steps_per_call`` > 1) switches that off, so each rank would keep the
        statistics of its own batches. Rank 0 writes the checkpoints: with its buffers on
        every rank before validation, all ranks evaluate the checkpointed model, and logged
        ``val/acc`` equals a single-process validation of that checkpoint. Rank 0's
        statistics are what DDP keeps with one step per call too.
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1 or trainer.state.fn != "fit":
            return
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for buffer in self.network.buffers():
            torch.distributed.broadcast(buffer, src=0)

    # -- evaluation --------------------------------------------------------------------------
    # The steps only run the network and return its outputs with the labels; the metrics are
    # updated on the host in the batch-end hooks. That keeps the steps traceable (IPU) and
    # the metric state outside compiled code.
    def _eval_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        return self.network(x), y

    def _eval_update(
        self, outputs: tuple[Tensor, Tensor], loss_metric: MeanMetric, acc: MulticlassAccuracy
    ) -> None:
        out, y = outputs
        loss_metric.update(self.loss_fn(out, y), weight=len(y))
        acc.update(out, y)

    def validation_step(self, batch: Batch, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Return the network's outputs and the labels; metrics are updated at batch end."""
        return self._eval_step(batch)

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_update(outputs, self.val_loss, self.val_acc)

    def on_validation_epoch_start(self) -> None:
        self._sync_buffers()

    def on_validation_epoch_end(self) -> None:
        self._epoch_done("val", self.val_loss, self.val_acc)

    def test_step(self, batch: Batch, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Return the network's outputs and the labels; metrics are updated at batch end."""
        return self._eval_step(batch)

    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_update(outputs, self.test_loss, self.test_acc)
        self.test_confusion.update(outputs[0], outputs[1])

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute()
        self.test_confusion.reset()
        self._epoch_done("test", self.test_loss, self.test_acc)
        self._report_confusion(matrix)

    def class_names(self) -> list[str]:
        """Names of the classes: the datamodule's ``class_names`` if it has them, else 0..C-1."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == self.num_classes:
            return [str(n) for n in names]
        return [str(k) for k in range(self.num_classes)]

    def _report_confusion(self, matrix: Tensor) -> None:
        """Print the confusion matrix and per-class accuracy; log them to TensorBoard."""
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        names = self.class_names()
        print(format_confusion(matrix, names), flush=True)
        accuracy = per_class_accuracy(matrix)
        self._write({f"test/acc_class/{n}": float(a) for n, a in zip(names, accuracy, strict=True)})
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "test/confusion_matrix", confusion_figure(matrix, names), self.global_step
                )
                logger.experiment.flush()

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> tuple[Tensor, Tensor]:
        """Return the predicted class and the class probabilities of each sample.

        A tuple, not a dict: poptorch (IPU) returns tensors and tuples only.
        """
        out = self.network(batch[0])
        probs = out if self.outputs_probabilities else out.softmax(dim=1)
        return probs.argmax(dim=1), probs

    def configure_optimizers(self) -> Any:
        """Adam at 1e-3: the default when the config gives no ``optimizer`` block."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)
