"""The transform: a network's supported layers made fake-quantized, and made float again."""

from __future__ import annotations

import copy

from torch import nn

from machlite.quant.config import QuantConfig, from_dict
from machlite.quant.formats import LayerQuant
from machlite.quant.layers import layer_type


def quantized_layers(network: nn.Module, config: QuantConfig) -> dict[str, LayerQuant]:
    """The modules of ``network`` that ``config`` quantizes, by name, with their formats."""
    config = from_dict(config)
    found = {}
    for name, module in network.named_modules():
        spec = config.for_layer(name, module)
        if spec is not None:
            found[name] = spec
    return found


def _to_float(network: nn.Module) -> nn.Module:
    """Turn the quantized layers of ``network`` back into torch's own classes, in place."""
    for module in network.modules():
        kind = layer_type(module)
        if kind is not None and type(module) is kind.quant_class:
            module.__class__ = kind.torch_class
            if hasattr(module, "quant"):
                del module.quant
    return network


def dequantize(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with torch's own layers in place of the quantized ones.

    The copy computes in float and has the same parameters, buffers and ``state_dict`` keys;
    ``network`` itself is left untouched. A float network gives an equal copy.

    Args:
        network: A network, quantized or not.

    Returns:
        The float copy.
    """
    return _to_float(copy.deepcopy(network))


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
    out = dequantize(network)  # formats from an earlier transform are replaced
    for name, spec in quantized_layers(out, config).items():
        module = out.get_submodule(name)
        module.__class__ = layer_type(module).quant_class
        module.quant = spec
    return out
