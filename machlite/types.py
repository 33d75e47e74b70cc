"""Restricted value types for config fields: LightningCLI rejects bad values at parse time
(exit code 2, jsonargparse's message) and ``--help`` shows the bounds."""

from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

#: A fraction in [0, 1), e.g. ``data.val_fraction``.
Fraction = restricted_number_type(
    "Fraction", float, [(">=", 0.0), ("<", 1.0)], docstring="a number in [0, 1)"
)
#: At least 100 (size of a synthetic JSC file).
AtLeast100 = restricted_number_type("AtLeast100", int, [(">=", 100)], docstring="an integer >= 100")

__all__ = ["AtLeast100", "Fraction", "NonNegativeInt", "PositiveInt"]
