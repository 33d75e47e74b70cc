import torch

from machlite.datasets import EpochPermutation, InMemoryLoader


def test_epoch_permutation_is_seeded_per_epoch() -> None:
    a, b = EpochPermutation(100, True, seed=3), EpochPermutation(100, True, seed=3)
    first = a.indices()
    assert torch.equal(first, b.indices())
    assert sorted(first.tolist()) == list(range(100))
    a.set_epoch(1)
    assert not torch.equal(first, a.indices())
    b.set_epoch(1)
    assert torch.equal(a.indices(), b.indices())


def test_shards_are_disjoint_and_cover_the_split() -> None:
    shards = [EpochPermutation(100, True, seed=0, rank=r, world_size=4).indices() for r in range(4)]
    assert all(len(s) == 25 for s in shards)
    union = torch.cat(shards)
    assert len(set(union.tolist())) == 100


def test_loader_batches_cover_every_sample_once() -> None:
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    loader = InMemoryLoader((x, y), batch_size=4, shuffle=True, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)


def test_unshuffled_loader_keeps_order_and_drops_single_only_when_asked() -> None:
    x, y = torch.zeros(9, 2), torch.arange(9)
    assert torch.equal(torch.cat([b[1] for b in InMemoryLoader((x, y), 4)]), y)
    assert len(InMemoryLoader((x, y), 4, drop_single=True)) == 2
    assert len(InMemoryLoader((x, y), 4)) == 3
