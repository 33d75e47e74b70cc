"""Classifier: the one LightningModule, training any ``nn.Module`` network on any datamodule."""

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from machlite.errors import ConfigError


class Classifier(pl.LightningModule):
    """Train and evaluate a classification network with CrossEntropyLoss.

    Logged (TensorBoard tags): ``train/loss`` and ``train/acc`` every logged step,
    ``train/loss_epoch`` and ``train/acc_epoch`` per epoch, ``val/loss`` and ``val/acc`` per
    epoch, ``test/loss`` and ``test/acc``, and ``train/lr``. Accuracy is torchmetrics'
    multiclass micro accuracy, one metric object per stage.

    The optimizer and LR scheduler come from the config's ``optimizer:`` and
    ``lr_scheduler:`` blocks (LightningCLI); without them (or as a library) the module
    trains with Adam at learning rate 1e-3.

    Args:
        network: The network to train, e.g. ``machlite.models.JSCWill``. Required.
        num_classes: Number of classes (linked from the datamodule by the CLI).
        input_shape: Shape of one input sample without the batch dimension (linked from the
            datamodule by the CLI); used to check the network fits the data.
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        num_classes: int = 5,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if network is None:
            raise ConfigError(
                "model.network is required, e.g. --model.network machlite.models.JSCTiny"
            )
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {num_classes}")
        self.save_hyperparameters(ignore=["network"], logger=False)
        self.network = network
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.loss_fn = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss_mean = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
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

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        out = self.network(x)
        return self.loss_fn(out, y), out, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimizer step's loss; logs the step's loss, accuracy and learning rate."""
        loss, out, y = self._loss(batch)
        self.train_loss_mean.update(loss.detach(), weight=len(y))
        acc = self.train_acc(out.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc)
        return loss

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        if self.trainer.logger is not None and self._trainer.optimizers:
            self.log("train/lr", self._trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss_mean.compute())
        self.log("train/acc_epoch", self.train_acc.compute())
        self.train_loss_mean.reset()
        self.train_acc.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate validation loss and accuracy; logged per epoch."""
        loss, out, y = self._loss(batch)
        self.val_acc.update(out, y)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(y), prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate test loss and accuracy; logged at the end."""
        loss, out, y = self._loss(batch)
        self.test_acc.update(out, y)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(y))
        self.log("test/acc", self.test_acc, on_epoch=True)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        """Return the predicted ``class`` and the class ``probs`` of each sample."""
        out = self.network(batch[0])
        probs = out if self.outputs_probabilities else out.softmax(dim=1)
        return {"class": probs.argmax(dim=1), "probs": probs}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam at 1e-3: the default when the config gives no ``optimizer`` block."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)
