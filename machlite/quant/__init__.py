"""Fixed-point quantization: the config, fake-quantized layers, the transform and the cost.

``machlite quantize`` (post-training quantization of a float checkpoint) is
:func:`machlite.quant.ptq.main`; quantization-aware training is ``model.quantization`` in a
``machlite fit`` config (:class:`machlite.module.Classifier`). docs/quantization.md.
"""

from machlite.quant.config import (
    LAYER_TYPES,
    FixedPoint,
    LayerQuant,
    QuantConfig,
    from_dict,
    load_quant_config,
)
from machlite.quant.cost import LayerCost, network_cost
from machlite.quant.layers import fake_quant
from machlite.quant.transform import quantize_network, quantized_layers

__all__ = [
    "LAYER_TYPES",
    "FixedPoint",
    "LayerCost",
    "LayerQuant",
    "QuantConfig",
    "fake_quant",
    "from_dict",
    "load_quant_config",
    "network_cost",
    "quantize_network",
    "quantized_layers",
]
