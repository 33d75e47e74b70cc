"""Light, batched image augmentation for the in-memory loaders: random translations.

Each training image is shifted by its own random (dy, dx) of at most ``max_shift`` pixels,
the uncovered border filled with the background value. The whole batch is shifted with one
gather on the device that holds it, and the shifts are drawn from a generator seeded by the
loader's seed and the epoch, so runs with the same seed see the same augmented images.
"""

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .loader import BatchGroup, InMemoryLoader

#: Added to the loader's seed for the augmentation generator (keeps it apart from the order).
_SEED_OFFSET = 1_000_003


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator, fill: float) -> Tensor:
    """Shift each image of ``images`` [N, C, H, W] by up to ``max_shift`` pixels each way.

    Args:
        images: A batch of images.
        max_shift: Largest shift in pixels, vertically and horizontally (0: no change).
        generator: CPU generator the shifts are drawn from.
        fill: Value of the pixels uncovered by the shift (the background).

    Returns:
        The shifted batch, same shape, dtype and device.
    """
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    s = max_shift
    padded = F.pad(images, (s, s, s, s), value=fill)
    offsets = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)  # [N, H]
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)  # [N, W]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class RandomShiftLoader:
    """Wrap a training :class:`InMemoryLoader` so every batch it yields is randomly shifted.

    It keeps the wrapped loader's ``sampler`` (Lightning sets the epoch through it),
    ``dataset`` and length, and handles multi-batch items (``batches_per_item`` > 1).

    Args:
        loader: The training loader to wrap.
        max_shift: Largest shift in pixels each way.
        fill: Background value used for the uncovered border.
    """

    def __init__(self, loader: InMemoryLoader, max_shift: int, fill: float) -> None:
        self.loader = loader
        self.max_shift = max_shift
        self.fill = fill
        self.sampler = loader.sampler
        self.batch_sampler = None

    @property
    def dataset(self) -> Any:
        """The un-augmented data as a map-style dataset (see InMemoryLoader.dataset)."""
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        seed = sampler.seed + _SEED_OFFSET + 7_919 * sampler.epoch + 104_729 * sampler.rank
        generator = torch.Generator().manual_seed(seed)

        def shift(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            x, *rest = batch
            return (random_shift(x, self.max_shift, generator, self.fill), *rest)

        for item in self.loader:
            yield BatchGroup(shift(b) for b in item) if isinstance(item, list) else shift(item)
