import pytest
import torch

from machlite.datasets import EpochPermutation, InMemoryLoader
from machlite.datasets.loader import BatchGroup


def test_epoch_permutation_is_seeded_per_epoch() -> None:
    a, b = EpochPermutation(100, True, seed=3), EpochPermutation(100, True, seed=3)
    first = a.indices()
    assert torch.equal(first, b.indices())
    assert sorted(first.tolist()) == list(range(100))
    a.set_epoch(1)
    assert not torch.equal(first, a.indices())
    b.set_epoch(1)
    assert torch.equal(a.indices(), b.indices())


@pytest.mark.parametrize("n", [100, 101, 103])
def test_shards_are_disjoint_and_cover_the_split(n: int) -> None:
    perms = [EpochPermutation(n, True, seed=0, rank=r, world_size=4) for r in range(4)]
    shards = [p.indices() for p in perms]
    assert [len(s) for s in shards] == [len(p) for p in perms]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    union = torch.cat(shards).tolist()
    assert len(union) == n and sorted(union) == list(range(n))  # disjoint, nothing left out


def test_loader_batches_cover_every_sample_once() -> None:
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    loader = InMemoryLoader((x, y), batch_size=4, shuffle=True, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)


def test_unshuffled_loader_keeps_order_and_merges_a_single_last_sample() -> None:
    x, y = torch.zeros(9, 2), torch.arange(9)
    loader = InMemoryLoader((x, y), 4)
    batches = list(loader)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert len(loader) == 2 and [len(b[1]) for b in batches] == [4, 5] == loader.batch_sizes()
    assert batches[1][1].data_ptr() == y[4:].data_ptr()  # slices, not copies


def _rank_loaders(n: int, bs: int, world: int, **kw: object) -> list[InMemoryLoader]:
    x, y = torch.arange(n).float().unsqueeze(1), torch.arange(n)
    return [InMemoryLoader((x, y), bs, rank=r, world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_loaders_cover_the_split_once_in_equal_step_counts(shuffle: bool, world: int) -> None:
    """Every (n, batch size) case: same number of batches on every rank (DDP needs it), no
    batch of a single sample, and together the ranks see every sample exactly once."""
    for n in range(2 * world, 70):
        for bs in (2, 3, 4, 7, 16, 100):
            loaders = _rank_loaders(n, bs, world, shuffle=shuffle, seed=5)
            for epoch in (0, 1):
                seen = []
                for loader in loaders:
                    loader.sampler.set_epoch(epoch)
                    sizes = [len(b[1]) for b in loader]
                    assert sizes == loader.batch_sizes() and min(sizes) >= 2, (n, bs, world)
                    assert len(loader) == len(loaders[0]), (n, bs, world)
                    seen += [int(v) for b in loader for v in b[1]]
                assert sorted(seen) == list(range(n)), (n, bs, world, epoch)


def test_rank_loaders_group_batches_per_item_alike() -> None:
    loaders = _rank_loaders(1001, 16, 2, shuffle=True, batches_per_item=10)
    items = [list(loader) for loader in loaders]
    assert len(items[0]) == len(items[1]) == len(loaders[0]) == 4  # 32 batches per rank
    assert [len(i) for i in items[0]] == [len(i) for i in items[1]] == [10, 10, 10, 2]
    seen = [int(v) for rank in items for item in rank for batch in item for v in batch[1]]
    assert sorted(seen) == list(range(1001))


def test_too_few_samples_for_the_ranks_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 samples cannot be shared by 4 processes"):
        _rank_loaders(3, 2, 4)


def test_multi_batch_items_move_to_a_device_only_when_needed() -> None:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    loader = InMemoryLoader((torch.randn(10, 3), torch.arange(10)), 4, batches_per_item=2)
    item = next(iter(loader))
    assert isinstance(item, BatchGroup) and len(item) == 2
    # Lightning moves a batch with move_data_to_device: already there, nothing is rebuilt
    assert move_data_to_device(item, torch.device("cpu")) is item
    moved = move_data_to_device(item, torch.device("meta"))
    assert isinstance(moved, BatchGroup)
    assert [t.device.type for batch in moved for t in batch] == ["meta"] * 4
    assert [tuple(t.shape) for t in moved[0]] == [(4, 3), (4,)]
