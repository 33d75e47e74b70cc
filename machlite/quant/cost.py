"""The cost of a (quantized) network: model size in bits and bit operations (BOPs) per layer.

BOPs follow Baskin et al., "UNIQ: Uniform Noise Injection for Non-Uniform Quantization of
Neural Networks" (ACM TOCS 2021), as used by Coelho et al., "Automatic heterogeneous
quantization of deep neural networks for low-latency inference on the edge for particle
detectors" (hls4ml/QKeras, Nature Machine Intelligence 2021): a layer of ``m`` outputs, each
a sum of ``n`` products of a ``b_a``-bit input and a ``b_w``-bit weight, costs
``m * n * ((1 - f_p) * b_a * b_w + b_a + b_w + log2(n))`` bit operations, ``f_p`` the
pruned fraction of the weights: the layer's fraction of weights that are exactly zero
(``model.pruning``, docs/pruning.md; a pruned layer's ``weight_orig * weight_mask``). A
convolution counts that per output pixel. Float tensors count as 32 bits. BatchNorm, ReLU
and the other layers count no BOPs (the definition covers only the multiply-accumulate
layers); their parameters count in the size. A multiply-accumulate layer's zero weights
count no bits: a fully unrolled design (``export --format verilog``) stores none of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from machlite.quant.config import QuantConfig, from_dict
from machlite.quant.formats import FixedPoint, LayerQuant
from machlite.quant.layers import LAYERS, is_quantized, layer_type
from machlite.sparsity.masks import weight_of

#: The bits of a float value.
FLOAT_BITS = 32
#: The multiply-accumulate layer types of :data:`machlite.quant.layers.LAYERS`: the only
#: ones that count BOPs.
MAC_TYPES = ("linear", "conv2d")


def bits(fmt: FixedPoint | None) -> int:
    """The bits of a value in format ``fmt`` (None: float, 32)."""
    return FLOAT_BITS if fmt is None else fmt.width


def bops(n: int, m: int, b_a: int, b_w: int, pruned: float = 0.0) -> float:
    """Baskin et al.'s BOPs of ``m`` outputs, each a sum of ``n`` products (module docstring)."""
    return m * n * ((1.0 - pruned) * b_a * b_w + b_a + b_w + math.log2(n))


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost.

    Attributes:
        name: The module's name in the network.
        kind: Its ``by_type`` key (``linear``, ...) or class name.
        formats: Its formats, as the config gives them (``float``: none).
        params: Its number of parameters.
        bits: The bits of its parameters (weights at the weight width, biases at the bias
            width, float ones at 32; a Linear's or Conv2d's zero weights not counted).
        bops: Its bit operations for one sample.
        sparsity: The fraction of its weights that are zero (Linear and Conv2d; else 0).
    """

    name: str
    kind: str
    formats: str
    params: int
    bits: int
    bops: float
    sparsity: float = 0.0


@dataclass(frozen=True)
class NetworkCost:
    """A network's cost: every layer with parameters or BOPs, and the totals."""

    layers: list[LayerCost] = field(default_factory=list)

    @property
    def bits(self) -> int:
        """Model size in bits."""
        return sum(layer.bits for layer in self.layers)

    @property
    def bops(self) -> float:
        """Bit operations for one sample."""
        return sum(layer.bops for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        """Plain data: the layers and the totals."""
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "bits": self.bits,
            "bops": self.bops,
        }


def _formats(name: str, module: nn.Module, config: QuantConfig | None) -> LayerQuant:
    if config is not None:
        spec = config.for_layer(name, module)
    else:
        spec = module.quant if is_quantized(module) else None
    return spec or LayerQuant()


def _mac_type(module: nn.Module) -> str | None:
    """The ``by_type`` key of a multiply-accumulate layer (its torch class or a subclass)."""
    for key in MAC_TYPES:
        if isinstance(module, LAYERS[key].torch_class):
            return key
    return None


def network_cost(
    network: nn.Module, config: QuantConfig | dict | None, input_shape: tuple[int, ...]
) -> NetworkCost:
    """The cost of ``network`` under ``config`` for inputs of ``input_shape`` (one sample).

    Args:
        network: A float network (with ``config``), or a quantized one (``config`` None:
            the formats its layers carry).
        config: The quantization config; None reads the network's own formats.
        input_shape: One sample's shape, without the batch dimension.

    The network is run once on a zero sample in eval mode to find each layer's input and
    output sizes; its mode and state are left as they were.
    """
    config = None if config is None else from_dict(config)
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, module in network.named_modules():
        if _mac_type(module) is not None:

            def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
                shapes[name] = (args[0].shape, out.shape)

            hooks.append(module.register_forward_hook(hook))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            param = next(network.parameters(), None)
            device = param.device if param is not None else "cpu"
            network(torch.zeros(1, *input_shape, device=device))
    finally:
        network.train(was_training)
        for handle in hooks:
            handle.remove()
    layers = []
    for name, module in network.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own and name not in shapes:
            continue
        spec = _formats(name, module, config)
        zero_weights, zeros = 0, 0.0  # a Linear's or Conv2d's zero weights, and their fraction
        if _mac_type(module) is not None:
            with torch.no_grad():
                weight = weight_of(module)
                zero_weights = int((weight == 0).sum())
                zeros = zero_weights / weight.numel()
        size = sum(
            p.numel() * bits(spec.bias if pname == "bias" else spec.weight) for pname, p in own
        ) - zero_weights * bits(spec.weight)
        ops = 0.0
        mac = _mac_type(module) if name in shapes else None
        b_a, b_w = bits(spec.data_in), bits(spec.weight)
        if mac == "linear":
            rows = shapes[name][1].numel() // module.out_features  # leading dimensions
            ops = rows * bops(module.in_features, module.out_features, b_a, b_w, zeros)
        elif mac == "conv2d":
            out_shape = shapes[name][1]
            n = module.in_channels // module.groups * math.prod(module.kernel_size)
            pixels = out_shape[-1] * out_shape[-2]
            ops = pixels * bops(n, module.out_channels, b_a, b_w, zeros)
        layers.append(
            LayerCost(
                name=name,
                kind=kind.key if (kind := layer_type(module)) else type(module).__name__,
                formats=str(spec),
                params=sum(p.numel() for _, p in own),
                bits=int(size),
                bops=float(ops),
                sparsity=zeros,
            )
        )
    return NetworkCost(layers)
