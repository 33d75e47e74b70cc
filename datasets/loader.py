"""In-memory batching: each batch is one index operation on tensors held in memory.

No per-sample ``__getitem__``, no collation and no worker processes: for networks as small as
the JSC ones, that overhead is most of an epoch (docs/performance.md).
"""

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import TensorDataset


class EpochPermutation:
    """The order of one epoch: a seeded permutation (or 0..n-1), sharded by rank.

    Lightning calls ``set_epoch`` at the start of every training epoch (it looks for a
    ``sampler`` attribute on the loader), so epoch ``e`` always uses ``seed + e``: resumed and
    repeated runs see the same order. With ``world_size`` > 1 each rank takes every
    ``world_size``-th index of the permutation, after padding it (by wrapping around) to a
    multiple of ``world_size``: the shards are disjoint up to that padding and their union is
    the whole split.

    Args:
        n: Number of samples.
        shuffle: Permute (True) or keep the order (False).
        seed: Base seed of the permutation.
        rank: This process's rank.
        world_size: Number of processes sharing the split.
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, {world_size=}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def indices(self) -> Tensor:
        """Return this rank's indices for the current epoch (int64, on the CPU)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.world_size == 1:
            return order
        padded = len(self) * self.world_size
        if padded > self.n:
            order = torch.cat([order, order[: padded - self.n]])
        return order[self.rank :: self.world_size]


class InMemoryLoader:
    """Iterate over ``(x, y)`` batches drawn from tensors with one index operation each.

    An unshuffled single-process loader yields slices (views, no copy). A trailing training
    batch of one sample is dropped, since BatchNorm cannot train on it. With
    ``batches_per_item`` K > 1, each item is a list of K consecutive batches of the same
    order (the last item may hold fewer), for modules that take several optimizer steps per
    call (``Classifier(steps_per_call=K)``).

    Args:
        tensors: Tensors with the same first dimension (e.g. features and labels).
        batch_size: Samples per batch.
        shuffle: Draw each epoch in a new seeded order.
        seed: Base seed of the order (epoch ``e`` uses ``seed + e``).
        rank: This process's rank (distributed training).
        world_size: Number of processes sharing the data.
        drop_single: Drop a final batch holding a single sample.
        batches_per_item: Batches handed over per item (K); 1 yields plain batches.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_single: bool = False,
        batches_per_item: int = 1,
    ) -> None:
        if batch_size < 1 or batches_per_item < 1:
            raise ValueError(
                f"batch_size and batches_per_item must be >= 1, got {batch_size}, "
                f"{batches_per_item}"
            )
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("all tensors must have the same length")
        self.tensors = tensors
        self.batch_size = batch_size
        self.drop_single = drop_single
        self.batches_per_item = batches_per_item
        self.sampler = EpochPermutation(n, shuffle, seed, rank, world_size)
        self.batch_sampler = None  # Lightning inspects both attributes

    @property
    def dataset(self) -> TensorDataset:
        """The same data as an ordinary map-style dataset (for poptorch.DataLoader)."""
        return TensorDataset(*self.tensors)

    def _num_samples(self) -> int:
        return len(self.sampler)

    def num_batches(self) -> int:
        """Number of batches per epoch (not items, when ``batches_per_item`` > 1)."""
        n = self._num_samples()
        batches = -(-n // self.batch_size)
        if self.drop_single and batches > 1 and n % self.batch_size == 1:
            batches -= 1
        return batches

    def __len__(self) -> int:
        return -(-self.num_batches() // self.batches_per_item)

    def batches(self) -> Iterator[tuple[Tensor, ...]]:
        """Yield this epoch's batches one by one."""
        contiguous = not self.sampler.shuffle and self.sampler.world_size == 1
        index = None if contiguous else self.sampler.indices().to(self.tensors[0].device)
        bs = self.batch_size
        for b in range(self.num_batches()):
            if index is None:
                yield tuple(t[b * bs : (b + 1) * bs] for t in self.tensors)
            else:
                sel = index[b * bs : (b + 1) * bs]
                yield tuple(t[sel] for t in self.tensors)

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | list[tuple[Tensor, ...]]]:
        if self.batches_per_item == 1:
            yield from self.batches()
            return
        group: list[tuple[Tensor, ...]] = []
        for batch in self.batches():
            group.append(batch)
            if len(group) == self.batches_per_item:
                yield group
                group = []
        if group:
            yield group
