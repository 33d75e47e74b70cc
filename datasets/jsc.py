"""JSCDataModule: the JSC jet-substructure data with machop's recipe and a real validation split.

Recipe (NOTES §2, as machop, hls4ml and LogicNets do it): drop duplicate rows over the 21
feature and label columns (keeping the first), ``train_test_split(test_size=0.2,
random_state=42)``, a StandardScaler fitted on the 80% part, labels = argmax of the one-hot
columns. Then, unlike machop, a seeded held-out validation split from the training part.
The result is cached, keyed by everything that changes it.
"""

import functools
import hashlib
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from machlite.atomic import atomic_path
from machlite.download import download
from machlite.errors import ConfigError, DataError, os_error_message
from machlite.notices import warn
from machlite.types import AtLeast100, Fraction, PositiveInt

from .base import InMemoryDataModule, Split
from .jsc_format import FEATURES, JSC_FILENAME, JSC_URL, LABELS, read_jsc_table, verify_jsc_file
from .jsc_synthetic import write_synthetic_jsc
from .validate import (
    check_features,
    check_one_hot,
    check_splits,
    describe_fields,
    nonfinite_fields,
    nonfinite_rows,
)

log = logging.getLogger(__name__)

#: Bump when the preprocessing changes: old caches are then ignored. 2: the arrays are
#: checked (machlite.datasets.validate) before a cache is written.
CACHE_FORMAT_VERSION = 2
TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 42
_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
SPLITS = ("train", "val", "test")
#: Fewest usable jets a file must hold (each split needs some).
MIN_JETS = 10


def check_table(
    table: np.ndarray,
    path: Path,
    drop_nonfinite: bool = False,
    notice: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Check a JSC table as read (features finite, labels one-hot); drop bad rows if asked.

    Args:
        table: The 16 features then the 5 label columns, one row per jet.
        path: The file it was read from (named in the messages).
        drop_nonfinite: Drop the rows with a NaN or infinite value instead of failing.
        notice: Called with the sentence saying how many rows were dropped (default: the log).

    Returns:
        The table, without the dropped rows.

    Raises:
        DataError: Non-finite values (unless dropped), label columns that are not one-hot,
            or no jets left; naming the file, the fields and the rows.
    """
    where = f"JSC file {path}"
    fix = (
        "fix the file (or delete it and run again to re-download it), or drop those rows with "
        "--data.drop_nonfinite true"
    )
    bad = nonfinite_rows(table)
    if bad.any():
        fields = describe_fields(nonfinite_fields(table, FEATURES + LABELS))
        if not drop_nonfinite:
            check_features(table, FEATURES + LABELS, where, fix)
        table = table[~bad]
        (notice or log.warning)(
            f"dropped {int(bad.sum())} of {len(bad)} jets of {where} with non-finite values "
            f"in {fields} (data.drop_nonfinite)"
        )
    n_feat = len(FEATURES)
    fix = "fix the file, or delete it and run again to re-download it"
    check_one_hot(table[:, n_feat:], LABELS, where, fix)
    if len(table) < MIN_JETS:
        raise DataError(
            f"{where} has {len(table)} usable jets, too few to split into train, validation "
            f"and test (at least {MIN_JETS} needed): {fix}"
        )
    return table


def preprocess(
    path: Path,
    val_fraction: float,
    seed: int,
    drop_nonfinite: bool = False,
    notice: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Apply the reference recipe to a JSC file and split off validation data.

    The table is checked first (:func:`check_table`) and the result last
    (:func:`machlite.datasets.validate.check_splits`), so bad data never reaches the cache.

    Args:
        path: A verified JSC HDF5 file.
        val_fraction: Fraction of the training part held out for validation; 0 validates
            on the training data itself (machop's behaviour).
        seed: Seed of the validation split.
        drop_nonfinite: Drop jets with a NaN or infinite value (and say how many).
        notice: Called with the sentence saying how many jets were dropped.

    Returns:
        float32 features and int64 labels: x_train, y_train, x_val, y_val, x_test, y_test.
    """
    table = check_table(read_jsc_table(path), path, drop_nonfinite, notice)
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
    arrays = dict(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test
    )
    splits = {split: (arrays[f"x_{split}"], arrays[f"y_{split}"]) for split in SPLITS}
    check_splits(splits, len(LABELS), f"JSC file {path}", "fix the file")
    return arrays


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
        drop_nonfinite: Drop the jets that have a NaN or infinite value, with a warning
            saying how many (default: stop with an error naming the file, fields and rows).
        steps_per_call: Batches per training call, the model's ``steps_per_call`` (the CLI
            links it; see :class:`~machlite.datasets.base.InMemoryDataModule`).
    """

    num_classes = 5
    input_shape = (len(FEATURES),)
    #: :func:`preprocess` checks the arrays before they are cached: setup need not again.
    checks_own_splits = True
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
        drop_nonfinite: bool = False,
        steps_per_call: PositiveInt = 1,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, seed, steps_per_call)
        if source not in ("cernbox", "synthetic"):
            raise ConfigError(f"data.source must be 'cernbox' or 'synthetic', got {source!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if synthetic_jets < 100:
            raise ConfigError(f"data.synthetic_jets must be >= 100, got {synthetic_jets}")
        self.source = source
        self.val_fraction = val_fraction
        self.synthetic_jets = synthetic_jets
        self.drop_nonfinite = bool(drop_nonfinite)

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
    def data_source(self) -> str:
        """The JSC file, for messages."""
        return f"JSC file {self.file_path}"

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
                **({"drop_nonfinite": True} if self.drop_nonfinite else {}),
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
            notice = functools.partial(warn, self.trainer)
            arrays = preprocess(path, self.val_fraction, self.seed, self.drop_nonfinite, notice)
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
