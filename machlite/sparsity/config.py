"""The pruning config: how many weights are zero, which layers, and the schedule over epochs.

A config is a machlite config's ``model.pruning`` block, or a YAML file of its own
(``--model.pruning configs/prune/jsc_toy_50.yaml``)::

    sparsity: 0.5        # target fraction of zero weights, in [0, 1)
    scope: global        # global: one magnitude ranking over all pruned layers; layer: each
    layers: [linear]     # by_type keys (linear, conv2d) or module names; null: every one
    start_epoch: 0       # the sparsity ramps (Zhu & Gupta's cubic) from 0 at start_epoch
    end_epoch: 0         # to the target at end_epoch; both equal: pruned once, at start_epoch

docs/pruning.md explains each field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

from machlite.config_files import read_model_block
from machlite.errors import ConfigError

#: The layer types that are pruned: the multiply-accumulate ``by_type`` keys of
#: :data:`machlite.quant.LAYERS` (their weights are what BOPs count).
PRUNABLE = ("linear", "conv2d")
#: The keys of a pruning block.
KEYS = ("sparsity", "scope", "layers", "start_epoch", "end_epoch")


@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning of the network's weights to a target sparsity.

    Args:
        sparsity: Target fraction of zero weights over the pruned layers, in [0, 1).
        scope: ``global``: one ranking of the weights' magnitudes over all pruned layers
            (layers end with different sparsities); ``layer``: each layer to the target.
        layers: The pruned layers: ``by_type`` keys (``linear``, ``conv2d``) or module names
            (``seq_blocks.2``); None: every Linear and Conv2d.
        start_epoch: The first epoch of the schedule (its sparsity is 0 before it).
        end_epoch: The epoch at whose start the target is reached; equal to ``start_epoch``:
            pruned once, at the start of ``start_epoch``.
    """

    sparsity: float
    scope: Literal["global", "layer"] = "global"
    layers: list[str] | None = None
    start_epoch: int = 0
    end_epoch: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float):
            raise ConfigError(f"model.pruning.sparsity must be a number, got {self.sparsity!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"model.pruning.sparsity must be in [0, 1) (the fraction of zero weights), "
                f"got {self.sparsity}"
            )
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"model.pruning.scope must be global or layer, got {self.scope!r}")
        if self.layers is not None and (
            isinstance(self.layers, str) or not all(isinstance(k, str) for k in self.layers)
        ):
            raise ConfigError(
                f"model.pruning.layers must be a list of layer types or names, got {self.layers!r}"
            )
        if self.layers is not None and not self.layers:
            raise ConfigError(
                "model.pruning.layers is empty: the block names no layer; give by_type keys "
                f"({', '.join(PRUNABLE)}) or module names, or leave it out (every one)"
            )
        if not 0 <= self.start_epoch <= self.end_epoch:
            raise ConfigError(
                f"model.pruning: need 0 <= start_epoch <= end_epoch, got start_epoch "
                f"{self.start_epoch}, end_epoch {self.end_epoch}"
            )

    def target_at(self, epoch: int) -> float:
        """The sparsity of epoch ``epoch`` (reached at its start).

        Zhu & Gupta's cubic ramp ("To prune, or not to prune", 2017):
        ``s * (1 - (1 - t)^3)``, ``t = (epoch - start_epoch) / (end_epoch - start_epoch)``
        clamped to [0, 1]: 0 before ``start_epoch``, the target from ``end_epoch`` on.
        """
        if epoch < self.start_epoch:
            return 0.0
        if epoch >= self.end_epoch:
            return float(self.sparsity)
        t = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        return float(self.sparsity) * (1.0 - (1.0 - t) ** 3)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what checkpoints store and :func:`prune_config` reads)."""
        data = asdict(self)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data


def prune_config(data: Any) -> PruneConfig:
    """Build a :class:`PruneConfig` from plain data (a parsed YAML block, a checkpoint's).

    Raises:
        ConfigError: Not a mapping, an unknown key, or a bad value.
    """
    if isinstance(data, PruneConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"model.pruning: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"model.pruning: unknown key {unknown[0]!r}: use {', '.join(KEYS)}")
    if "sparsity" not in data:
        raise ConfigError("model.pruning: sparsity is required (the fraction of zero weights)")
    return PruneConfig(**data)


def load_prune_config(path: str | os.PathLike) -> PruneConfig:
    """Read a pruning YAML file: the block itself, or a machlite config holding it.

    Raises:
        ConfigError: The file is missing, not YAML, or not a valid pruning block.
    """
    data = read_model_block(path, "pruning", "pruning")
    try:
        return prune_config(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
