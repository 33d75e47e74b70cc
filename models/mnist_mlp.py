"""A small fully connected MNIST network, in the FINN/Brevitas TFC family, sized for RTL.

FINN's TFC is 784-64-64-64-10 on the full image. Fully unrolled in Verilog (machlite export
--format verilog), its first layer alone is 50k constant multiplications; ``MNISTMLP`` takes
the image reduced by the datamodule instead (``data.pool: 2``, 2x2 average pooling: 14x14 =
196 inputs), and by default has two hidden layers of 32 (docs/mnist.md, docs/hardware.md).
"""

from collections.abc import Sequence

from torch import Tensor, nn


class MNISTMLP(nn.Module):
    """Flatten, then (Linear, BatchNorm1d, ReLU[, Dropout]) per hidden layer, then Linear.

    With the defaults: Flatten, Linear(196,32), BatchNorm1d(32), ReLU, Linear(32,32),
    BatchNorm1d(32), ReLU, Linear(32,10) (7,818 parameters). Every layer is one the Verilog
    flow implements, so a quantized MNISTMLP has an exact fully unrolled design.

    Args:
        in_features: Pixels per image after the datamodule's reduction (196 for 14x14,
            ``data.pool: 2``; 784 for the full 28x28 image, 49 for 7x7).
        hidden: Widths of the hidden layers, in order (FINN's TFC: 64, 64, 64).
        num_classes: Number of output classes (10 for MNIST).
        dropout: Dropout probability after each hidden ReLU (0: no Dropout layers).
    """

    def __init__(
        self,
        in_features: int = 196,
        hidden: Sequence[int] = (32, 32),
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError(
                f"in_features must be >= 1 and num_classes >= 2, got {in_features} and "
                f"{num_classes}"
            )
        if any(width < 1 for width in hidden):
            raise ValueError(f"every hidden width must be >= 1, got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for out in hidden:
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits for images [N, 1, H, W] (or vectors [N, in_features])."""
        return self.layers(x)
