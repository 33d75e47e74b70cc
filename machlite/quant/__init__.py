"""Fixed-point quantization: the config, fake-quantized layers, the transform and the cost.

The quantized network, read and written through one API:

- :data:`LAYERS`: the one table of supported layer types (``by_type`` key, torch class,
  ``Quant*`` class); :func:`layer_type` finds a module's row.
- :func:`quantize_network`: a copy with the configured layers quantized;
  :func:`dequantize`: a copy with torch's own layers back (same ``state_dict`` keys).
- :func:`is_quantized`: whether a module is a quantized layer; :func:`layer_formats`: the
  formats of each quantized layer of a network, by name.

``machlite quantize`` (post-training quantization of a float checkpoint) is
:func:`machlite.quantize.main`; quantization-aware training is ``model.quantization`` in a
``machlite fit`` config (:class:`machlite.module.Classifier`). docs/quantization.md.
"""

from machlite.quant.config import QuantConfig, from_dict, load_quant_config
from machlite.quant.cost import LayerCost, network_cost
from machlite.quant.formats import FixedPoint, LayerQuant
from machlite.quant.layers import (
    LAYER_TYPES,
    LAYERS,
    LayerType,
    fake_quant,
    is_quantized,
    layer_formats,
    layer_type,
)
from machlite.quant.transform import dequantize, quantize_network, quantized_layers

__all__ = [
    "LAYERS",
    "LAYER_TYPES",
    "FixedPoint",
    "LayerCost",
    "LayerQuant",
    "LayerType",
    "QuantConfig",
    "dequantize",
    "fake_quant",
    "from_dict",
    "is_quantized",
    "layer_formats",
    "layer_type",
    "load_quant_config",
    "network_cost",
    "quantize_network",
    "quantized_layers",
]
