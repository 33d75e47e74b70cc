"""ONNX of the float network, checked with onnxruntime against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from machlite.atomic import atomic_path


def export_onnx(network: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Write ``network`` (eval mode, on the CPU) as ONNX with a dynamic batch dimension.

    Uses torch's TorchScript-based exporter (``dynamo=False``): the graph is that of
    ``forward``, one input ``x``, one output ``y``.
    """
    network = network.cpu().eval()
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(
            network,
            (torch.zeros(2, *input_shape),),
            str(tmp),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    return path


def run_onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    """The ONNX model's output for ``x``, computed by onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
