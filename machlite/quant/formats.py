"""Fixed-point formats: ``FixedPoint`` (width, frac_width) and a layer's ``LayerQuant``.

A format ``(width, frac_width)`` stores ``value = clamp(round(x * 2^frac_width),
-2^(width-1), 2^(width-1) - 1) / 2^frac_width`` (round half to even, saturating). The
quantized layers (:mod:`machlite.quant.layers`) apply them; the config
(:mod:`machlite.quant.config`) says which layer gets which.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from machlite.errors import ConfigError

#: The widest format: torch's fake-quantize op holds the integer range in int32.
MAX_WIDTH = 32


@dataclass(frozen=True)
class FixedPoint:
    """A signed fixed-point format.

    Args:
        width: Total bits, the sign included (2 to 32).
        frac_width: Bits after the binary point (may be negative or above ``width``).
    """

    width: int
    frac_width: int

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or not 2 <= self.width <= MAX_WIDTH:
            raise ConfigError(f"quantization width must be 2 to {MAX_WIDTH}, got {self.width!r}")
        if not isinstance(self.frac_width, int):
            raise ConfigError(
                f"quantization frac_width must be an integer, got {self.frac_width!r}"
            )

    @property
    def int_width(self) -> int:
        """Integer bits, the sign included: hls4ml's ``I`` in ``ap_fixed<W, I>``."""
        return self.width - self.frac_width

    @property
    def scale(self) -> float:
        """The value of one step, ``2^-frac_width``."""
        return 2.0**-self.frac_width

    @property
    def qmin(self) -> int:
        """The smallest integer code, ``-2^(width-1)``."""
        return -(2 ** (self.width - 1))

    @property
    def qmax(self) -> int:
        """The largest integer code, ``2^(width-1) - 1``."""
        return 2 ** (self.width - 1) - 1

    def __str__(self) -> str:
        return f"({self.width},{self.frac_width})"


@dataclass(frozen=True)
class LayerQuant:
    """The formats of one layer; a field left None stays float.

    Args:
        data_in: The layer's input.
        weight: Its weight (BatchNorm: the folded scale ``gamma / sqrt(var + eps)``).
        bias: Its bias (BatchNorm: the folded shift ``beta - mean * scale``).
        data_out: Its output.
    """

    data_in: FixedPoint | None = None
    weight: FixedPoint | None = None
    bias: FixedPoint | None = None
    data_out: FixedPoint | None = None

    @property
    def is_float(self) -> bool:
        """Whether every field is float (the layer is left as it is)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)]
        return " ".join(p for p in parts if not p.endswith("=None")) or "float"
