from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import machlite.datasets.jsc as jsc_module
from machlite.datasets import JSCDataModule
from machlite.datasets.jsc import preprocess
from machlite.datasets.jsc_format import FEATURES, JSC_DATASET, LABELS, verify_jsc_file
from machlite.datasets.jsc_synthetic import EXTRA_FIELDS, write_synthetic_jsc
from machlite.errors import ConfigError, DataError


def _reference_recipe(path: Path) -> tuple[np.ndarray, ...]:
    """machop's recipe done by hand with pandas and scikit-learn."""
    with h5py.File(path, "r") as f:
        table = f[JSC_DATASET][()]
    df = pd.DataFrame(table)[list(FEATURES + LABELS)].drop_duplicates()
    x = df[list(FEATURES)].values
    y = df[list(LABELS)].values.argmax(axis=1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=42)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), y_train, scaler.transform(x_test), y_test


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rows = np.column_stack([x.astype(np.float64), y])
    return rows[np.lexsort(rows.T[::-1])]


def test_synthetic_file_has_the_real_structure(jsc_data_dir: Path) -> None:
    path = jsc_data_dir / "jsc" / "jsc_synthetic_3000.h5"
    verify_jsc_file(path)
    with h5py.File(path, "r") as f:
        table = f[JSC_DATASET][()]
        assert "SYNTHETIC" in f.attrs["machlite_synthetic"]
    assert set(FEATURES + LABELS + EXTRA_FIELDS) <= set(table.dtype.names)
    assert len(table) == 3000
    onehot = np.stack([table[c] for c in LABELS], axis=1)
    assert np.all(onehot.sum(axis=1) == 1)
    unique = pd.DataFrame(table)[list(FEATURES + LABELS)].drop_duplicates()
    assert 0 < 3000 - len(unique) <= 60  # some duplicate jets, as in the real file


def test_preprocessing_matches_the_reference_recipe(jsc_data_dir: Path) -> None:
    path = jsc_data_dir / "jsc" / "jsc_synthetic_3000.h5"
    ref_x_train, ref_y_train, ref_x_test, ref_y_test = _reference_recipe(path)
    same = preprocess(path, val_fraction=0.0, seed=0)
    np.testing.assert_array_equal(same["y_train"], ref_y_train)
    np.testing.assert_array_equal(same["y_test"], ref_y_test)
    np.testing.assert_allclose(same["x_train"], ref_x_train, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(same["x_test"], ref_x_test, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(same["x_val"], same["x_train"])  # machop: val = train

    held = preprocess(path, val_fraction=0.1, seed=0)
    assert len(held["y_val"]) == round(0.1 * len(ref_y_train))
    np.testing.assert_allclose(
        _sorted_rows(
            np.concatenate([held["x_train"], held["x_val"]]),
            np.concatenate([held["y_train"], held["y_val"]]),
        ),
        _sorted_rows(ref_x_train, ref_y_train),
        rtol=1e-5,
        atol=1e-5,
    )
    other_seed = preprocess(path, val_fraction=0.1, seed=1)
    assert not np.array_equal(other_seed["y_val"], held["y_val"])


def test_second_setup_uses_the_cache(jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = JSCDataModule(
        data_dir=str(jsc_data_dir),
        source="synthetic",
        synthetic_jets=3000,
        val_fraction=0.2,
        seed=5,
    )
    dm.prepare_data()
    assert dm.cache_path.exists()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("preprocessing ran again although the cache exists")

    monkeypatch.setattr(jsc_module, "preprocess", fail)
    again = JSCDataModule(
        data_dir=str(jsc_data_dir),
        source="synthetic",
        synthetic_jets=3000,
        val_fraction=0.2,
        seed=5,
    )
    again.prepare_data()
    again.setup("fit")
    assert set(again.splits) == {"train", "val", "test"}
    different = JSCDataModule(
        data_dir=str(jsc_data_dir),
        source="synthetic",
        synthetic_jets=3000,
        val_fraction=0.1,
        seed=5,
    )
    assert different.cache_path != again.cache_path


def test_missing_file_offline_says_where_to_put_it(tmp_path: Path) -> None:
    dm = JSCDataModule(data_dir=str(tmp_path / "d"))
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(dm.file_path) in msg and "cernbox.cern.ch" in msg and "synthetic" in msg


def test_rejects_a_file_that_is_not_hdf5(tmp_path: Path) -> None:
    bad = tmp_path / "bad.z"
    bad.write_bytes(b"<html>not the data</html>")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        verify_jsc_file(bad)
    empty = tmp_path / "empty.z"
    empty.touch()
    with pytest.raises(DataError, match="is empty"):
        verify_jsc_file(empty)


def test_rejects_a_file_missing_a_field(tmp_path: Path) -> None:
    names = [c for c in FEATURES + LABELS if c != "j_mass_mmdt"]
    table = np.zeros(10, dtype=[(c, np.float32) for c in names])
    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(JSC_DATASET, data=table)
    with pytest.raises(DataError, match="lacks the field.*j_mass_mmdt"):
        verify_jsc_file(path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("something_else", data=table)
    with pytest.raises(DataError, match="no dataset 't_allpar_new'"):
        verify_jsc_file(tmp_path / "other.h5")


def test_download_verifies_and_keeps_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MACHLITE_OFFLINE")
    good = write_synthetic_jsc(tmp_path / "served" / "good.h5", 500)
    bad = tmp_path / "served" / "bad.h5"
    bad.write_bytes(b"garbage")
    dm = JSCDataModule(data_dir=str(tmp_path / "d"))
    monkeypatch.setattr(jsc_module, "JSC_URL", bad.as_uri())
    with pytest.raises(DataError, match="not a readable HDF5"):
        dm.prepare_data()
    assert not dm.file_path.exists()
    assert list(dm.file_path.parent.iterdir()) == []
    monkeypatch.setattr(jsc_module, "JSC_URL", good.as_uri())
    dm.prepare_data()
    assert dm.file_path.read_bytes() == good.read_bytes()
    # a second run never downloads again: a now-broken URL is not even tried
    monkeypatch.setattr(jsc_module, "JSC_URL", bad.as_uri())
    JSCDataModule(data_dir=str(tmp_path / "d")).prepare_data()
    assert dm.file_path.read_bytes() == good.read_bytes()


def test_data_dir_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MACHLITE_DATA_DIR", str(tmp_path / "env_dir"))
    assert JSCDataModule().file_path.parent == tmp_path / "env_dir" / "jsc"
    monkeypatch.delenv("MACHLITE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert JSCDataModule().data_dir == tmp_path / "xdg" / "machlite"
    assert JSCDataModule(data_dir=str(tmp_path / "x")).data_dir == tmp_path / "x"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"source": "zenodo"}, "source"),
    ],
)
def test_bad_values_fail_early(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        JSCDataModule(**kwargs)
