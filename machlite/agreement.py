"""How far two sets of outputs agree: what every export and every RTL check reports."""

from __future__ import annotations

import numpy as np


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Max abs diff, the share of samples whose predicted class agrees, and of identical ones.

    ``identical`` counts samples whose outputs all agree within 1e-6.
    """
    got, want = np.asarray(got).reshape(len(want), -1), np.asarray(want).reshape(len(want), -1)
    diff = np.abs(got - want)
    return {
        "samples": len(want),
        "max_abs_diff": float(diff.max()),
        "class_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
        "identical": float((diff.max(axis=1) <= 1e-6).mean()),
    }


__all__ = ["compare"]
