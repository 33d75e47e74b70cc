"""Plain ``nn.Module`` networks: ``from machlite.models import JSCWill``."""

from torch import nn

from .jsc import JSCTiny, JSCToy, JSCWill
from .mnist import MNISTNet
from .mnist_mlp import MNISTMLP

#: Every network machlite ships, by class name (what ``machlite models`` lists).
NETWORKS: dict[str, type[nn.Module]] = {
    "JSCTiny": JSCTiny,
    "JSCToy": JSCToy,
    "JSCWill": JSCWill,
    "MNISTNet": MNISTNet,
    "MNISTMLP": MNISTMLP,
}


def count_parameters(network: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``network`` (all, or only the trainable ones)."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)


__all__ = ["JSCTiny", "JSCToy", "JSCWill", "MNISTNet", "MNISTMLP", "NETWORKS", "count_parameters"]
