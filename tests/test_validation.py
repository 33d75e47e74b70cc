"""Reliability (issue #19): bad data named at load, config errors that point at the file,
divergence messages that say whether the inputs were finite, warnings that stay visible.

docs/reliability.md lists every case with the test that backs it.
"""

import contextlib
import io
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from machlite.datasets import InMemoryDataModule, JSCDataModule, MNISTDataModule
from machlite.datasets.jsc_format import FEATURES, JSC_DATASET, JSC_FILENAME, LABELS
from machlite.datasets.jsc_synthetic import synthetic_jets
from machlite.errors import ConfigError, DataError
from machlite.runs.layout import WARNINGS_FILE
from machlite.sweep.parsing import load_sweep_file
from machlite.sweep.spec import Run
from machlite.sweep.summary import warnings_markdown

from .conftest import CONFIGS, run, synthetic

TINY = str(CONFIGS / "jsc_tiny.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
BAD_ROWS = [3, 40, 41, 120, 250, 333, 499]


# -- helpers -----------------------------------------------------------------------------------
def _write_jsc(path: Path, table: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(JSC_DATASET, data=table)
    return path


def _jets_with_nan(data: Path) -> tuple[Path, np.ndarray]:
    """The real file's name and format, 500 jets, j_mass_mmdt NaN in 7 of them."""
    table = synthetic_jets(500)
    table["j_mass_mmdt"][BAD_ROWS] = np.nan
    return _write_jsc(data / "jsc" / JSC_FILENAME, table), table


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("machlite: error: ")]


class NaNInputs(pl.Callback):
    """Put a NaN into training sample ``row`` after the data was checked (a broken transform)."""

    def __init__(self, row: int = 5) -> None:
        self.row = row

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        trainer.datamodule.splits["train"][0][self.row, 0] = float("nan")


class BlowUp(pl.Callback):
    """Multiply the output layer by ``factor`` at the start of epoch ``epoch``: a finite blow-up."""

    def __init__(self, epoch: int = 2, factor: float = 1e8) -> None:
        self.epoch, self.factor = epoch, factor

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch:
            last = [m for m in pl_module.network.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                last.weight.mul_(self.factor)
                last.bias.mul_(self.factor)


# -- data validation at load -------------------------------------------------------------------
def test_nonfinite_jsc_field_is_named_and_no_cache_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    path, _ = _jets_with_nan(data)
    args = ["fit", "--config", TINY, "--data.data_dir", str(data), *QUIET]
    assert run(args) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    assert f"JSC file {path}: 7 of 500 rows have non-finite (NaN or infinite) values" in err[0]
    assert "in j_mass_mmdt (7 rows), e.g. rows 3, 40, 41, ..." in err[0]
    assert "--data.drop_nonfinite true" in err[0]
    cache = data / "jsc" / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # never a cache of bad arrays


def test_drop_nonfinite_drops_those_rows_and_says_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    path, table = _jets_with_nan(data)
    args = ["fit", "--config", TINY, "--data.data_dir", str(data), "--trainer.max_epochs", "1"]
    assert run([*args, "--data.drop_nonfinite", "true", *QUIET]) == 0
    said = f"dropped 7 of 500 jets of JSC file {path} with non-finite values in j_mass_mmdt"
    assert f"machlite: warning: {said}" in capsys.readouterr().err
    recorded = (Path("runs/jsc_tiny/version_0") / WARNINGS_FILE).read_text()
    assert recorded.startswith("epoch 0, step 0: " + said)
    # the cache holds exactly the clean jets (duplicates dropped as usual)
    arrays = JSCDataModule(data_dir=str(data), drop_nonfinite=True)._load_cache()
    clean = np.delete(np.stack([table[c] for c in FEATURES + LABELS], axis=1), BAD_ROWS, axis=0)
    total = sum(len(arrays[f"y_{s}"]) for s in ("train", "val", "test"))
    assert total == len(np.unique(clean.astype(np.float64), axis=0))
    assert all(np.isfinite(arrays[f"x_{s}"]).all() for s in ("train", "val", "test"))


def test_label_columns_that_are_not_one_hot_are_named(tmp_path: Path) -> None:
    table = synthetic_jets(500)
    table["j_g"][[10, 11]] = 1.0
    table["j_q"][[10, 11]] = 1.0  # two classes at once
    table["j_w"][20] = 0.5
    path = _write_jsc(tmp_path / "jsc" / "jsc_synthetic_500.h5", table)
    dm = JSCDataModule(data_dir=str(tmp_path), source="synthetic", synthetic_jets=500)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"JSC file {path}: ")
    assert f"rows have label columns {', '.join(LABELS)} that are not one-hot" in msg
    assert "values other than 0 and 1 in j_w" in msg and "fix the file" in msg
    assert ": 3 of 500 rows" in msg and "e.g. rows 10, 11, 20" in msg
    assert not (tmp_path / "jsc" / "cache").exists()


def _idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    path.write_bytes(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload)


def test_mnist_label_out_of_range_is_named(tmp_path: Path) -> None:
    """Unpacked files of the right sizes (so no MD5 is checked) whose labels include 12."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _idx(raw / "train-images-idx3-ubyte", 2051, (60_000, 28, 28), bytes(60_000 * 784))
    _idx(raw / "t10k-images-idx3-ubyte", 2051, (10_000, 28, 28), bytes(10_000 * 784))
    labels = np.arange(60_000, dtype=np.uint8) % 10
    labels[[7, 8]] = [12, 255]
    _idx(raw / "train-labels-idx1-ubyte", 2049, (60_000,), labels.tobytes())
    _idx(raw / "t10k-labels-idx1-ubyte", 2049, (10_000,), bytes(10_000))
    with pytest.raises(DataError) as err:
        MNISTDataModule(data_dir=str(tmp_path)).load_splits()
    assert str(err.value) == (
        f"MNIST file {raw / 'train-labels-idx1-ubyte'}: 2 of 60000 labels are outside the "
        "classes 0-9 (e.g. 12 at row 7): delete it (and its .gz) and run again to re-download it"
    )


class _Tiny(InMemoryDataModule):
    num_classes = 3
    input_shape = (2,)

    def __init__(self, splits: dict) -> None:
        super().__init__(data_dir="unused")
        self.given = splits

    def load_splits(self) -> dict:
        return self.given


def test_every_datamodule_checks_its_splits() -> None:
    """The shared point (InMemoryDataModule.setup): empty splits, bad values, bad labels."""
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 2, 0])
    _Tiny({"train": (x, y), "val": (x, y), "test": (x, y)}).setup()  # fine
    with pytest.raises(DataError, match=r"the _Tiny data in .*: the val split is empty"):
        _Tiny({"train": (x, y), "val": (x[:0], y[:0]), "test": (x, y)}).setup()
    bad = x.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(DataError, match=r"train split: 1 of 4 rows have non-finite .* row 2"):
        _Tiny({"train": (bad, y), "val": (x, y), "test": (x, y)}).setup()
    with pytest.raises(DataError, match=r"test split: 1 of 4 labels are outside the classes 0-2"):
        _Tiny({"train": (x, y), "val": (x, y), "test": (x, y + (y == 2))}).setup()


# -- config errors name the file ---------------------------------------------------------------
def test_broken_yaml_among_two_config_files_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "extra.yaml"
    broken.write_text("trainer:\n  max_epochs: [3, 4\nmodel: {}\n")
    assert run(["fit", "--config", TINY, "--config", str(broken)]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    assert err[0].startswith(f"machlite: error: config file {broken}, line 3, column 6: ")
    assert "while parsing a flow sequence started at line 2, column 15" in err[0]
    assert "fix the YAML" in err[0] and "<unicode string>" not in err[0]
    assert run(["fit", "--config", TINY, "--config=trainer: [oops"]) == 2  # inline text
    err = _errors(capsys.readouterr().err)
    assert err[0].startswith("machlite: error: the --config text, line 1, column 15: ")


def test_bad_key_names_the_config_file_that_introduced_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("data:\n  init_args:\n    batch_sise: 64\n")
    assert run(["fit", "--config", TINY, "--config", str(extra)]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    assert "data.batch_sise: machlite.datasets.JSCDataModule has no option" in err[0]
    assert err[0].endswith(f"(in config file {extra}) (see: machlite fit --help)")
    assert run(["fit", "--config", TINY, "--data.batch_sise", "64"]) == 2  # a flag: no file
    assert "(in config file" not in _errors(capsys.readouterr().err)[0]


def test_sweep_file_yaml_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("grid:\n  optimizer.lr: [0.1, 0.01\nseeds: [0]\n")
    with pytest.raises(ConfigError) as err:
        load_sweep_file(path)
    assert str(err.value).startswith(f"sweep file {path} is not valid YAML, line 3, column 6: ")


# -- divergence --------------------------------------------------------------------------------
@pytest.mark.parametrize("steps_per_call", [32, 1])
def test_divergence_with_non_finite_inputs_says_check_the_data(
    steps_per_call: int, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), "--data.batch_size", "64"]
    args += ["--model.steps_per_call", str(steps_per_call), "--trainer.log_every_n_steps", "1"]
    args += ["--experiment", "nan_inputs", *QUIET]
    assert run([*args, "--trainer.callbacks+=tests.test_validation.NaNInputs"]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    found = re.search(
        r"training diverged: the loss became nan at step (\d+) \(epoch 0, learning rate "
        r"[-+.e\d]+\); batch (\d+) of epoch 0 \(step (\d+)\) has non-finite inputs: check the "
        r"data",
        err[0],
    )
    assert found, err[0]
    assert found.group(1) == found.group(2) == found.group(3)  # epoch 0: step = batch
    assert "the inputs were finite" not in err[0]


def test_finite_explosion_is_a_warning_at_its_epoch(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), "--data.batch_size", "64"]
    args += ["--trainer.max_epochs", "4", "--experiment", "blowup", *QUIET]
    assert run([*args, "--trainer.callbacks+=tests.test_validation.BlowUp"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "loss exploded" in ln]
    assert len(err) == 1, err
    assert err[0].startswith("machlite: warning: the training loss exploded at epoch 2: ")
    assert "more than 1e+06x the first step's loss" in err[0] and "still finite" in err[0]
    assert "lower the learning rate (--optimizer.lr)" in err[0]
    lines = (Path("runs/blowup_synthetic/version_0") / WARNINGS_FILE).read_text().splitlines()
    exploded = [ln for ln in lines if "loss exploded" in ln]
    assert len(exploded) == 1 and exploded[0].startswith("epoch 2, step ")


# -- warnings stay visible and are kept --------------------------------------------------------
def test_warning_during_training_is_on_its_own_line_and_in_warnings_txt(
    jsc_data_dir: Path,
) -> None:
    """The collapse warning, printed while the progress bar is drawn on the same terminal."""
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), "--data.batch_size", "64"]
    args += ["--trainer.max_epochs", "3", "--optimizer", "torch.optim.SGD"]
    args += ["--optimizer.lr", "20", "--experiment", "visible"]
    args += ["--trainer.enable_model_summary", "false"]
    terminal = io.StringIO()  # stdout and stderr interleaved, as on a terminal
    with contextlib.redirect_stdout(terminal), contextlib.redirect_stderr(terminal):
        assert run(args) == 0
    text = terminal.getvalue()
    assert "%|" in text  # the progress bar was drawn
    shown = [ln.rsplit("\r", 1)[-1] for ln in text.split("\n") if "machlite: warning" in ln]
    assert len(shown) == 1 and shown[0].startswith("machlite: warning: val/acc has stayed"), shown
    assert shown[0].endswith("look at train/loss for a blow-up")
    kept = (Path("runs/visible_synthetic/version_0") / WARNINGS_FILE).read_text().splitlines()
    assert len(kept) == 1 and re.match(r"epoch 2, step \d+: val/acc has stayed at chance", kept[0])


def test_sweep_summary_flags_runs_with_warnings(tmp_path: Path) -> None:
    warned, quiet = (
        Run("lr=20", {"optimizer.lr": "20"}, 0),
        Run("lr=0.1", {"optimizer.lr": "0.1"}, 0),
    )
    sweep = SimpleNamespace(sweep_dir=tmp_path)
    for r in (warned, quiet):
        (tmp_path / r.name).mkdir(parents=True)
    (tmp_path / warned.name / WARNINGS_FILE).write_text("epoch 2, step 9: val/acc collapsed\n")
    text = warnings_markdown(sweep, [warned, quiet])
    assert "## Warnings" in text
    assert f"- `lr=20` seed 0 (`{warned.name}`): warnings: epoch 2, step 9: val/acc" in text
    assert "lr=0.1" not in text
    assert warnings_markdown(sweep, [quiet]) == ""
