"""QONNX of the quantized network: standard ONNX ops with QONNX ``Quant`` nodes.

Each fixed-point format of :mod:`machlite.quant` becomes a ``Quant`` node (domain
``qonnx.custom_op.general``) with scale ``2^-frac_width``, zero point 0, bit width
``width``, ``signed=1``, ``narrow=0`` and ``rounding_mode="ROUND"`` (half to even): exactly
:func:`machlite.quant.fake_quant`. Weights and biases are float initializers behind their
own ``Quant`` node, as QONNX writes them. BatchNorm is written as what machlite computes:
``x * scale + shift`` with the folded, quantized scale and shift.

A bias (and a BatchNorm's shift) whose input and weight are quantized follows Brevitas's
convention, which hls4ml's QONNX reader needs (:func:`accumulator_format`): the initializer
is the bias rounded to its own format (exactly machlite's value), behind a ``Quant`` at the
accumulator's scale ``2^-(input frac + weight frac)`` and a bit width that holds it exactly.
The graph's output ``y`` is the last node's own output (no trailing ``Identity``, which
hls4ml turns into a C++ model without an output).

The graph is the network's ``torch.fx`` trace. Supported: Linear, Conv2d, BatchNorm1d/2d,
ReLU, Dropout and Identity (dropped), MaxPool2d, Flatten, Softmax, as modules or their
functional forms.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp

from machlite.errors import ConfigError
from machlite.quant import FixedPoint, LayerQuant, dequantize, layer_formats
from machlite.quant.layers import fake_quant

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 13


class _Builder:
    """Collects the ONNX nodes and initializers of the graph being written."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, value: Any) -> str:
        name = self.name(base)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value, dtype=np.float32)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(
            self.onnx.helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs)
        )
        return out

    def quant(self, x: str, fmt: FixedPoint | None) -> str:
        if fmt is None:
            return x
        inputs = [x, self.const("scale", fmt.scale), self.const("zeropt", 0.0)]
        inputs.append(self.const("bitwidth", float(fmt.width)))
        return self.node(
            "Quant", inputs, domain=QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND"
        )


def accumulator_format(layer: str, q: LayerQuant) -> FixedPoint | None:
    """The bias's format at the accumulator's scale (Brevitas's convention), or None.

    The accumulator of ``round(x) @ round(W)`` has ``frac = data_in.frac + weight.frac``. The
    bias, rounded to its own format ``(W_b, F_b)``, is a multiple of ``2^-F_b``, so at the
    accumulator's scale it is exact in ``W_b + frac - F_b`` bits, with the same range. None
    when the input, weight or bias is float (the bias then keeps its own format, or none).

    Raises:
        ConfigError: The bias is finer than the accumulator (``F_b > frac``): its value is not
            a multiple of the accumulator's step, so the convention cannot hold it exactly.
    """
    if q.data_in is None or q.weight is None or q.bias is None:
        return None
    frac = q.data_in.frac_width + q.weight.frac_width
    if q.bias.frac_width > frac:
        raise ConfigError(
            f"QONNX export: layer {layer}'s bias format {q.bias} is finer than its accumulator "
            f"(2^-{frac}, data_in frac_width + weight frac_width), so hls4ml's bias convention "
            f"cannot hold it exactly: set {layer}'s bias frac_width to at most {frac} in the "
            "quantization file"
        )
    return FixedPoint(q.bias.width + frac - q.bias.frac_width, frac)


def _bias(b: _Builder, layer: str, value: torch.Tensor, q: LayerQuant) -> str:
    """A bias (or BatchNorm shift) as machlite rounds it: at the accumulator's scale if it can."""
    acc = accumulator_format(layer, q)
    if acc is None:
        return b.quant(b.const("b", value), q.bias)
    # the value machlite adds, then a Quant at the accumulator's scale that leaves it as it is
    return b.quant(b.const("b", fake_quant(value.detach().float(), q.bias)), acc)


def _pair(value: Any) -> list[int]:
    return list(value) if isinstance(value, tuple | list) else [value, value]


def _unsupported(what: str) -> ConfigError:
    return ConfigError(
        f"QONNX export does not support {what}: supported are Linear, Conv2d, BatchNorm1d/2d, "
        "ReLU, Dropout, MaxPool2d, Flatten, Softmax"
    )


