"""The ``hw`` extra: the packages an export needs, and the one-line error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from machlite.errors import ConfigError

#: The Python modules each export format needs (all in setup.cfg's ``hw`` extra).
NEEDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime"),
    "qonnx": ("onnx", "qonnx"),
    "hls4ml": ("hls4ml",),
    "verilog": ("alkaid",),
}


def require(fmt: str) -> dict[str, ModuleType]:
    """Import the modules export format ``fmt`` needs.

    Raises:
        ConfigError: One is not installed; the message names the extra to install.
    """
    found = {}
    for name in NEEDS[fmt]:
        try:
            found[name] = importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"machlite export --format {fmt} needs {name}, which is not installed: "
                "pip install -e '.[hw]' (the hw extra: hls4ml, onnx, onnxruntime, qonnx, alkaid)"
            ) from err
    return found
