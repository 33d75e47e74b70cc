"""The quantization config: signed fixed-point formats per layer, by layer type and by name.

A config is a machlite config's ``model.quantization`` block, or a YAML file of its own
(``machlite quantize --quant FILE``)::

    by_type:                      # every layer of that type (see LAYER_TYPES)
      linear:
        data_in: {width: 8, frac_width: 4}
        weight: {width: 8, frac_width: 4}
        bias: {width: 8, frac_width: 4}
      relu:
        data_in: {width: 8, frac_width: 4}
    by_name:                      # overrides by module name (``network.named_modules()``)
      seq_blocks.2:
        weight: {width: 4, frac_width: 2}
      seq_blocks.3: {}            # float
    default: null                 # the layers of a supported type not named above: float

A format ``(width, frac_width)`` stores ``value = clamp(round(x * 2^frac_width),
-2^(width-1), 2^(width-1) - 1) / 2^frac_width`` (round half to even, saturating): machop's
``integer`` quantizer, hls4ml's ``ap_fixed<width, width - frac_width, AP_RND_CONV, AP_SAT>``.
A field left out (null) is float. docs/quantization.md explains each field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from machlite.config_files import read_model_block
from machlite.errors import ConfigError
from machlite.quant.formats import FixedPoint, LayerQuant
from machlite.quant.layers import LAYER_TYPES, layer_type


@dataclass(frozen=True)
class QuantConfig:
    """Which layers are quantized, and how.

    A layer's formats are its ``by_name`` entry if it has one (the whole entry: fields it
    leaves out are float), else its type's ``by_type`` entry, else ``default`` (None: float).
    Only the types in :data:`LAYER_TYPES` are quantized; other modules (Dropout, MaxPool,
    Flatten) are left as they are.

    Args:
        by_type: Formats by layer type (a key of :data:`LAYER_TYPES`, e.g. ``linear``).
        by_name: Formats by module name, e.g. ``seq_blocks.2``.
        default: Formats of the supported layers named nowhere above (None: float).
    """

    by_type: dict[str, LayerQuant] = field(default_factory=dict)
    by_name: dict[str, LayerQuant] = field(default_factory=dict)
    default: LayerQuant | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.by_type) - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(
                f"quantization by_type: unknown layer type {unknown[0]!r}: choose from "
                f"{', '.join(LAYER_TYPES)}"
            )

    def for_layer(self, name: str, module: Any) -> LayerQuant | None:
        """The formats of module ``name`` (None: not a supported type, or all float)."""
        kind = layer_type(module)
        if kind is None:
            return None
        if name in self.by_name:
            spec = self.by_name[name]
        elif kind.key in self.by_type:
            spec = self.by_type[kind.key]
        else:
            spec = self.default
        return None if spec is None or spec.is_float else spec

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and ints (what checkpoints store and :func:`from_dict` reads)."""
        return asdict(self)


def _fixed(value: Any, where: str) -> FixedPoint | None:
    if value is None or isinstance(value, FixedPoint):
        return value
    if isinstance(value, list | tuple) and len(value) == 2:
        value = {"width": value[0], "frac_width": value[1]}
    if not isinstance(value, dict) or set(value) != {"width", "frac_width"}:
        raise ConfigError(
            f"quantization {where}: expected {{width: W, frac_width: F}} (or [W, F]), got {value!r}"
        )
    return FixedPoint(**value)


def _layer(value: Any, where: str) -> LayerQuant | None:
    if value is None or isinstance(value, LayerQuant):
        return value
    names = [f.name for f in fields(LayerQuant)]
    if not isinstance(value, dict) or not set(value) <= set(names):
        extra = sorted(set(value) - set(names)) if isinstance(value, dict) else value
        raise ConfigError(
            f"quantization {where}: unknown field {extra!r}: a layer takes {', '.join(names)}"
        )
    return LayerQuant(**{k: _fixed(v, f"{where}.{k}") for k, v in value.items()})


def from_dict(data: Any) -> QuantConfig:
    """Build a :class:`QuantConfig` from plain data (a parsed YAML file, a checkpoint's).

    Raises:
        ConfigError: An unknown key, layer type or field, or a bad format.
    """
    if isinstance(data, QuantConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"quantization: expected a mapping, got {type(data).__name__}")
    keys = {"by_type", "by_name", "default"}
    if not set(data) <= keys:
        raise ConfigError(
            f"quantization: unknown key {sorted(set(data) - keys)[0]!r}: use by_type, by_name, "
            "default"
        )
    return QuantConfig(
        by_type={k: _layer(v, f"by_type.{k}") for k, v in (data.get("by_type") or {}).items()},
        by_name={k: _layer(v, f"by_name.{k}") for k, v in (data.get("by_name") or {}).items()},
        default=_layer(data.get("default"), "default"),
    )


def load_quant_config(path: str | os.PathLike) -> QuantConfig:
    """Read a quantization YAML file: the block itself, or a machlite config holding it.

    A machlite config's ``model.quantization`` (or ``model.init_args.quantization``) is
    read when the file has a ``model`` key.

    Raises:
        ConfigError: The file is missing, not YAML, or not a valid quantization config.
    """
    data = read_model_block(path, "quantization", "quantization")
    try:
        return from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
