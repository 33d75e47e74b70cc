"""An hls4ml project of the quantized network, compiled (g++) and run in-process.

hls4ml's PyTorch frontend converts the float network (torch's own layers, the trained
weights); machlite's formats become per-layer ``ap_fixed<W, I, AP_RND_CONV, AP_SAT>``
precisions (``I = W - frac_width``: round half to even, saturate, as machlite's quantizer):

- the model input (layer ``x``): the first layer's ``data_in``;
- a layer's ``result``: its own ``data_out``, else the next layer's ``data_in`` (the rounding
  machlite does when that layer reads it), else :data:`WIDE`; a functional reshape between
  them (``flatten``) is looked past, as hls4ml passes values through it unrounded;
- Linear/Conv2d ``weight`` and ``bias``; BatchNorm ``scale`` and ``bias`` (the folded scale
  and shift, as machlite's quantized BatchNorm rounds them);
- every accumulator: :data:`ACCUM`, wide enough to sum the products exactly;
- float (unset) formats: :data:`WIDE`, hls4ml's stand-in for float.

:func:`hls4ml_from_qonnx` reads machlite's QONNX (:mod:`machlite.export.to_qonnx`) with
hls4ml's own QONNX frontend instead, after qonnx's cleanup transforms, as hls4ml's docs say.

Compiling needs g++ on PATH (:func:`require_compiler`); g++'s output goes to
``build_lib.log`` in the project, and a failed compile is one :class:`MachliteError` line.
Vivado/Vitis HLS synthesis (latency, LUTs, DSPs) is not run: only the C++ model.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from machlite.errors import MachliteError, first_line, write_error
from machlite.quant import FixedPoint, LayerQuant, dequantize, layer_formats

#: The precision that stands in for a float value: 16 integer bits and 32 fractional ones,
#: finer than float32 near 1, so a float layer rounds as machlite's float32 does (nearly).
WIDE = "ap_fixed<48,16,AP_RND_CONV,AP_SAT>"
#: Every accumulator's precision: sums of products of the formats above, exactly.
ACCUM = "ap_fixed<64,32>"
#: The C++ compiler hls4ml's ``build_lib.sh`` calls (``CC=g++``, not configurable).
COMPILER = "g++"


def ap_fixed(fmt: FixedPoint | None) -> str:
    """hls4ml's name of a machlite format: ``ap_fixed<W, W - frac, AP_RND_CONV, AP_SAT>``."""
    if fmt is None:
        return WIDE
    return f"ap_fixed<{fmt.width},{fmt.int_width},AP_RND_CONV,AP_SAT>"


#: hls4ml's names of functional reshapes in a torch.fx trace (``x.flatten(1)``, ``x.view``).
_RESHAPE = re.compile(r"^(flatten|view|reshape)(_\d+)?$")


