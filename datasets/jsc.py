"""JSCDataModule: the JSC jet-substructure data with machop's recipe and a real validation split.

Recipe (NOTES §2, as machop, hls4ml and LogicNets do it): drop duplicate rows over the 21
feature and label columns (keeping the first), ``train_test_split(test_size=0.2,
random_state=42)``, a StandardScaler fitted on the 80% part, labels = argmax of the one-hot
columns. Then, unlike machop, a seeded held-out validation split from the training part.
The result is cached, keyed by everything that changes it.
"""

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from machlite.atomic import atomic_path
from machlite.download import download
from machlite.errors import ConfigError, DataError, os_error_message
from machlite.types import AtLeast100, Fraction, PositiveInt

from .base import InMemoryDataModule, Split
from .jsc_format import FEATURES, JSC_FILENAME, JSC_URL, LABELS, read_jsc_table, verify_jsc_file
from .jsc_synthetic import write_synthetic_jsc

log = logging.getLogger(__name__)

#: Bump when the preprocessing changes: old caches are then ignored.
CACHE_FORMAT_VERSION = 1
TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 42
_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def preprocess(path: Path, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Apply the reference recipe to a JSC file and split off validation data.

    Args:
        path: A verified JSC HDF5 file.
        val_fraction: Fraction of the training part held out for validation; 0 validates
            on the training data itself (machop's behaviour).
        seed: Seed of the validation split.

    Returns:
        float32 features and int64 labels: x_train, y_train, x_val, y_val, x_test, y_test.
    """
    table = read_jsc_table(path)
    _, first = np.unique(table, axis=0, return_index=True)
    table = table[np.sort(first)]  # drop_duplicates(): keep first occurrences, in order
    n_feat = len(FEATURES)
    x = table[:, :n_feat].astype(np.float32)
    y = table[:, n_feat:].argmax(axis=1).astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_RANDOM_STATE
    )
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train).astype(np.float32)
    x_test = scaler.transform(x_test).astype(np.float32)
    if val_fraction == 0:
        x_val, y_val = x_train, y_train
    else:
        perm = np.random.default_rng(seed).permutation(len(x_train))
        n_val = max(1, round(val_fraction * len(x_train)))
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
    return dict(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test
    )


class JSCDataModule(InMemoryDataModule):
    """The JSC dataset (16 features, 5 classes) from the hls4ml HDF5 file, or synthetic.

    Args:
        data_dir: Data folder; the file lives in ``data_dir/jsc/`` (None:
            ``$MACHLITE_DATA_DIR`` or ``~/.cache/machlite``).
        source: "cernbox" downloads the real file (once, in ``prepare_data``); "synthetic"
            writes and uses a file of the same structure with made-up jets (SYNTHETIC:
            for trying the pipeline; its accuracies mean nothing for real jets).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict.
        val_fraction: Fraction of the training part held out for validation, in [0, 1);
            0 validates on the training data itself, as machop does (not recommended).
        seed: Seed of the validation split and of the per-epoch training order.
        synthetic_jets: Number of jets in the synthetic file (``source: synthetic`` only).
    """

    num_classes = 5
    input_shape = (len(FEATURES),)
    #: Jet classes in label order: gluon, light quark, W, Z, top (the ``j_*`` label fields).
    class_names = tuple(label.removeprefix("j_") for label in LABELS)

    def __init__(
        self,
        data_dir: str | None = None,
        source: Literal["cernbox", "synthetic"] = "cernbox",
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt = 4096,
        val_fraction: Fraction = 0.1,
        seed: int = 0,
        synthetic_jets: AtLeast100 = 100_000,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, seed)
        if source not in ("cernbox", "synthetic"):
            raise ConfigError(f"data.source must be 'cernbox' or 'synthetic', got {source!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if synthetic_jets < 100:
            raise ConfigError(f"data.synthetic_jets must be >= 100, got {synthetic_jets}")
        self.source = source
        self.val_fraction = val_fraction
        self.synthetic_jets = synthetic_jets

    @property
    def run_tag(self) -> str:
        """ "synthetic" for synthetic data, so run names and logs say so."""
        return "synthetic" if self.source == "synthetic" else ""

    @property
    def file_path(self) -> Path:
        """The HDF5 file this module reads."""
        if self.source == "synthetic":
            return self.data_dir / "jsc" / f"jsc_synthetic_{self.synthetic_jets}.h5"
        return self.data_dir / "jsc" / JSC_FILENAME

    @property
    def cache_path(self) -> Path:
        """The preprocessed-array cache for this file and these settings."""
        stat = self.file_path.stat()
        key = json.dumps(
            {
                "format": CACHE_FORMAT_VERSION,
                "file": self.file_path.name,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "test_size": TEST_SIZE,
                "random_state": SPLIT_RANDOM_STATE,
                "val_fraction": self.val_fraction,
                "seed": self.seed,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.data_dir / "jsc" / "cache" / f"jsc-{digest}.npz"

    def prepare_data(self) -> None:
        """Get the file (download or synthesise, once), verify it, and build the cache."""
        path = self.file_path
        if self.source == "synthetic":
            if not path.exists():
                log.info(
                    "Writing a SYNTHETIC JSC file with %d jets to %s", self.synthetic_jets, path
                )
                try:
                    write_synthetic_jsc(path, self.synthetic_jets)
                except OSError as err:
                    raise self._write_error(err, "the synthetic JSC file") from err
        elif not path.exists():
            self._download(path)
        verify_jsc_file(path)
        if self._load_cache() is None:
            arrays = preprocess(path, self.val_fraction, self.seed)
            try:
                self._write_cache(arrays)
            except OSError as err:
                raise self._write_error(err, "the JSC cache") from err

    def _write_error(self, err: OSError, what: str) -> DataError:
        hint = "pass a writable --data.data_dir (or set MACHLITE_DATA_DIR)"
        return DataError(os_error_message(err, what, hint=hint))

    def _download(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the data folder {path.parent}: {err}") from err
        try:
            download(JSC_URL, path, verify=lambda p: verify_jsc_file(p, name=path))
        except DataError as err:
            raise DataError(
                f"JSC file {path} is missing and {err}. Offline: download {JSC_URL} "
                f"elsewhere and save it as {path} (or try the pipeline with "
                "--data.source synthetic)"
            ) from err

    def _load_cache(self) -> dict[str, np.ndarray] | None:
        if not self.file_path.exists():
            return None
        path = self.cache_path
        if not path.exists():
            return None
        try:
            with np.load(path) as cache:
                arrays = {k: cache[k] for k in _ARRAYS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("Ignoring the unreadable JSC cache %s (%s); rebuilding it", path, err)
            return None
        for split in ("train", "val", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) != len(y) or len(y) == 0:
                log.warning("Ignoring the inconsistent JSC cache %s; rebuilding it", path)
                return None
        return arrays

    def _write_cache(self, arrays: dict[str, np.ndarray]) -> None:
        path = self.cache_path
        path.parent.mkdir(parents=True, exist_ok=True)
        hint = "pass a writable --data.data_dir (or set MACHLITE_DATA_DIR)"
        with atomic_path(path, f"the JSC cache {path}", ".tmp.npz", hint) as tmp:
            np.savez(tmp, **arrays)

    def load_splits(self) -> dict[str, Split]:
        """Read the cached arrays (building them first if ``prepare_data`` did not run)."""
        arrays = self._load_cache()
        if arrays is None:
            self.prepare_data()
            arrays = self._load_cache()
            if arrays is None:
                raise DataError(f"could not read the JSC cache {self.cache_path}")
        if self.val_fraction == 0:
            log.warning(
                "data.val_fraction is 0: validating on the TRAINING data, as machop does; "
                "val/ curves then measure fit, not generalisation"
            )
        if self.run_tag:
            log.warning("JSC data source is SYNTHETIC: metrics say nothing about real jets")
        return {
            split: (torch.from_numpy(arrays[f"x_{split}"]), torch.from_numpy(arrays[f"y_{split}"]))
            for split in ("train", "val", "test")
        }
