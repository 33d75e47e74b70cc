"""Fake-quantized layers: torch's layers that round their input, parameters and output.

:func:`fake_quant` is torch's own ``fake_quantize_per_tensor_affine`` with scale
``2^-frac_width`` and zero point 0: round half to even, saturate at the format's range, and
pass the gradient straight through inside the range (zero outside it). Each ``Quant*`` class
subclasses the torch layer it replaces, so its ``state_dict`` keys are the float layer's and
a float checkpoint loads into it unchanged; the formats are a plain attribute, not state.

:data:`LAYERS` is the one table of the supported layer types: each type's ``by_type`` key,
its torch class and its ``Quant*`` class. :func:`layer_type`, :func:`is_quantized` and
:func:`layer_formats` read a network through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from machlite.quant.formats import FixedPoint, LayerQuant


def fake_quant(x: Tensor, fmt: FixedPoint | None) -> Tensor:
    """Round ``x`` to the format ``fmt`` (None: unchanged), straight-through gradient."""
    if fmt is None:
        return x
    return torch.fake_quantize_per_tensor_affine(x, fmt.scale, 0, fmt.qmin, fmt.qmax)


class _Quantized:
    """The formats of a quantized layer, and its one-line description."""

    quant: LayerQuant

    def extra_repr(self) -> str:  # shown by print(network)
        return f"{super().extra_repr()}, quant: {self.quant}"  # type: ignore[misc]


class QuantLinear(_Quantized, nn.Linear):
    """``nn.Linear`` on fixed-point input, weight and bias, with a fixed-point output."""

    def forward(self, x: Tensor) -> Tensor:
        """``round(round(x) @ round(W).T + round(b))`` with each format of :attr:`quant`."""
        q = self.quant
        bias = None if self.bias is None else fake_quant(self.bias, q.bias)
        out = F.linear(fake_quant(x, q.data_in), fake_quant(self.weight, q.weight), bias)
        return fake_quant(out, q.data_out)


class QuantConv2d(_Quantized, nn.Conv2d):
    """``nn.Conv2d`` on fixed-point input, weight and bias, with a fixed-point output."""

    def forward(self, x: Tensor) -> Tensor:
        """The convolution of the rounded input with the rounded weight and bias."""
        q = self.quant
        bias = None if self.bias is None else fake_quant(self.bias, q.bias)
        out = self._conv_forward(fake_quant(x, q.data_in), fake_quant(self.weight, q.weight), bias)
        return fake_quant(out, q.data_out)


def fold_batchnorm(
    module: nn.modules.batchnorm._BatchNorm, mean: Tensor | None = None, var: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """BatchNorm folded into ``x * scale + shift``: ``scale = gamma / sqrt(var + eps)``,
    ``shift = beta - mean * scale`` (float, before rounding), as hls4ml stores it.

    Args:
        module: The BatchNorm.
        mean: The mean to use (default: the running mean).
        var: The variance to use (default: the running variance).
    """
    mean = module.running_mean if mean is None else mean
    var = module.running_var if var is None else var
    gamma = module.weight if module.affine else torch.ones_like(mean)
    beta = module.bias if module.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + module.eps)
    return scale, beta - mean * scale


class _QuantBatchNorm(_Quantized, nn.modules.batchnorm._BatchNorm):
    """BatchNorm as the hardware computes it: ``x * scale + shift``, both rounded.

    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale`` are what hls4ml
    stores (its BatchNormalization layer's ``scale`` and ``bias``); ``weight`` and ``bias``
    of :attr:`quant` round them. In training the batch's statistics are used (and the
    running ones updated) as by ``nn.BatchNorm``; in eval, the running statistics.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the rounded input with the rounded folded scale and shift."""
        q = self.quant
        x = fake_quant(x, q.data_in)
        dims = [0, *range(2, x.dim())]
        if self.training or not self.track_running_stats:
            if self.training and self.track_running_stats:
                self._update_running_stats(x.detach())
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
        else:
            mean, var = self.running_mean, self.running_var
        scale, shift = fold_batchnorm(self, mean, var)
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = fake_quant(scale, q.weight).reshape(shape)
        shift = fake_quant(shift, q.bias).reshape(shape)
        return fake_quant(x * scale + shift, q.data_out)

    def _update_running_stats(self, x: Tensor) -> None:
        """Update the running statistics exactly as ``nn.BatchNorm``'s training pass does."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        F.batch_norm(x, self.running_mean, self.running_var, None, None, True, momentum, self.eps)


class QuantBatchNorm1d(_QuantBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with fixed-point input, folded scale and shift, and output."""


class QuantBatchNorm2d(_QuantBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with fixed-point input, folded scale and shift, and output."""


class QuantReLU(_Quantized, nn.ReLU):
    """``nn.ReLU`` of the rounded input, rounded to the output format."""

    def forward(self, x: Tensor) -> Tensor:
        """``round(relu(round(x)))``."""
        return fake_quant(F.relu(fake_quant(x, self.quant.data_in)), self.quant.data_out)


@dataclass(frozen=True)
class LayerType:
    """One supported layer type.

    Attributes:
        key: Its ``by_type`` key in a quantization config (the lowercased torch class name).
        torch_class: The torch layer.
        quant_class: machlite's fake-quantized subclass of it.
    """

    key: str
    torch_class: type[nn.Module]
    quant_class: type[nn.Module]


#: The supported layer types by ``by_type`` key: the one table of what can be quantized.
LAYERS: dict[str, LayerType] = {
    t.key: t
    for t in (
        LayerType("linear", nn.Linear, QuantLinear),
        LayerType("conv2d", nn.Conv2d, QuantConv2d),
        LayerType("batchnorm1d", nn.BatchNorm1d, QuantBatchNorm1d),
        LayerType("batchnorm2d", nn.BatchNorm2d, QuantBatchNorm2d),
        LayerType("relu", nn.ReLU, QuantReLU),
    )
}
#: The ``by_type`` keys, in the table's order.
LAYER_TYPES: tuple[str, ...] = tuple(LAYERS)
_BY_CLASS: dict[type, LayerType] = {
    cls: t for t in LAYERS.values() for cls in (t.torch_class, t.quant_class)
}


def layer_type(module: nn.Module) -> LayerType | None:
    """The supported type of ``module``, or None.

    The module is of a supported torch class exactly, or machlite's quantized subclass of
    one; other subclasses (which may compute something else) are not supported.
    """
    return _BY_CLASS.get(type(module))


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is one of machlite's fake-quantized layers (it has formats)."""
    return isinstance(module, _Quantized) and hasattr(module, "quant")


def layer_formats(network: nn.Module) -> dict[str, LayerQuant]:
    """The formats of each quantized layer of ``network``, by module name (empty: float)."""
    return {name: m.quant for name, m in network.named_modules() if is_quantized(m)}
