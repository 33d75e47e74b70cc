"""The transform: a network's supported layers replaced by their fake-quantized classes."""

from __future__ import annotations

import copy

from torch import nn

from machlite.quant.config import LayerQuant, QuantConfig, from_dict
from machlite.quant.layers import QUANT_CLASSES


def quantized_layers(network: nn.Module, config: QuantConfig) -> dict[str, LayerQuant]:
    """The modules of ``network`` that ``config`` quantizes, by name, with their formats."""
    config = from_dict(config)
    found = {}
    for name, module in network.named_modules():
        spec = config.for_layer(name, module)
        if spec is not None:
            found[name] = spec
    return found


def quantize_network(network: nn.Module, config: QuantConfig | dict) -> nn.Module:
    """A copy of ``network`` whose layers ``config`` names are fake-quantized.

    Each quantized layer is the ``Quant*`` subclass of its type (:mod:`machlite.quant.layers`)
    with the same parameters and buffers, so the copy's ``state_dict`` has the original's
    keys. ``network`` itself is left untouched. Layers already quantized are re-quantized
    with the new formats.

    Raises:
        ConfigError: ``config`` names a module ``by_name`` that the network does not have.
    """
    from machlite.errors import ConfigError

    config = from_dict(config)
    names = dict(network.named_modules())
    missing = sorted(set(config.by_name) - set(names))
    if missing:
        raise ConfigError(
            f"quantization by_name: the network {type(network).__name__} has no module "
            f"{missing[0]!r}; its modules: {', '.join(n for n in names if n)}"
        )
    out = copy.deepcopy(network)
    bases = {quant: base for base, quant in QUANT_CLASSES.items()}
    for module in out.modules():  # formats from an earlier transform are replaced
        if type(module) in bases:
            module.__class__ = bases[type(module)]
            del module.quant
    for name, spec in quantized_layers(out, config).items():
        module = out.get_submodule(name)
        module.__class__ = QUANT_CLASSES[type(module)]
        module.quant = spec
    return out
