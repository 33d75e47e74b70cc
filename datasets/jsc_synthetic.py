"""Synthetic JSC files: the real file's structure with made-up, learnable jets.

SYNTHETIC DATA. It exists to exercise the pipeline (tests, demos, benchmarks) without the
real download; accuracies on it say nothing about real JSC data.
"""

from pathlib import Path

import h5py
import numpy as np

from machlite.atomic import atomic_path

from .jsc_format import FEATURES, JSC_DATASET, LABELS

#: Other jet fields the real ``t_allpar_new`` has besides the 21 machlite reads.
EXTRA_FIELDS: tuple[str, ...] = ("j_index", "j_pt", "j_eta")
#: Fraction of jets written twice (the real file has duplicate rows too).
DUPLICATE_FRACTION = 0.02


def synthetic_jets(num_jets: int, seed: int = 0) -> np.ndarray:
    """Return ``num_jets`` synthetic jets as a structured array shaped like ``t_allpar_new``.

    Each class has its own mean and spread in a correlated 16-dimensional space, and each
    feature its own offset and scale (so standardisation matters); a linear model gets
    roughly 70-80% accuracy. About 2% of the rows are exact duplicates of others over the
    21 feature and label fields (they differ in ``j_index``).

    Args:
        num_jets: Number of rows, duplicates included.
        seed: Seed of the generator.
    """
    if num_jets < 10:
        raise ValueError(f"num_jets must be >= 10, got {num_jets}")
    rng = np.random.default_rng(seed)
    n_feat, n_cls = len(FEATURES), len(LABELS)
    n_dup = int(num_jets * DUPLICATE_FRACTION)
    n_unique = num_jets - n_dup
    labels = rng.integers(0, n_cls, size=n_unique)
    means = rng.normal(0.0, 0.45, size=(n_cls, n_feat))
    spreads = rng.uniform(0.7, 1.3, size=(n_cls, n_feat))
    mixing = np.eye(n_feat) + rng.normal(0.0, 0.2, size=(n_feat, n_feat))
    z = rng.normal(size=(n_unique, n_feat)) * spreads[labels] + means[labels]
    z = z @ mixing
    offsets = rng.uniform(-5.0, 50.0, size=n_feat)
    scales = rng.uniform(0.1, 20.0, size=n_feat)
    features = (offsets + scales * z).astype(np.float32)

    rows = np.concatenate([np.arange(n_unique), rng.integers(0, n_unique, size=n_dup)])
    rng.shuffle(rows)
    names = FEATURES + LABELS + EXTRA_FIELDS
    dtype = np.dtype(
        [(c, np.float32) for c in names[:-3]]
        + [("j_index", np.int64), ("j_pt", np.float32), ("j_eta", np.float32)]
    )
    table = np.zeros(num_jets, dtype=dtype)
    for i, c in enumerate(FEATURES):
        table[c] = features[rows, i]
    for k, c in enumerate(LABELS):
        table[c] = (labels[rows] == k).astype(np.float32)
    table["j_index"] = np.arange(num_jets)
    table["j_pt"] = rng.uniform(50.0, 1000.0, size=num_jets).astype(np.float32)
    table["j_eta"] = rng.uniform(-2.5, 2.5, size=num_jets).astype(np.float32)
    return table


def write_synthetic_jsc(path: Path, num_jets: int, seed: int = 0) -> Path:
    """Write a synthetic JSC HDF5 file at ``path`` (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hint = "pass a writable --data.data_dir (or set MACHLITE_DATA_DIR)"
    with (
        atomic_path(path, f"the synthetic JSC file {path}", hint=hint) as tmp,
        h5py.File(tmp, "w") as f,
    ):
        f.create_dataset(JSC_DATASET, data=synthetic_jets(num_jets, seed))
        f.attrs["machlite_synthetic"] = "SYNTHETIC data written by machlite; not real jets"
    return path
