"""In-memory batching: each batch is one index operation on tensors held in memory.

No per-sample ``__getitem__``, no collation and no worker processes: for networks as small as
the JSC ones, that overhead is most of an epoch (docs/performance.md).
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset


class EpochPermutation:
    """The order of one epoch: a seeded permutation (or 0..n-1), sharded by rank.

    Lightning calls ``set_epoch`` at the start of every training epoch (it looks for a
    ``sampler`` attribute on the loader), so epoch ``e`` always uses ``seed + e``: resumed and
    repeated runs see the same order. With ``world_size`` > 1 (distributed training) rank ``r``
    takes the indices at positions ``r, r + world_size, r + 2 * world_size, ...`` of the
    permutation: the shards are disjoint, their union is the whole split, and nothing is
    repeated or left out. Their sizes differ by at most one.

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
        """Number of indices of this rank's shard."""
        return len(range(self.rank, self.n, self.world_size))

    def indices(self) -> Tensor:
        """Return this rank's indices for the current epoch (int64, on the CPU)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        return order if self.world_size == 1 else order[self.rank :: self.world_size]


class BatchGroup(list):
    """The K batches of one multi-step item: a list of ``(x, y, ...)`` tuples.

    Lightning moves every batch to the training device with ``move_data_to_device``, which
    treats any object with a ``to`` method as one unit. So Lightning calls :meth:`to` once
    per item, instead of walking K batches tensor by tensor (about 1 ms per call for 32
    JSC batches) when, as usual here, the tensors are already on that device.
    """

    def to(self, device: torch.device | str, **kwargs: Any) -> "BatchGroup":
        """Return the group on ``device``: itself when every tensor is already there."""
        device = torch.device(device)
        if all(t.device == device for batch in self for t in batch):
            return self
        return BatchGroup(tuple(t.to(device, **kwargs) for t in batch) for batch in self)


class InMemoryLoader:
    """Iterate over ``(x, y)`` batches drawn from tensors with one index operation each.

    An unshuffled single-process loader yields slices (views, no copy). Every sample of this
    rank's shard is used once per epoch: no padding, nothing dropped. Batches hold
    ``batch_size`` samples except the last, and a last batch too small to train on (one
    sample, which BatchNorm rejects) is merged into the batch before it.

    Distributed (``world_size`` N > 1): the batches are cut as if one process drew global
    batches of N x ``batch_size`` from the epoch's permutation and handed each rank every N-th
    sample of them, so every rank yields the same number of batches (DDP needs equal step
    counts) and each rank's last batch holds at least two samples. The shards of the ranks
    are disjoint and cover the split; their last batches differ in size by at most one. With
    ``batches_per_item`` K > 1, each item is a :class:`BatchGroup` (a list) of K
    consecutive batches of the same order (the last item may hold fewer), for modules that
    take several optimizer steps per call (``Classifier(steps_per_call=K)``).

    Args:
        tensors: Tensors with the same first dimension (e.g. features and labels).
        batch_size: Samples per batch.
        shuffle: Draw each epoch in a new seeded order.
        seed: Base seed of the order (epoch ``e`` uses ``seed + e``).
        rank: This process's rank (distributed training).
        world_size: Number of processes sharing the data; each rank needs at least one
            sample.
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
        if n < world_size:
            raise ValueError(f"{n} samples cannot be shared by {world_size} processes")
        self.tensors = tensors
        self.batch_size = batch_size
        self.batches_per_item = batches_per_item
        self.sampler = EpochPermutation(n, shuffle, seed, rank, world_size)
        self.batch_sampler = None  # Lightning inspects both attributes
        self._items_done = 0
        self._resume: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """The position in the current epoch; Lightning stores it in checkpoints."""
        return {"epoch": self.sampler.epoch, "items_done": self._items_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue a checkpointed epoch: the next pass over that epoch skips the items done.

        A fit resumed from a mid-epoch checkpoint thus sees exactly the batches an
        uninterrupted run would (Lightning does not prefetch from loaders that have a length).
        """
        self._resume = (int(state["epoch"]), int(state["items_done"]))

    @property
    def dataset(self) -> TensorDataset:
        """The same data as an ordinary map-style dataset (for poptorch.DataLoader)."""
        return TensorDataset(*self.tensors)

    def num_batches(self) -> int:
        """Number of batches per epoch (not items, when ``batches_per_item`` > 1).

        The same on every rank: it depends on the split size, ``batch_size`` and
        ``world_size`` only.
        """
        n, world = self.sampler.n, self.sampler.world_size
        global_batch = world * self.batch_size
        batches = -(-n // global_batch)
        last = n - (batches - 1) * global_batch  # samples in the last global batch
        if batches > 1 and last < 2 * world:  # a rank would get a batch of 0 or 1 samples
            batches -= 1
        return batches

    def batch_sizes(self) -> list[int]:
        """This rank's batch sizes for one epoch, in order."""
        count, bs = self.num_batches(), self.batch_size
        return [bs] * (count - 1) + [len(self.sampler) - (count - 1) * bs]

    def __len__(self) -> int:
        return -(-self.num_batches() // self.batches_per_item)

    def batches(self, start: int = 0) -> Iterator[tuple[Tensor, ...]]:
        """Yield this epoch's batches one by one, from batch ``start``."""
        contiguous = not self.sampler.shuffle and self.sampler.world_size == 1
        index = None if contiguous else self.sampler.indices().to(self.tensors[0].device)
        bs, count = self.batch_size, self.num_batches()
        for b in range(start, count):
            lo, hi = b * bs, len(self.sampler) if b == count - 1 else (b + 1) * bs
            if index is None:
                yield tuple(t[lo:hi] for t in self.tensors)
            else:
                sel = index[lo:hi]
                yield tuple(t[sel] for t in self.tensors)

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | BatchGroup]:
        skip, self._resume = self._resume, None
        self._items_done = skip[1] if skip is not None and skip[0] == self.sampler.epoch else 0
        if self.batches_per_item == 1:
            for batch in self.batches(self._items_done):
                self._items_done += 1
                yield batch
            return
        group = BatchGroup()
        for batch in self.batches(self._items_done * self.batches_per_item):
            group.append(batch)
            if len(group) == self.batches_per_item:
                self._items_done += 1
                yield group
                group = BatchGroup()
        if group:
            self._items_done += 1
            yield group
