"""The IPU data path: an ordinary DataLoader over the in-memory split, in the same order.

Lightning 2.0.9's IPUStrategy rebuilds every torch DataLoader as a ``poptorch.DataLoader``
(which batches ``batch_size x device_iterations x accumulation x replicas`` samples per host
call and drops an incomplete last one). It needs a map-style dataset and a sampler, so the IPU
path serves the split as a TensorDataset with a sampler that draws the same seeded per-epoch
permutation as :class:`InMemoryLoader`: an IPU run sees the batches a CPU run sees.
"""

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from .loader import EpochPermutation


class PermutationSampler(Sampler[int]):
    """Yield the indices of an :class:`EpochPermutation`; Lightning sets the epoch.

    Args:
        permutation: The per-epoch order to draw from.
    """

    def __init__(self, permutation: EpochPermutation) -> None:
        self.permutation = permutation

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.permutation.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.permutation)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation.indices().tolist())


def ipu_loader(
    tensors: tuple[Tensor, ...], batch_size: int, shuffle: bool, seed: int
) -> DataLoader:
    """A DataLoader over ``tensors`` (on the CPU) in InMemoryLoader's order, for poptorch.

    Args:
        tensors: Features and labels of one split.
        batch_size: Samples per micro-batch.
        shuffle: Draw each epoch in a new seeded order (training).
        seed: Base seed of the order (epoch ``e`` uses ``seed + e``).
    """
    cpu = tuple(t.cpu() for t in tensors)
    sampler = PermutationSampler(EpochPermutation(len(cpu[0]), shuffle, seed))
    # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG
    # at every epoch, which would shift the dropout masks against a CPU run's.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*cpu), batch_size=batch_size, sampler=sampler, generator=generator
    )
