"""Pruning a network with torch's own utilities (``torch.nn.utils.prune``), and reading it back.

A pruned layer is what torch's pruning makes of it: its weight parameter becomes
``weight_orig``, a ``weight_mask`` buffer holds 0 where a weight is pruned, and a forward
pre-hook sets ``module.weight = weight_orig * weight_mask`` before each forward. Two
consequences handled here:

- The ``state_dict`` keys are ``weight_orig`` and ``weight_mask``. :func:`attach` gives a
  network those keys (all-ones masks) before any checkpoint is loaded, so a pruned
  checkpoint loads and resumes; :func:`adapt_state_dict` moves weights between a plain and
  a pruned network (``model.init_from``).
- ``module.weight`` is only recomputed by a forward. :func:`attach` registers a
  ``load_state_dict`` post-hook that recomputes it after a load (:func:`refresh`), and the
  accessors read ``weight_orig * weight_mask`` rather than ``module.weight``.

:func:`make_permanent` is a copy with torch's ``prune.remove`` applied: plain layers whose
weights hold the zeros, as the exports and the hardware flow trace them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from machlite.errors import ConfigError
from machlite.sparsity.config import PRUNABLE, PruneConfig

#: The torch classes of the :data:`~machlite.sparsity.config.PRUNABLE` types (their
#: quantized subclasses included).
_CLASSES = {"linear": nn.Linear, "conv2d": nn.Conv2d}


def _kind(module: nn.Module) -> str | None:
    for key, cls in _CLASSES.items():
        if isinstance(module, cls):
            return key
    return None


def is_pruned(module: nn.Module) -> bool:
    """Whether torch's pruning is attached to ``module``'s weight."""
    return isinstance(getattr(module, "weight_mask", None), Tensor) and hasattr(
        module, "weight_orig"
    )


def weight_of(module: nn.Module) -> Tensor:
    """The weight ``module`` computes with: ``weight_orig * weight_mask`` when pruned."""
    if is_pruned(module):
        return module.weight_orig * module.weight_mask
    return module.weight


def prunable_layers(network: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """The layers ``config`` prunes, by module name.

    Raises:
        ConfigError: ``layers`` names a type or module the network lacks, or a module that
            is not a Linear or Conv2d, or the block selects no layer at all.
    """
    modules = dict(network.named_modules())
    wanted = None if config.layers is None else set(config.layers)
    for key in sorted(wanted or ()):
        if key in PRUNABLE:
            continue
        if key not in modules:
            raise ConfigError(
                f"model.pruning.layers: {key!r} is neither a layer type ({', '.join(PRUNABLE)}) "
                f"nor a module of {type(network).__name__}; its modules: "
                f"{', '.join(n for n in modules if n)}"
            )
        if _kind(modules[key]) is None:
            raise ConfigError(
                f"model.pruning.layers: {key!r} is a {type(modules[key]).__name__}; only "
                "Linear and Conv2d weights are pruned"
            )
    found = {
        name: module
        for name, module in modules.items()
        if (kind := _kind(module)) is not None
        and (wanted is None or kind in wanted or name in wanted)
    }
    if not found:
        raise ConfigError(
            f"model.pruning names no layer of {type(network).__name__} "
            f"(layers: {config.layers}): it has no Linear or Conv2d of those"
        )
    return found


def refresh(module: nn.Module, *_: Any) -> None:
    """Recompute ``module.weight`` from ``weight_orig`` and ``weight_mask`` (as the hook does).

    Registered as a ``load_state_dict`` post-hook by :func:`attach`, so after a checkpoint
    is loaded ``module.weight`` is the loaded masked weight, not a stale one.
    """
    for sub in module.modules():
        if is_pruned(sub):
            with torch.no_grad():
                sub.weight = sub.weight_orig * sub.weight_mask


def attach(network: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """Attach torch's pruning (all-ones masks) to the layers ``config`` prunes, in place.

    The network gets its pruned ``state_dict`` keys (``weight_orig``, ``weight_mask``) and
    computes as before; :func:`prune_to` then zeroes weights. Layers already pruned keep
    their masks.

    Returns:
        The pruned layers, by name.
    """
    layers = prunable_layers(network, config)
    for module in layers.values():
        if not is_pruned(module):
            prune.identity(module, "weight")
            module.register_load_state_dict_post_hook(refresh)
    return layers


def _zeros(module: nn.Module) -> int:
    return int((module.weight_mask == 0).sum())


def prune_to(network: nn.Module, config: PruneConfig, sparsity: float) -> None:
    """Zero the smallest-magnitude weights until ``sparsity`` of them are zero (in place).

    torch's ``l1_unstructured`` (``scope: layer``) or ``global_unstructured`` with
    ``L1Unstructured`` (``scope: global``) prune, by count, the weights still unpruned; a
    weight once pruned stays pruned. Pruning to a sparsity already reached changes nothing,
    so a resumed fit may prune again at its epoch's start. Magnitudes are those of
    ``weight_orig`` (the current weights, not ``module.weight`` from the last forward).
    """
    layers = attach(network, config)
    if config.scope == "layer":
        for module in layers.values():
            extra = round(sparsity * module.weight_mask.numel()) - _zeros(module)
            if extra > 0:
                # the scores: weight_orig, not module.weight (set by the last forward,
                # before the last optimizer step)
                scores = module.weight_orig.detach()
                prune.l1_unstructured(module, "weight", amount=extra, importance_scores=scores)
        return
    total = sum(module.weight_mask.numel() for module in layers.values())
    extra = round(sparsity * total) - sum(_zeros(module) for module in layers.values())
    if extra > 0:
        params = [(module, "weight") for module in layers.values()]
        scores = {(module, "weight"): module.weight_orig.detach() for module in layers.values()}
        prune.global_unstructured(
            params, pruning_method=prune.L1Unstructured, amount=extra, importance_scores=scores
        )


def layer_sparsity(network: nn.Module) -> dict[str, float]:
    """The fraction of zero weights of each Linear and Conv2d of ``network``, by name."""
    out = {}
    for name, module in network.named_modules():
        if _kind(module) is not None:
            weight = weight_of(module)
            out[name] = float((weight == 0).sum()) / weight.numel()
    return out


def sparsity_of(network: nn.Module) -> float:
    """The fraction of zero weights over all Linear and Conv2d weights of ``network``."""
    zeros = total = 0
    for module in network.modules():
        if _kind(module) is not None:
            weight = weight_of(module)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0


def make_permanent(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with its pruning made permanent (torch's ``prune.remove``).

    Each pruned layer's ``weight`` is a parameter again, holding ``weight_orig *
    weight_mask``: the zeros are exact and the copy has no hooks, masks or ``weight_orig``
    (plain ``state_dict`` keys), as the exports and the hardware flow trace it. ``network``
    itself keeps its masks. A network without pruning gives an equal copy.
    """
    refresh(network)  # a weight from a forward with autograd is not a leaf: no deepcopy
    out = copy.deepcopy(network)
    for module in out.modules():
        if is_pruned(module):
            prune.remove(module, "weight")
            hooks = module._load_state_dict_post_hooks
            for key in [k for k, hook in hooks.items() if hook is refresh]:
                del hooks[key]
    return out


def adapt_state_dict(network: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` (a network's ``state_dict``) with its weight keys as ``network`` has them.

    A plain layer's ``weight`` loads into a pruned one as ``weight_orig`` with an all-ones
    mask; a pruned layer's ``weight_orig`` and ``weight_mask`` load into a plain one as their
    product. Everything else is left as it is.
    """
    out = dict(state)
    for name, module in network.named_modules():
        prefix = f"{name}." if name else ""
        plain, orig, mask = (f"{prefix}weight{s}" for s in ("", "_orig", "_mask"))
        if is_pruned(module) and plain in out and orig not in out:
            out[orig] = out.pop(plain)
            out[mask] = torch.ones_like(out[orig])
        elif not is_pruned(module) and orig in out and mask in out and plain not in out:
            out[plain] = out.pop(orig) * out.pop(mask)
    return out