def hls_config(network: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """hls4ml's per-layer config for a quantized ``network`` (the module docstring's rules)."""
    import hls4ml

    formats = {name.replace(".", "_"): spec for name, spec in layer_formats(network).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = hls4ml.utils.config_from_pytorch_model(
            _float(network),
            input_shape=tuple(input_shape),
            granularity="name",
            default_precision=WIDE,
            backend="Vivado",
        )
    names = list(config["LayerName"])  # "x" first, then the layers in order
    specs = [formats.get(name, LayerQuant()) for name in names]
    modules = {name.replace(".", "_") for name, _ in network.named_modules()}
    for i, name in enumerate(names):
        spec = specs[i]
        j = i + 1  # the layer that reads this one's result, past functional reshapes
        while j < len(names) and names[j] not in modules and _RESHAPE.match(names[j]):
            j += 1  # hls4ml passes values through a reshape unrounded
        nxt = specs[j].data_in if j < len(specs) else None
        out = nxt if name == "x" else spec.data_out or nxt
        precision = config["LayerName"][name].setdefault("Precision", {})
        precision["result"] = ap_fixed(out)
        for key, fmt in (("weight", spec.weight), ("scale", spec.weight), ("bias", spec.bias)):
            if key in precision:
                precision[key] = ap_fixed(fmt)
        if "accum" in precision:
            precision["accum"] = ACCUM
    return config


def _float(network: nn.Module) -> nn.Module:
    """The network with torch's own layers (what hls4ml's frontend reads), on the CPU.

    An ``nn.Identity`` (e.g. the MNIST CNN's softmax slot with logits output) becomes an
    empty ``nn.Sequential``, which torch.fx traces through: hls4ml has no Identity layer.
    """
    copy = dequantize(network.cpu()).eval()
    for parent in list(copy.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Identity:
                setattr(parent, name, nn.Sequential())
    return copy


def build_hls4ml(network: nn.Module, input_shape: tuple[int, ...], out: Path) -> Any:
    """Write the hls4ml project of a quantized ``network`` into ``out`` and compile it (g++).

    Returns:
        hls4ml's ``ModelGraph``: ``predict(x)`` runs the fixed-point C++ model.

    Raises:
        MachliteError: hls4ml's PyTorch frontend cannot convert the network (a layer or a
            call it does not handle), in one line.
    """
    import hls4ml

    try:
        config = hls_config(network, input_shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = hls4ml.converters.convert_from_pytorch_model(
                _float(network),
                hls_config=config,
                output_dir=str(out),
                backend="Vivado",
                io_type="io_parallel",
            )
    except Exception as err:  # noqa: BLE001  hls4ml raises anything on a network it cannot read
        raise MachliteError(
            f"hls4ml {hls4ml.__version__} cannot convert {type(network).__name__} "
            f"({type(err).__name__}: {first_line(err)}); the onnx and qonnx formats still "
            "work (docs/export.md)"
        ) from err
    compile_model(model, out)
    return model


def require_compiler() -> None:
    """Check that hls4ml's compile can run: g++ is on PATH.

    Raises:
        MachliteError: It is not; the message names the package to install.
    """
    if shutil.which(COMPILER) is None:
        raise MachliteError(
            f"hls4ml's compile needs the C++ compiler {COMPILER}, which is not on PATH: install "
            "it (Debian/Ubuntu: apt-get install g++) or put it on PATH; the onnx and qonnx "
            "formats need no compiler"
        )


def compile_model(model: Any, out: Path) -> None:
    """Write and compile hls4ml's project in ``out`` (g++); g++'s output goes to build_lib.log.

    Raises:
        MachliteError: g++ is not on PATH, or the compile failed (the log names the error).
    """
    require_compiler()
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            model.compile()
    except OSError as err:
        raise write_error(err, f"hls4ml project {out}") from err
    except Exception as err:  # noqa: BLE001  hls4ml raises a bare Exception when g++ fails
        path = out / "build_lib.log"
        with contextlib.suppress(OSError):
            path.write_text(log.getvalue())
        raise MachliteError(
            f"hls4ml's compile of {out} failed ({first_line(err)}): g++'s errors are in {path}"
        ) from err
    with contextlib.suppress(OSError):
        (out / "build_lib.log").write_text(log.getvalue())


def hls4ml_from_qonnx(model: Any, out: Path) -> Any:
    """hls4ml's model of machlite's QONNX ``model``, read by hls4ml's QONNX frontend, compiled.

    As hls4ml's docs say: qonnx's ``cleanup_model``, ``ConvertToChannelsLastAndClean`` and
    ``GemmToMatMul``, then ``config_from_onnx_model`` and ``convert_from_onnx_model`` (Vivado,
    ``io_parallel``). Every precision the ``Quant`` nodes do not set (a float layer) is
    :data:`WIDE`, as in :func:`build_hls4ml`.

    Returns:
        hls4ml's ``ModelGraph``: ``predict(x)`` runs the fixed-point C++ model.

    Raises:
        MachliteError: hls4ml cannot convert the graph, or g++ is missing or fails.
    """
    import hls4ml
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    require_compiler()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            wrapper = cleanup_model(ModelWrapper(model))
            wrapper = wrapper.transform(ConvertToChannelsLastAndClean())
            wrapper = cleanup_model(wrapper.transform(GemmToMatMul()))
            config = hls4ml.utils.config.config_from_onnx_model(
                wrapper, granularity="name", backend="Vivado", default_precision=WIDE
            )
            hls_model = hls4ml.converters.convert_from_onnx_model(
                wrapper,
                output_dir=str(out),
                backend="Vivado",
                io_type="io_parallel",
                hls_config=config,
            )
    except Exception as err:  # noqa: BLE001  hls4ml raises anything on a graph it cannot read
        raise MachliteError(
            f"hls4ml {hls4ml.__version__}'s QONNX frontend cannot convert the graph "
            f"({type(err).__name__}: {first_line(err)})"
        ) from err
    compile_model(hls_model, out)
    return hls_model


def run_hls4ml(model: Any, x: np.ndarray) -> np.ndarray:
    """The compiled hls4ml model's output for ``x`` (one row per sample)."""
    y = model.predict(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(y).reshape(len(x), -1)
