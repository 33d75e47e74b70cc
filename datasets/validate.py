"""Data checks run once after reading and before caching: bad data named in one line.

Every datamodule's arrays pass through here: :func:`nonfinite_rows` and
:func:`check_features` (NaN or infinite features), :func:`check_one_hot` (JSC's label
columns), :func:`check_labels` (class indices out of range) and :func:`check_splits` (all
of them, plus empty splits, on the final ``train``/``val``/``test`` arrays). Each check is
one vectorized pass (about 1% of the JSC preprocessing time, docs/reliability.md) and raises
:class:`~machlite.errors.DataError` naming the file, the field(s), how many rows and what to
do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from machlite.errors import DataError

#: How many offending row numbers a message shows.
_EXAMPLES = 3


def _array(values: Any) -> np.ndarray:
    """A NumPy view of an array or a CPU tensor (no copy); a device tensor is copied."""
    if isinstance(values, np.ndarray):
        return values
    if hasattr(values, "detach"):  # a torch tensor
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)[:_EXAMPLES].tolist()
    more = ", ..." if int(mask.sum()) > _EXAMPLES else ""
    return f"row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))}{more}"


def nonfinite_rows(values: Any) -> np.ndarray:
    """A boolean mask of the rows of a 2-D (or N-D) array with any NaN or infinite value."""
    x = _array(values)
    if not np.issubdtype(x.dtype, np.floating):
        return np.zeros(len(x), dtype=bool)
    x = x.reshape(len(x), -1)
    # A row's sum is finite unless a value is not (or the sum overflows): one fast pass, then
    # the exact test on those few rows only.
    with np.errstate(over="ignore", invalid="ignore"):
        candidates = ~np.isfinite(x.sum(axis=1))
    if candidates.any():
        candidates[candidates] = ~np.isfinite(x[candidates]).all(axis=1)
    return candidates


def nonfinite_fields(values: Any, names: Sequence[str]) -> list[tuple[str, int]]:
    """``(field, number of rows)`` for each column of a 2-D array with non-finite values."""
    x = _array(values)
    if not np.issubdtype(x.dtype, np.floating):
        return []
    counts = (~np.isfinite(x)).sum(axis=0)
    return [(names[i], int(counts[i])) for i in np.flatnonzero(counts)]


def describe_fields(fields: list[tuple[str, int]]) -> str:
    """``"j_zlogz (12 rows), j_mass_mmdt (3 rows)"``."""
    return ", ".join(f"{name} ({n} row{'s' if n != 1 else ''})" for name, n in fields)


def check_features(values: Any, names: Sequence[str] | None, where: str, fix: str) -> None:
    """Raise DataError when any feature is NaN or infinite.

    Args:
        values: The features, one row per sample.
        names: The column names of a 2-D array (None: one unnamed block, e.g. images).
        where: What holds them, e.g. "JSC file data/jsc/x.h5".
        fix: What to do, e.g. "fix the file, or drop those rows with --data.drop_nonfinite true".
    """
    mask = nonfinite_rows(values)
    count = int(mask.sum())
    if count == 0:
        return
    fields = f" in {describe_fields(nonfinite_fields(values, names))}" if names else ""
    raise DataError(
        f"{where}: {count} of {len(mask)} rows have non-finite (NaN or infinite) "
        f"values{fields}, e.g. {_rows(mask)}: {fix}"
    )


def check_one_hot(labels: Any, names: Sequence[str], where: str, fix: str) -> None:
    """Raise DataError unless every row of the label columns is one-hot (one 1, the rest 0)."""
    y = _array(labels)
    cols = np.ascontiguousarray(y.T)  # reducing over 5 long rows is 3-5x faster than N short
    # non-negative, summing to 1, with a 1 among them: exactly one 1 and the rest 0
    bad = (cols.min(axis=0) < 0) | (cols.max(axis=0) != 1) | (cols.sum(axis=0) != 1)
    count = int(bad.sum())
    if count == 0:
        return
    binary = (y == 0) | (y == 1)
    not_binary = [names[i] for i in np.flatnonzero((~binary).any(axis=0))]
    what = f"values other than 0 and 1 in {', '.join(not_binary)}; " if not_binary else ""
    raise DataError(
        f"{where}: {count} of {len(y)} rows have label columns {', '.join(names)} that are not "
        f"one-hot ({what}each row needs exactly one 1), e.g. {_rows(bad)}: {fix}"
    )


def check_labels(labels: Any, num_classes: int, where: str, fix: str) -> None:
    """Raise DataError when a class index is not an integer in ``[0, num_classes)``."""
    y = _array(labels)
    bad = (y < 0) | (y >= num_classes)
    if np.issubdtype(y.dtype, np.floating):
        bad |= ~np.isfinite(y) | (y != np.round(y))
    count = int(bad.sum())
    if count == 0:
        return
    first = np.flatnonzero(bad)[0]
    raise DataError(
        f"{where}: {count} of {len(y)} labels are outside the classes 0-{num_classes - 1} "
        f"(e.g. {y[first].item()!r} at row {first}): {fix}"
    )


def check_splits(
    splits: Mapping[str, tuple[Any, Any]], num_classes: int, where: str, fix: str
) -> None:
    """Check the final splits: none empty, every feature finite, every label a class index.

    Args:
        splits: ``name -> (features, labels)``, NumPy arrays or CPU tensors.
        num_classes: Number of classes.
        where: What they come from, e.g. "JSC file data/jsc/x.h5".
        fix: What to do about it.
    """
    for name, (x, y) in splits.items():
        if len(y) == 0 or len(x) == 0:
            raise DataError(f"{where}: the {name} split is empty: {fix}")
        if len(x) != len(y):
            raise DataError(
                f"{where}: the {name} split has {len(x)} samples but {len(y)} labels: {fix}"
            )
        check_features(x, None, f"{where}, {name} split", fix)
        check_labels(y, num_classes, f"{where}, {name} split", fix)
