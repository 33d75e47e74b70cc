"""The JSC networks (jet substructure classification, 16 features, 5 classes).

Layer for layer as in machop (MASE) and the lab report. They end in ReLU on the logits, like
the originals: a faithful reproduction keeps it (see docs/networks.md).
"""

from torch import Tensor, nn


def _check_sizes(in_features: int, num_classes: int) -> None:
    if in_features < 1 or num_classes < 2:
        raise ValueError(
            f"in_features must be >= 1 and num_classes >= 2, got {in_features} and {num_classes}"
        )


def scaled(features: int, width: float) -> int:
    """A hidden layer's size under the width multiplier: ``round(features * width)``, at
    least 1 (``width`` 1: the original size).

    Raises:
        ValueError: ``width`` is not a positive number.
    """
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ValueError(f"width (the width multiplier) must be a number above 0, got {width!r}")
    return max(1, round(features * width))


class JSCTiny(nn.Module):
    """JSC-Tiny: BatchNorm1d, ReLU, Linear(16, 5), ReLU (117 parameters).

    Args:
        in_features: Number of input features (16 for JSC).
        num_classes: Number of output classes (5 for JSC).
    """

    def __init__(self, in_features: int = 16, num_classes: int = 5) -> None:
        super().__init__()
        _check_sizes(in_features, num_classes)
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(in_features),
            nn.ReLU(),
            nn.Linear(in_features, num_classes),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the (ReLU-ed) logits for a batch of shape [N, in_features]."""
        return self.seq_blocks(x)


class JSCToy(nn.Module):
    """JSC-Toy: three Linear layers of width 8 with BatchNorm and ReLU (327 parameters).

    Args:
        in_features: Number of input features (16 for JSC).
        num_classes: Number of output classes (5 for JSC).
        width: Width multiplier of the two hidden layers: ``round(8 * width)`` features
            each (default 1: the original network; 2: 16 features, 0.5: 4).
    """

    def __init__(self, in_features: int = 16, num_classes: int = 5, width: float = 1.0) -> None:
        super().__init__()
        _check_sizes(in_features, num_classes)
        hidden = scaled(8, width)
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(in_features),
            nn.ReLU(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
            nn.BatchNorm1d(num_classes),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the (ReLU-ed) logits for a batch of shape [N, in_features]."""
        return self.seq_blocks(x)


class JSCWill(nn.Module):
    """JSC-Will, the lab report's "10x JSC-Toy" network (3,231 parameters).

    Widths 32, 48, 16 with BatchNorm, ReLU and one Dropout(0.5).

    Args:
        in_features: Number of input features (16 for JSC).
        num_classes: Number of output classes (5 for JSC).
        dropout: Dropout probability before the third Linear layer (0.5 in the original).
        width: Width multiplier of the three hidden layers: ``round(n * width)`` features
            for n in 32, 48, 16 (default 1: the original network).
    """

    def __init__(
        self, in_features: int = 16, num_classes: int = 5, dropout: float = 0.5, width: float = 1.0
    ) -> None:
        super().__init__()
        _check_sizes(in_features, num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        h1, h2, h3 = (scaled(n, width) for n in (32, 48, 16))
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(in_features),
            nn.ReLU(),
            nn.Linear(in_features, h1),
            nn.BatchNorm1d(h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.BatchNorm1d(h2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h2, h3),
            nn.BatchNorm1d(h3),
            nn.ReLU(),
            nn.Linear(h3, num_classes),
            nn.BatchNorm1d(num_classes),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the (ReLU-ed) logits for a batch of shape [N, in_features]."""
        return self.seq_blocks(x)
