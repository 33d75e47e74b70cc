"""The task: :class:`Classifier`, the one LightningModule, training any ``nn.Module`` network.

It defines the model, the loss, the steps and the metrics. How the training steps run and log
(several optimizer steps per Lightning call) is :mod:`machlite.engine`, the IPU side is
:mod:`machlite.ipu`, and ``machlite test``'s confusion-matrix report is the
:class:`~machlite.callbacks.confusion.ConfusionReport` callback.
"""

import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from machlite.checkpoint import load_checkpoint_file
from machlite.datasets import InMemoryDataModule
from machlite.engine import MultiStepEngine, sync_buffers, write_scalars
from machlite.errors import ConfigError
from machlite.ipu import on_ipu, record_host_call
from machlite.quant import QuantConfig, from_dict, quantize_network
from machlite.sparsity import PruneConfig, adapt_state_dict, attach, prune_config, prune_to
from machlite.types import PositiveInt

Batch = tuple[Tensor, Tensor]

# Under DDP the epoch values logged below come from torchmetrics' compute(), which already
# reduces over all ranks; Lightning's advice to add sync_dist=True does not apply to them.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('(train|val|test)/(loss|acc)"
)


class Classifier(pl.LightningModule):
    """Train and evaluate a classification network with CrossEntropyLoss.

    Logged to TensorBoard, all against the optimizer step (``global_step``):
    ``train/loss``, ``train/acc`` (the batch's) and ``train/lr`` every
    ``trainer.log_every_n_steps`` optimizer steps; ``train/loss_epoch`` and
    ``train/acc_epoch`` per epoch; ``val/loss`` and ``val/acc`` per epoch; ``test/loss`` and
    ``test/acc``. Accuracies are torchmetrics' multiclass micro accuracy, one object per stage.
    The test report (confusion matrix, ``test/acc_class/<class>``) is the
    :class:`~machlite.callbacks.confusion.ConfusionReport` callback, which the CLI attaches.

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
            (manual optimization, :mod:`machlite.engine`), so Lightning's per-step overhead
            is paid once per call: much faster for tiny networks, with identical results
            (same seed, same batches, same updates). Every optimizer step still counts in
            ``global_step`` and in the logged curves. On one device at 32-bit precision,
            unless a callback overrides Lightning's per-step hooks, the steps also skip
            Lightning's per-step hook dispatch (docs/performance.md). Use 1 for Trainer
            features that need automatic optimization (``accumulate_grad_batches``,
            ``gradient_clip_val``). The datamodule must hand over as many batches per call:
            the CLI links ``data.steps_per_call`` to it; as a library, give the datamodule
            the same ``steps_per_call`` (a fit with two values stops at its start).
        compile: Run the training steps compiled: each call's steps eight at a time in one
            ``torch.compile`` graph with the optimizer update and BatchNorm's statistics
            (:mod:`machlite.compiled`), several times faster per step for the JSC networks,
            same results up to rounding. Compiling costs about 40 s (JSC-Tiny) to 2 minutes
            (JSC-Will) once per network, batch size and machine (cached on disk); it pays
            for long or repeated runs (docs/performance.md). Needs ``steps_per_call`` >= 2,
            one device, 32-bit, and Adam, AdamW or SGD; elsewhere the run says why in one
            line and trains eagerly.
        quantization: Fixed-point formats for the network's layers (the QAT hook,
            docs/quantization.md). The network is replaced by
            :func:`machlite.quant.quantize_network`'s copy in ``__init__``, so training is
            quantization-aware and a checkpoint reloads quantized (its hyperparameters hold
            this block as plain data). None (the default): float.
        pruning: Magnitude pruning of the Linear and Conv2d weights to a target sparsity,
            on a schedule over epochs (docs/pruning.md): ``sparsity``, ``scope`` (global or
            layer), ``layers``, ``start_epoch``, ``end_epoch``; or a file of that block.
            torch's pruning is attached to the (quantized) layers in ``__init__``, so a
            checkpoint reloads pruned; weights are zeroed at the start of each scheduled
            epoch. None (the default): no pruning.
        init_from: A float (or quantized) checkpoint whose network weights are loaded at the
            start of ``fit``, before the first step: QAT from a trained float network. Not
            loaded when the fit resumes from a checkpoint (``--ckpt_path``). None: the
            network's own initialisation.
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        num_classes: int = 5,
        input_shape: tuple[int, ...] | None = None,
        steps_per_call: PositiveInt = 1,
        compile: bool = False,
        quantization: QuantConfig | None = None,
        init_from: str | None = None,
        pruning: PruneConfig | None = None,
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
        self.save_hyperparameters(ignore=["network", "quantization", "pruning"], logger=False)
        #: The quantization config (None: float); the network below is already quantized.
        self.quantization = None if quantization is None else from_dict(quantization)
        if self.quantization is not None:
            self.hparams["quantization"] = self.quantization.to_dict()  # plain data
            network = quantize_network(network, self.quantization)
        #: The pruning config (None: none); torch's pruning is attached to the network below.
        self.pruning = None if pruning is None else prune_config(pruning)
        if self.pruning is not None:
            self.hparams["pruning"] = self.pruning.to_dict()  # plain data
            attach(network, self.pruning)  # the quantized layers, if any: they compute
        self.init_from = init_from
        self._restored = False
        self.network = network
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.steps_per_call = int(steps_per_call)
        #: Runs the training steps: K per call, the fast path, logging when due.
        self.engine = MultiStepEngine(self.steps_per_call, compile=compile)
        self.automatic_optimization = not self.engine.manual
        #: Called as ``hook(step, loss)`` for every optimizer step, also with steps_per_call > 1
        #: (machlite.callbacks.guards.DivergenceGuard registers here).
        self.step_hooks: list[Callable[[int, Tensor], None]] = []
        self._on_ipu = False
        self.loss_fn = nn.CrossEntropyLoss()
        acc = {"num_classes": num_classes, "average": "micro", "validate_args": False}
        self.train_acc = MulticlassAccuracy(**acc)
        self.val_acc = MulticlassAccuracy(**acc)
        self.test_acc = MulticlassAccuracy(**acc)
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        if self.input_shape is not None:
            self.check_network()

    def forward(self, x: Tensor) -> Tensor:
        """Return the network's output (logits, or probabilities for softmax networks)."""
        return self.network(x)

    # -- steps -------------------------------------------------------------------------------
    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> Tensor | None:
        """One optimizer step (or ``steps_per_call`` of them); returns the loss when automatic."""
        if not self.automatic_optimization:
            self.engine.run(self, batch)
            return None
        x, y = batch
        out = self.network(x)
        loss = self.loss_fn(out, y)
        if not self._on_ipu:  # on IPUs poptorch traces the step: no host work (machlite.ipu)
            self.engine.record(self, out.detach(), loss.detach(), y)
        return loss

    # The evaluation steps only run the network and return its outputs with the labels; the
    # metrics are updated on the host in the batch-end hooks. That keeps the steps traceable
    # (IPU) and the metric state outside compiled code.
    def validation_step(self, batch: Batch, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Return the network's outputs and the labels; metrics are updated at batch end."""
        x, y = batch
        return self.network(x), y

    def test_step(self, batch: Batch, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Return the network's outputs and the labels; metrics are updated at batch end."""
        x, y = batch
        return self.network(x), y

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

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Note whether the steps run on IPUs (traced by poptorch) or eagerly; before a fit,
        check that the datamodule hands over ``steps_per_call`` batches per call."""
        self._on_ipu = on_ipu(self.trainer)
        datamodule = self.trainer.datamodule
        if stage == "fit" and isinstance(datamodule, InMemoryDataModule):
            self.check_steps_per_call(datamodule)

    def check_steps_per_call(self, datamodule: InMemoryDataModule) -> None:
        """Raise one line when the datamodule's training loader would hand over a different
        number of batches per call than this module steps through.

        The CLI links ``data.steps_per_call`` from ``model.steps_per_call``; as a library,
        give both the same value.

        Raises:
            ConfigError: The two differ.
        """
        if datamodule.steps_per_call != self.steps_per_call:
            raise ConfigError(
                f"model.steps_per_call is {self.steps_per_call} but the datamodule's "
                f"steps_per_call is {datamodule.steps_per_call}: give "
                f"{type(datamodule).__name__}(steps_per_call={self.steps_per_call}) the "
                "model's value (the CLI links them)"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Note that the weights come from a checkpoint (``init_from`` is then not loaded)."""
        self._restored = True

    def on_fit_start(self) -> None:
        """Load ``init_from``'s network weights, unless the fit resumes from a checkpoint."""
        if self.init_from and not self._restored and self.trainer.ckpt_path is None:
            self.load_network_weights(self.init_from)

    def on_train_start(self) -> None:
        """Let the engine choose this fit's multi-step path (fast or with every hook)."""
        self.engine.start(self)

    def on_train_epoch_start(self) -> None:
        """Prune to this epoch's scheduled sparsity (``model.pruning``; a no-op once reached)."""
        if self.pruning is not None:
            prune_to(self.network, self.pruning, self.pruning.target_at(self.current_epoch))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """IPU only: record the host call's loss (:func:`machlite.ipu.record_host_call`)."""
        if self._on_ipu:
            record_host_call(self, outputs)

    def on_train_epoch_end(self) -> None:
        """Step the per-epoch schedulers (manual), sync buffers, log the epoch metrics."""
        self.engine.epoch_end(self)
        self._epoch_done("train", self.train_loss, self.train_acc)

    def on_validation_epoch_start(self) -> None:
        """DDP: validate with rank 0's buffers on every rank (machlite.engine.sync_buffers)."""
        sync_buffers(self)

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Update the validation metrics with the step's ``(outputs, labels)``."""
        self._eval_update(outputs, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` and ``val/acc``."""
        self._epoch_done("val", self.val_loss, self.val_acc)

    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Update the test metrics with the step's ``(outputs, labels)``."""
        self._eval_update(outputs, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        """Log ``test/loss`` and ``test/acc`` (the report is ConfusionReport's)."""
        self._epoch_done("test", self.test_loss, self.test_acc)

    # -- helpers -----------------------------------------------------------------------------
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

    def load_network_weights(self, path: str) -> None:
        """Load the network weights of checkpoint ``path`` (float or quantized: same keys;
        pruned or not: :func:`machlite.sparsity.adapt_state_dict`).

        Raises:
            DataError: The file is missing or unreadable.
            ConfigError: Its weights do not fit this network.
        """
        state = load_checkpoint_file(path, "cpu", weights_only=True).get("state_dict", {})
        weights = {k[len("network.") :]: v for k, v in state.items() if k.startswith("network.")}
        weights = adapt_state_dict(self.network, weights)
        try:
            self.network.load_state_dict(weights)
        except RuntimeError as err:
            raise ConfigError(
                f"model.init_from {path}: its weights do not fit {type(self.network).__name__} "
                f"({str(err).splitlines()[0]}): give a checkpoint of the same network"
            ) from err

    def class_names(self) -> list[str]:
        """Names of the classes: the datamodule's ``class_names`` if it has them, else 0..C-1."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == self.num_classes:
            return [str(n) for n in names]
        return [str(k) for k in range(self.num_classes)]

    def _eval_update(
        self, outputs: tuple[Tensor, Tensor], loss_metric: MeanMetric, acc: MulticlassAccuracy
    ) -> None:
        out, y = outputs
        loss_metric.update(self.loss_fn(out, y), weight=len(y))
        acc.update(out, y)

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
            scalars = {name: value.item() for name, value in values.items()}
            write_scalars(self.trainer, scalars, self.global_step)