def _module(b: _Builder, name: str, module: nn.Module, q: LayerQuant, x: str, ndim: int) -> str:
    """The ONNX nodes of module ``name`` applied to ``x``; returns the output's name."""
    if isinstance(module, nn.Linear):
        y = b.node(
            "MatMul", [b.quant(x, q.data_in), b.quant(b.const("w", module.weight.T), q.weight)]
        )
        if module.bias is not None:
            y = b.node("Add", [y, _bias(b, name, module.bias, q)])
        return b.quant(y, q.data_out)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise _unsupported(f"Conv2d padding {module.padding!r}/{module.padding_mode}")
        inputs = [b.quant(x, q.data_in), b.quant(b.const("w", module.weight), q.weight)]
        if module.bias is not None:
            inputs.append(_bias(b, name, module.bias, q))
        pads = _pair(module.padding)
        y = b.node(
            "Conv",
            inputs,
            kernel_shape=_pair(module.kernel_size),
            strides=_pair(module.stride),
            pads=pads + pads,
            dilations=_pair(module.dilation),
            group=module.groups,
        )
        return b.quant(y, q.data_out)
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        shift = module.bias - module.running_mean * scale
        shape = [-1] + [1] * (ndim - 2)
        scale, shift = scale.reshape(shape), shift.reshape(shape)
        y = b.node("Mul", [b.quant(x, q.data_in), b.quant(b.const("scale", scale), q.weight)])
        y = b.node("Add", [y, _bias(b, name, shift, q)])
        return b.quant(y, q.data_out)
    if isinstance(module, nn.ReLU):
        return b.quant(b.node("Relu", [b.quant(x, q.data_in)]), q.data_out)
    if isinstance(module, nn.Dropout | nn.Identity):
        return x
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)) or module.ceil_mode:
            raise _unsupported("MaxPool2d with dilation or ceil_mode")
        pads = _pair(module.padding)
        stride = module.stride if module.stride is not None else module.kernel_size
        return b.node(
            "MaxPool",
            [x],
            kernel_shape=_pair(module.kernel_size),
            strides=_pair(stride),
            pads=pads + pads,
        )
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported("Flatten other than from dimension 1")
        return b.node("Flatten", [x], axis=1)
    if isinstance(module, nn.Softmax):
        return b.node("Softmax", [x], axis=module.dim if module.dim is not None else 1)
    raise _unsupported(type(module).__name__)


def _function(b: _Builder, node: Any, x: str) -> str:
    """The ONNX node of a functional call in the trace (relu, flatten, softmax)."""
    target = node.target
    args, kwargs = node.args[1:], node.kwargs
    if target in (F.relu, torch.relu, "relu"):
        return b.node("Relu", [x])
    if target in (torch.flatten, "flatten"):
        start = kwargs.get("start_dim", args[0] if args else 0)
        if start != 1 or kwargs.get("end_dim", args[1] if len(args) > 1 else -1) != -1:
            raise _unsupported("flatten other than from dimension 1")
        return b.node("Flatten", [x], axis=1)
    if target in (F.softmax, torch.softmax, "softmax"):
        return b.node("Softmax", [x], axis=kwargs.get("dim", args[0] if args else 1))
    raise _unsupported(f"the call {getattr(target, '__name__', target)}")


def _name_output(b: _Builder, output: str | None) -> None:
    """Call the graph's output ``y``: the last node's own output, renamed.

    Not an ``Identity`` node: hls4ml's QONNX reader turns a trailing Identity into a C++
    model without an output. Only a network that is the identity gets one.
    """
    import onnx

    if output is None or output == "x" or not any(output in n.output for n in b.nodes):
        b.nodes.append(onnx.helper.make_node("Identity", [output or "x"], ["y"], name="output"))
        return
    for n in b.nodes:
        for names in (n.input, n.output):
            for i, name in enumerate(names):
                if name == output:
                    names[i] = "y"


def qonnx_model(network: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The QONNX ``ModelProto`` of a quantized ``network`` (its layers' own formats)."""
    import onnx

    network = network.cpu().eval()
    formats = layer_formats(network)
    plain = dequantize(network).eval()  # torch's own layers: fx leaves
    graph = symbolic_trace(plain)
    ShapeProp(graph).propagate(torch.zeros(2, *input_shape))
    b = _Builder()
    values: dict[str, str] = {}
    output, out_shape = None, []
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            values[node.name] = "x"
        elif node.op == "output":
            output = values[node.args[0].name]
            out_shape = list(node.args[0].meta["tensor_meta"].shape)
        elif node.op == "call_module":
            x = values[node.args[0].name]
            ndim = len(node.args[0].meta["tensor_meta"].shape)
            module = graph.get_submodule(node.target)
            spec = formats.get(node.target, LayerQuant())
            values[node.name] = _module(b, node.target, module, spec, x, ndim)
        elif node.op in ("call_function", "call_method") and node.target is not operator.getitem:
            values[node.name] = _function(b, node, values[node.args[0].name])
        else:
            raise _unsupported(f"the graph node {node.op} {node.target}")
    _name_output(b, output)
    x_info = onnx.helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, ["batch", *input_shape]
    )
    y_info = onnx.helper.make_tensor_value_info(
        "y", onnx.TensorProto.FLOAT, ["batch", *out_shape[1:]]
    )
    model = onnx.helper.make_model(
        onnx.helper.make_graph(b.nodes, "machlite", [x_info], [y_info], b.inits),
        opset_imports=[
            onnx.helper.make_opsetid("", OPSET),
            onnx.helper.make_opsetid(QONNX_DOMAIN, 1),
        ],
        producer_name="machlite",
    )
    return model


def run_qonnx(model: Any, x: np.ndarray) -> np.ndarray:
    """The QONNX model's output for ``x``, computed by QONNX's reference executor."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    x = np.ascontiguousarray(x, dtype=np.float32)
    wrapper = ModelWrapper(model)
    wrapper.set_tensor_shape("x", list(x.shape))  # the executor needs every shape
    wrapper.set_tensor_shape("y", [x.shape[0], *wrapper.get_tensor_shape("y")[1:]])
    wrapper = wrapper.transform(InferShapes())
    return execute_onnx(wrapper, {"x": x})["y"]
