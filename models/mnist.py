"""The small MNIST CNN from Graphcore's PopTorch MNIST tutorial ("Network")."""

from torch import Tensor, nn


class _Block(nn.Module):
    """Conv2d, MaxPool2d(2, 2), ReLU: the tutorial's ``Block``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.pool(self.conv(x)))


class MNISTNet(nn.Module):
    """The tutorial's CNN for 1x28x28 images (225,034 parameters).

    Two conv blocks (32 and 64 channels), Linear(1600, 128), ReLU, Dropout(0.5),
    Linear(128, num_classes).

    Args:
        num_classes: Number of output classes (10 for MNIST).
        softmax_output: End with Softmax(dim=1) as the tutorial does. The tutorial then
            applies CrossEntropyLoss to these probabilities (softmax twice); keep this only
            for a faithful reproduction. The default returns logits.
        dropout: Dropout probability after the first Linear layer (0.5 in the tutorial).
    """

    def __init__(
        self, num_classes: int = 10, softmax_output: bool = False, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.softmax_output = softmax_output
        self.layer1 = _Block(1, 32, 3)
        self.layer2 = _Block(32, 64, 3)
        self.layer3 = nn.Linear(1600, 128)
        self.layer3_act = nn.ReLU()
        self.layer3_dropout = nn.Dropout(dropout)
        self.layer4 = nn.Linear(128, num_classes)
        self.softmax = nn.Softmax(dim=1) if softmax_output else nn.Identity()

    @property
    def outputs_probabilities(self) -> bool:
        """True when forward returns class probabilities rather than logits."""
        return self.softmax_output

    def forward(self, x: Tensor) -> Tensor:
        """Return logits (or probabilities with ``softmax_output``) for [N, 1, 28, 28] input."""
        x = self.layer2(self.layer1(x))
        x = x.flatten(1)  # positional: hls4ml's PyTorch frontend reads no keywords here
        x = self.layer3_dropout(self.layer3_act(self.layer3(x)))
        return self.softmax(self.layer4(x))
