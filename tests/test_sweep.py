"""machlite sweep and machlite plot: expansion, sweep files, summaries, plots, real sweeps."""

import csv
import io
import itertools
import json
import math
import shlex
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import yaml

import machlite.cli
import machlite.figures
import machlite.sweep
from machlite.errors import ConfigError, MachliteError
from machlite.models import NETWORKS
from machlite.runs.job import best_checkpoint, run_job
from machlite.runs.launcher import Launcher, progress_line
from machlite.runs.records import find_runs, read_done, run_metrics
from machlite.runs.settings import block_value, load_config, merge_config, override_block
from machlite.sweep import (
    Run,
    Sweep,
    check_settings,
    expand,
    launcher,
    parse_sweep,
    run_settings,
    run_sweep,
    write_summary,
)
from machlite.sweep.spec import is_synthetic_sweep, planned

from .conftest import CONFIGS, curves, run, synthetic, write_run

SWEEP_FILES = sorted(p.name for p in (CONFIGS / "sweeps").glob("*.yaml"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: ") and "Traceback" not in err[0]
    return err[0]


# -- expansion and arguments -------------------------------------------------------------------
def test_grid_expands_to_named_runs_with_fit_arguments(tmp_path: Path) -> None:
    sweep, _ = parse_sweep(
        [
            "--config",
            str(CONFIGS / "jsc_tiny.yaml"),
            "--grid",
            "data.batch_size=32,64,128,256",
            "--grid",
            "optimizer.lr=1e-4,1e-3",
            "--seeds",
            "0,1,2",
            "--data.source",
            "synthetic",
            "--trainer.max_epochs=2",
        ]
    )
    runs = expand(sweep)
    assert len(runs) == 4 * 2 * 3
    assert len({r.name for r in runs}) == len(runs)
    assert runs[0].name == "batch_size=32,lr=0.0001/seed_0"
    assert runs[1].name == "batch_size=32,lr=0.001/seed_0"
    assert [r.seed for r in runs] == [0] * 8 + [1] * 8 + [2] * 8  # every setting once first
    # the default folder says the data is synthetic
    assert sweep.sweep_dir == (tmp_path / "sweeps" / "jsc_tiny_sweep_synthetic").resolve()
    settings = run_settings(sweep, runs[1])
    assert settings.args("o.yaml") == [
        "fit",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--config",
        "o.yaml",
        "--seed_everything",
        "0",
    ]
    # the fixed overrides and the run's values: one nested block, values as given
    assert settings.overrides == {
        "data": {"source": "synthetic", "batch_size": "32"},
        "trainer": {"max_epochs": "2"},
        "optimizer": {"lr": "1e-3"},
    }


def test_labels_shorten_class_paths_and_keep_values_apart() -> None:
    sweep = Sweep(
        config=None,
        grid={
            "model.network": ["machlite.models.JSCTiny", "machlite.models.JSCWill"],
            "optimizer.lr": ["1e-3", "0.001"],  # equal numbers: labels fall back to the text
            "data.seed": ["0"],
            "model.seed": ["1"],  # two keys ending in "seed": full keys in the names
        },
        seeds=[5],
    )
    names = [r.name for r in expand(sweep)]
    assert names[0] == "network=JSCTiny,lr=1e-3,data.seed=0,model.seed=1/seed_5"
    assert "network=JSCWill,lr=0.001,data.seed=0,model.seed=1/seed_5" in names


def test_progress_line_estimates_time_left() -> None:
    prefix = "machlite sweep: run"
    assert progress_line(prefix, 1, 4, "a/seed_0", 0.0, 0).endswith("elapsed 0:00:00 | left ?")
    line = progress_line(prefix, 3, 4, "lr=0.1/seed_0", 120.0, 2)
    assert line == "machlite sweep: run 3/4 lr=0.1/seed_0 | elapsed 0:02:00 | left ~0:02:00"


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_sweep_file_parses_expands_and_its_first_run_is_a_valid_fit(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, _ = parse_sweep(["--sweep", str(CONFIGS / "sweeps" / name)])
    assert sweep.config is not None and sweep.config.is_file()
    assert sweep.name == Path(name).stem and sweep.grid and len(sweep.seeds) >= 3
    runs = expand(sweep)
    assert len(runs) == math.prod(len(v) for v in sweep.grid.values()) * len(sweep.seeds)
    assert len({r.name for r in runs}) == len(runs)
    # every swept/linked key exists in machlite fit: jsonargparse checks them
    for r in runs[: len(runs) // len(sweep.seeds)]:
        settings = run_settings(sweep, r)
        overrides = tmp_path / "overrides.yaml"
        overrides.write_text(settings.yaml())
        assert run([*settings.args(overrides), "--print_config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        for key, value in r.values.items():
            node = printed
            for part in key.split("."):
                node = node[part] if part in node else node["init_args"][part]
            if isinstance(block_value(value), dict) and "class_path" not in block_value(value):
                assert node == block_value(value)  # a mapping, e.g. a fixed-point format
                continue
            node = node["class_path"] if isinstance(node, dict) else node
            assert str(node) == value or float(node) == float(value)


def test_lab_sweep_files_cover_the_lab_study() -> None:
    def grid(name: str) -> dict[str, list[str]]:
        return parse_sweep(["--sweep", str(CONFIGS / "sweeps" / name)])[0].grid

    assert {int(v) for v in grid("lab1_batch_size.yaml")["data.batch_size"]} >= {32, 256, 512}
    lrs = [float(v) for v in grid("lab1_learning_rate.yaml")["optimizer.lr"]]
    assert min(lrs) == pytest.approx(1e-5) and max(lrs) == pytest.approx(1e-2)
    networks = grid("lab1_networks.yaml")["model.network"]
    assert [n.rsplit(".", 1)[1] for n in networks] == ["JSCTiny", "JSCToy", "JSCWill"]
    assert all(n.rsplit(".", 1)[1] in NETWORKS for n in networks)
    sweep = parse_sweep(["--sweep", str(CONFIGS / "sweeps" / "lab1_max_epochs.yaml")])[0]
    first = run_settings(sweep, expand(sweep)[0]).overrides
    assert first["lr_scheduler"]["init_args"]["T_max"] == first["trainer"]["max_epochs"] == "5"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "data.batch_size=32"], "give --config"),
        (["--config", "nope.yaml", "--grid", "data.batch_size=32"], "nope.yaml not found"),
        (["--config", "{tiny}", "--grid", "data.batch_size"], "write KEY=V1,V2"),
        (["--config", "{tiny}", "--seeds", "a,b"], "seeds must be integers"),
        (["--config", "{tiny}", "--jobs", "0"], "--jobs must be at least 1"),
        (["--config", "{tiny}", "--seed_everything", "3"], "use --seeds"),
        (["--config", "{tiny}", "--trainer.max_epochs"], "needs a value"),
        (["--config", "{tiny}", "stray"], "unexpected argument 'stray'"),
        (["--config", "{tiny}", "--jobs", "two"], "invalid int value"),
        (
            ["--config", "{tiny}", "--grid", "optimizer.lr=1e-3", "--optimizer.lr", "1e-2"],
            "both swept",
        ),
        (["--config", "{tiny}", "--link", "lr_scheduler.init_args.T_max=x"], "not a swept"),
        (["--sweep", "{bad_sweep}"], "unknown key(s) grids"),
        (["--sweep", "missing.yaml"], "cannot read the sweep file"),
    ],
)
def test_bad_sweep_options_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grids:\n  data.batch_size: [1]\n")
    subs = {"{tiny}": str(CONFIGS / "jsc_tiny.yaml"), "{bad_sweep}": str(bad)}
    assert run(["sweep", *[subs.get(a, a) for a in args]]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "sweeps").exists()


def test_plot_of_a_folder_without_runs_exits_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["plot", str(tmp_path)]) == 2
    assert "no runs with training curves" in one_error_line(capsys)


# -- summaries and plots from real event files -------------------------------------------------
VAL = {  # setting -> seed -> val/acc per epoch
    "batch_size=32,lr=0.001": {0: [0.5, 0.7, 0.6], 1: [0.6, 0.65, 0.8]},
    "batch_size=64,lr=0.001": {0: [0.4, 0.5, 0.55], 1: [0.45, 0.5, 0.52]},
    "batch_size=32,lr=0.01": {0: [0.3, 0.35, 0.4], 1: [0.3, 0.36, 0.41]},
}
TEST = {"batch_size=32,lr=0.001": 0.7, "batch_size=64,lr=0.001": 0.5, "batch_size=32,lr=0.01": 0.4}


@pytest.fixture()
def fake_sweep(tmp_path: Path) -> tuple[Sweep, list[Run]]:
    sweep = Sweep(
        config=CONFIGS / "jsc_toy.yaml",
        grid={"data.batch_size": ["32", "64"], "optimizer.lr": ["0.001", "0.01"]},
        seeds=[0, 1],
        name="fake",
        sweep_dir=tmp_path / "fake",
    )
    runs = [r for r in expand(sweep) if r.setting in VAL]
    for r in runs:
        write_run(sweep.sweep_dir / r.name, VAL[r.setting][r.seed], TEST[r.setting], r.seed)
    return sweep, runs


def test_run_metrics_come_from_the_event_files(fake_sweep: tuple[Sweep, list[Run]]) -> None:
    sweep, _ = fake_sweep
    found = {r.name: r for r in find_runs(sweep.sweep_dir)}
    assert set(found) == {f"{s}/seed_{k}" for s in VAL for k in (0, 1)}  # test/ folders left out
    m = run_metrics(found["batch_size=32,lr=0.001/seed_0"])
    assert m["val_acc_final"] == pytest.approx(0.6) and m["val_acc_best"] == pytest.approx(0.7)
    assert m["epochs_to_best"] == 2 and m["epochs"] == 3
    assert m["sec_per_epoch"] == pytest.approx(10.0)
    assert m["test_acc"] == pytest.approx(0.7)


def test_summary_csv_and_md_give_mean_and_std_over_seeds(
    fake_sweep: tuple[Sweep, list[Run]],
) -> None:
    sweep, runs = fake_sweep
    files = write_summary(sweep, expand(sweep), failed=[])
    with open(sweep.sweep_dir / "summary.csv") as f:
        rows = {row["setting"]: row for row in csv.DictReader(f)}
    # in grid order; the missing setting (batch_size=64,lr=0.01) has no row
    assert list(rows) == [
        "batch_size=32,lr=0.001",
        "batch_size=32,lr=0.01",
        "batch_size=64,lr=0.001",
    ]
    best = rows["batch_size=32,lr=0.001"]
    assert best["batch_size"] == "32" and best["lr"] == "0.001" and best["n"] == "2"
    assert float(best["val_acc_best_mean"]) == pytest.approx(0.75)
    assert float(best["val_acc_best_std"]) == pytest.approx(math.sqrt(0.005), rel=1e-4)
    assert float(best["val_acc_final_mean"]) == pytest.approx(0.7)
    assert float(best["test_acc_mean"]) == pytest.approx(0.705)
    assert float(best["epochs_to_best_mean"]) == pytest.approx(2.5)
    assert float(best["sec_per_epoch_mean"]) == pytest.approx(10.0)
    assert best["params"] == "327"
    with open(sweep.sweep_dir / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    md = (sweep.sweep_dir / "summary.md").read_text()
    assert "SYNTHETIC DATA" in md
    assert "| `batch_size=32,lr=0.001` | 2 | 0.7000 ± 0.1414 | 0.7500 ± 0.0707 |" in md
    assert "runs finished: 6 of 8" in md
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert table[0].endswith("| best |") and not table[1].endswith("≈ best |")
    assert "![batch_size](plots/batch_size.png)" in md and "![lr](plots/lr.png)" in md
    assert {p.name for p in files if p.suffix == ".png"} == {"batch_size.png", "lr.png"}


def test_plots_one_figure_per_swept_parameter(fake_sweep: tuple[Sweep, list[Run]]) -> None:
    sweep, _ = fake_sweep
    assert run(["plot", str(sweep.sweep_dir)]) == 0
    by_batch = matplotlib.image.imread(sweep.sweep_dir / "plots" / "batch_size.png")
    by_lr = matplotlib.image.imread(sweep.sweep_dir / "plots" / "lr.png")
    # batch_size.png: one row of panels per lr (2); lr.png: one row per batch size (2)
    assert by_batch.shape[1] == by_lr.shape[1] > 800
    assert by_batch.shape[0] == by_lr.shape[0]
    assert by_batch.std() > 0.05  # not blank


def test_plot_a_single_run_folder(fake_sweep: tuple[Sweep, list[Run]], tmp_path: Path) -> None:
    sweep, _ = fake_sweep
    one = sweep.sweep_dir / "batch_size=64,lr=0.001" / "seed_1"
    assert run(["plot", str(one), "--out", str(tmp_path / "out")]) == 0
    image = matplotlib.image.imread(tmp_path / "out" / "curves.png")
    assert image.shape[0] > 300 and image.std() > 0.05
    # a setting folder with several seeds: one line per seed run
    assert run(["plot", str(one.parent)]) == 0
    assert (one.parent / "plots" / "curves.png").is_file()


WIDTHS = ["{width: 8, frac_width: 4}", "{width: 4, frac_width: 2}"]


def width_sweep(
    tmp_path: Path, bops: list[float], sparsity: float | None = None
) -> tuple[Sweep, list[Run]]:
    """Fake runs of a two-width sweep, two seeds each; width i's runs log ``bops[i]`` (and
    ``sparsity``, when given, as a pruned run's ``model.sparsity``)."""
    sweep = Sweep(
        config=CONFIGS / "jsc_toy.yaml",
        grid={"model.quantization.by_type.linear.weight": WIDTHS},
        seeds=[0, 1],
        name="widths",
        sweep_dir=tmp_path / "widths",
    )
    runs = expand(sweep)
    for r in runs:
        i = WIDTHS.index(r.values["model.quantization.by_type.linear.weight"])
        val = [[0.5, 0.7, 0.8], [0.4, 0.5, 0.6]][i]
        hparams = {"model.bops": bops[i], "model.bits": 1000.0}
        if sparsity is not None:
            hparams["model.sparsity"] = sparsity
        write_run(sweep.sweep_dir / r.name, [v + 0.02 * r.seed for v in val], 0.5, r.seed, hparams)
    return sweep, runs


def test_accuracy_vs_bops_plot_where_the_settings_differ_in_bops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep, runs = width_sweep(tmp_path, [6720.0, 2240.0])
    settings = machlite.figures.group_runs(find_runs(sweep.sweep_dir))
    points = {label: (bops, accs) for label, bops, accs in machlite.figures.bops_points(settings)}
    assert points.keys() == {"weight=width_8_frac_width_4", "weight=width_4_frac_width_2"}
    # x: the setting's model.bops; y: each seed's final val/acc (the summary's final val/acc)
    assert points["weight=width_4_frac_width_2"][0] == 2240.0
    assert points["weight=width_4_frac_width_2"][1] == pytest.approx([0.6, 0.62])
    titles = {}
    save = machlite.figures._save

    def spy(fig: object, path: Path) -> None:
        titles[path.name] = " ".join(t.get_text() for t in fig.texts)  # the suptitle
        save(fig, path)

    monkeypatch.setattr(machlite.figures, "_save", spy)
    files = write_summary(sweep, runs, failed=[])
    png = sweep.sweep_dir / "plots" / "accuracy_vs_bops.png"
    assert png in files
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01
    assert "SYNTHETIC" in titles["accuracy_vs_bops.png"]
    assert (
        "![accuracy_vs_bops](plots/accuracy_vs_bops.png)"
        in (sweep.sweep_dir / "summary.md").read_text()
    )
    # machlite plot DIR draws it too
    assert run(["plot", str(sweep.sweep_dir), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "accuracy_vs_bops.png").is_file()


def test_no_accuracy_vs_bops_plot_when_the_bops_are_all_equal(tmp_path: Path) -> None:
    sweep, runs = width_sweep(tmp_path, [6720.0, 6720.0])
    files = write_summary(sweep, runs, failed=[])
    assert [p.name for p in files if p.suffix == ".png"] == ["weight.png"]
    assert not (sweep.sweep_dir / "plots" / "accuracy_vs_bops.png").exists()
    assert "accuracy_vs_bops" not in (sweep.sweep_dir / "summary.md").read_text()


def test_width_sweep_summary_gives_bits_and_bops_beside_accuracy(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """configs/sweeps/jsc_tiny_widths.yaml at (8, 4) and (4, 2), one short QAT fit each on
    SYNTHETIC data: summary.md and summary.csv give each width's model bits and BOPs."""
    sweep, _ = parse_sweep(
        [
            "--sweep",
            str(CONFIGS / "sweeps" / "jsc_tiny_widths.yaml"),
            "--seeds",
            "0",
            "--sweep_dir",
            str(tmp_path / "widths"),
            *synthetic(jsc_data_dir),
            "--trainer.max_epochs",
            "1",
            "--lr_scheduler.init_args.T_max",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    key = "model.quantization.by_type.linear.weight"
    widths = {yaml.safe_load(v)["width"]: v for v in sweep.grid[key]}
    assert set(widths) == {16, 8, 4}
    sweep.grid[key] = [widths[8], widths[4]]
    runs = expand(sweep)
    for r in runs:
        run_job(launcher(sweep).job(planned(sweep, r)))
    capsys.readouterr()
    write_summary(sweep, runs, failed=[])
    with open(sweep.sweep_dir / "summary.csv") as f:
        rows = {row["setting"]: row for row in csv.DictReader(f)}
    # JSC-Tiny: Linear(16, 5) at the width, BatchNorm1d(16) float (32 x 32 bits)
    # (8, 4): 80 x 8 + 5 x 8 + 1,024 bits; 5 x 16 x (8 x 8 + 8 + 8 + log2 16) BOPs
    # (4, 2): 80 x 4 + 5 x 4 + 1,024 bits; 5 x 16 x (4 x 4 + 4 + 4 + log2 16) BOPs
    eight, four = rows["weight=width_8_frac_width_4"], rows["weight=width_4_frac_width_2"]
    assert (eight["params"], eight["bits"], eight["bops"]) == ("117", "1704", "6720")
    assert (four["params"], four["bits"], four["bops"]) == ("117", "1364", "2240")
    assert 0.0 < float(four["test_acc_mean"]) <= 1.0
    md = (sweep.sweep_dir / "summary.md").read_text()
    assert "SYNTHETIC DATA" in md
    header = next(line for line in md.splitlines() if line.startswith("| setting |"))
    assert header.endswith("| s/epoch | params | bits | BOPs | vs best |")
    table = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| `")}
    assert "| 117 | 1,704 | 6,720 |" in table["| `weight=width_8_frac_width_4`"]
    assert "| 117 | 1,364 | 2,240 |" in table["| `weight=width_4_frac_width_2`"]
    with open(sweep.sweep_dir / "runs.csv") as f:
        assert sorted(int(r["bops"]) for r in csv.DictReader(f)) == [2240, 6720]
    assert "![accuracy_vs_bops](plots/accuracy_vs_bops.png)" in md  # from the real HPARAMS


# -- early stopping ------------------------------------------------------------------------------
def test_early_stopping_config_stops_on_val_loss(tmp_path: Path, jsc_data_dir: Path) -> None:
    config = yaml.safe_load((CONFIGS / "jsc_tiny_early_stopping.yaml").read_text())
    (callback,) = config["trainer"]["callbacks"]
    assert callback["class_path"] == "lightning.pytorch.callbacks.EarlyStopping"
    assert callback["init_args"]["monitor"] == "val/loss"
    # an improvement no run can make: stops after patience (1) epoch without one
    callback["init_args"].update(min_delta=10.0, patience=1)
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(strict), *synthetic(jsc_data_dir), "--experiment", "es"]
    assert run([*args, "--trainer.enable_progress_bar", "false"]) == 0
    (run_dir,) = Path("runs/es_synthetic").glob("version_*")
    assert len(curves(run_dir)["val/loss"]) == 2 < config["trainer"]["max_epochs"]


# -- real sweeps (subprocesses) --------------------------------------------------------------------
def event_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("events.*")}


@pytest.mark.slow
def test_two_by_two_seed_sweep_finishes_skips_and_redoes_unfinished(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's "done when": a 2 x 2-seed sweep on synthetic JSC, then run again."""
    args = [
        "sweep",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--grid",
        "data.batch_size=64,128",
        "--seeds",
        "0,1",
        "--name",
        "bs",
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
    ]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "4 runs in" in out and "0 already finished (skipped), 4 to run" in out
    for i in range(1, 5):
        assert f"machlite sweep: run {i}/4 " in out
    # the final table, as summary.md has it: one row per setting, SYNTHETIC said
    assert "**SYNTHETIC DATA.**" in out
    assert "| `batch_size=64` | 2 |" in out and "| `batch_size=128` | 2 |" in out
    sweep_dir = Path("sweeps/bs_synthetic")
    names = [f"batch_size={b}/seed_{s}" for s, b in itertools.product((0, 1), (64, 128))]
    assert [r.name for r in find_runs(sweep_dir)] == sorted(names)
    for name in names:
        done = json.loads((sweep_dir / name / "done.json").read_text())
        assert done["params"] == 117 and done["metrics"]["epochs"] == 2
        assert 0.0 < done["metrics"]["test_acc"] <= 1.0
        assert done["signature"]["seed_everything"] == int(name[-1])
        batch_size = int(name.split("/")[0].removeprefix("batch_size="))
        assert done["signature"]["overrides"]["data"]["batch_size"] == str(batch_size)
        overrides = yaml.safe_load((sweep_dir / name / "overrides.yaml").read_text())
        assert overrides == done["signature"]["overrides"]
        config = yaml.safe_load((sweep_dir / name / "config.yaml").read_text())
        assert config["data"]["init_args"]["batch_size"] == batch_size
        assert config["seed_everything"] == int(name[-1])
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["n"], r["seeds"]) for r in rows] == [
        ("batch_size=64", "2", "0 1"),
        ("batch_size=128", "2", "0 1"),
    ]
    assert all(0 < float(r["test_acc_mean"]) <= 1 and r["test_acc_std"] for r in rows)
    assert "SYNTHETIC DATA" in (sweep_dir / "summary.md").read_text()
    assert matplotlib.image.imread(sweep_dir / "plots" / "batch_size.png").std() > 0.05
    before = event_files(sweep_dir)

    # run again: every run is skipped, nothing is rewritten
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "4 already finished (skipped), 0 to run" in out and "run 1/" not in out
    assert event_files(sweep_dir) == before

    # a run killed midway leaves a folder without done.json: only that one is redone
    killed = sweep_dir / names[1]
    (killed / "done.json").unlink()
    (killed / "partial.tmp").write_text("left by a killed run")
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "3 already finished (skipped), 1 to run" in out
    assert f"run 1/1 {names[1]} " in out
    assert not (killed / "partial.tmp").exists() and (killed / "done.json").is_file()
    after = event_files(sweep_dir)
    assert {k: v for k, v in after.items() if not k.startswith(names[1])} == {
        k: v for k, v in before.items() if not k.startswith(names[1])
    }
    assert len([k for k in after if k.startswith(names[1] + "/events")]) == 1

    # machlite plot redraws the figures from the event files
    (sweep_dir / "plots" / "batch_size.png").unlink()
    assert run(["plot", str(sweep_dir)]) == 0
    assert (sweep_dir / "plots" / "batch_size.png").is_file()


@pytest.mark.slow
def test_failed_run_is_reported_and_the_others_finish_with_two_jobs(
    jsc_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "nets.yaml"
    sweep_file.write_text(
        f"config: {CONFIGS / 'jsc_tiny.yaml'}\n"
        "grid:\n"
        "  model.network: [machlite.models.JSCTiny, machlite.models.MNISTNet]\n"
        "  trainer.max_epochs: [1]\n"
        "link:\n"
        "  lr_scheduler.init_args.T_max: trainer.max_epochs\n"
        "seeds: [3]\n"
    )
    args = ["sweep", "--sweep", str(sweep_file), "--jobs", "2", "--sweep_dir", "nets"]
    assert run([*args, *synthetic(jsc_data_dir)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("machlite sweep: run ")]
    ends = [i for i, line in enumerate(lines) if "finished network=" in line or "FAILED" in line]
    assert len(starts) == len(ends) == 2 and max(starts) < min(ends)  # both ran at once
    (failed,) = [line for line in lines if "FAILED" in line]
    assert "network=MNISTNet,max_epochs=1/seed_3 (exit 2)" in failed
    assert "does not accept inputs" in failed
    log = Path("nets/network=MNISTNet,max_epochs=1/seed_3/run.log")
    assert log.is_file() and "does not accept inputs" in log.read_text()
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("machlite: error: 1 of 2 runs failed (network=MNISTNet")
    good = Path("nets/network=JSCTiny,max_epochs=1/seed_3")
    assert (good / "done.json").is_file()
    config = yaml.safe_load((good / "config.yaml").read_text())
    assert config["lr_scheduler"]["init_args"]["T_max"] == config["trainer"]["max_epochs"] == 1
    assert config["seed_everything"] == 3
    with open("nets/summary.csv") as f:
        assert [r["setting"] for r in csv.DictReader(f)] == ["network=JSCTiny,max_epochs=1"]
    assert "## Failed runs" in Path("nets/summary.md").read_text()


def test_link_option_and_dry_run_print_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "sweep",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--grid",
        "trainer.max_epochs=3,7",
        "--link",
        "lr_scheduler.init_args.T_max=trainer.max_epochs",
        "--seeds",
        "4",
        "--dry_run",
    ]
    assert run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("machlite fit --config ") for line in lines)
    for line, epochs in zip(lines, (3, 7), strict=True):
        args = shlex.split(line)
        assert args[:6:2] == ["machlite", "--config", "--config"]
        assert args[3] == str(CONFIGS / "jsc_tiny.yaml")
        # the run's override block, inline: the swept value and the linked key
        assert yaml.safe_load(args[5]) == {
            "trainer": {"max_epochs": str(epochs)},
            "lr_scheduler": {"init_args": {"T_max": str(epochs)}},
        }
        assert args[args.index("--seed_everything") + 1] == "4"
        assert args[args.index("--run_name") + 1] == f"max_epochs={epochs}/seed_4"
        # runnable as printed
        assert run([*args[1:], "--print_config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["max_epochs"] == epochs
        assert printed["lr_scheduler"]["init_args"]["T_max"] == epochs
        assert printed["seed_everything"] == 4
    assert not Path("sweeps").exists()  # a dry run writes nothing


def test_a_misspelt_swept_key_stops_the_sweep_before_any_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(CONFIGS / "jsc_tiny.yaml")
    assert run(["sweep", "--config", config, "--grid", "data.batch_sise=32,64"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("machlite: error: setting batch_sise=32: ") and "batch_sise" in line
    assert run(["sweep", "--config", config, "--grid", "optimizer.lr=1e-3,fast"]) == 2
    assert "setting lr=fast: " in one_error_line(capsys)
    assert not Path("sweeps").exists()


# -- each run's settings: one override block per run ------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("32", "32"),
        ("1e-3", "1e-3"),
        ("null", "null"),
        ("[1, 2e-3]", "[1, 2e-3]"),
        (
            '{"class_path": "a.B", "init_args": {"x": 1}}',
            {"class_path": "a.B", "init_args": {"x": 1}},
        ),
        ("{not yaml", "{not yaml"),
        ("machlite.models.JSCToy", "machlite.models.JSCToy"),
    ],
)
def test_block_values_are_kept_as_given_but_mappings(text: str, value: object) -> None:
    assert block_value(text) == value


def test_block_values_are_typed_by_jsonargparse_as_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Text in the block is converted by each key's type, exactly as the same flags are."""
    pairs = [
        ("experiment", "2024"),  # a text setting given a number stays text
        ("data.batch_size", "32"),
        ("optimizer.lr", "1e-3"),
        ("trainer.enable_progress_bar", "false"),
        ("collapse_warning", "null"),
    ]
    tiny = str(CONFIGS / "jsc_tiny.yaml")
    block = yaml.safe_dump(override_block(pairs))
    assert run(["fit", "--config", tiny, "--config", block, "--print_config"]) == 0
    from_block = yaml.safe_load(capsys.readouterr().out)
    flags = [item for key, value in pairs for item in (f"--{key}", value)]
    assert run(["fit", "--config", tiny, *flags, "--print_config"]) == 0
    assert from_block == yaml.safe_load(capsys.readouterr().out)
    assert (
        from_block["experiment"] == "2024" and from_block["data"]["init_args"]["batch_size"] == 32
    )
    assert from_block["optimizer"]["init_args"]["lr"] == 0.001
    assert from_block["collapse_warning"] is None


def test_override_block_is_nested_and_merges_into_the_base_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pairs = [
        ("data.source", "synthetic"),
        ("data.batch_size", "32"),
        ("lr_scheduler.init_args.T_max", "5"),
        ("model.network", "machlite.models.JSCWill"),
        ("model.network.dropout", "0.25"),
        ("optimizer.lr", "1e-2"),
    ]
    block = override_block(pairs)
    assert block == {
        "data": {"source": "synthetic", "batch_size": "32"},
        "lr_scheduler": {"init_args": {"T_max": "5"}},
        "model": {
            "network": {"class_path": "machlite.models.JSCWill", "init_args": {"dropout": "0.25"}}
        },
        "optimizer": {"lr": "1e-2"},
    }
    # the arguments of a class path given first still go under its init_args
    assert override_block(pairs[4:2:-1])["model"] == block["model"]
    # jsonargparse merges the block into jsc_tiny.yaml's subclass blocks (init_args kept)
    tiny = CONFIGS / "jsc_tiny.yaml"
    assert (
        run(["fit", "--config", str(tiny), "--config", yaml.safe_dump(block), "--print_config"])
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    data = printed["data"]
    assert data["class_path"] == "machlite.datasets.JSCDataModule"
    assert data["init_args"]["source"] == "synthetic" and data["init_args"]["batch_size"] == 32
    assert data["init_args"]["val_fraction"] == 0.1  # from the base config
    network = printed["model"]["network"]
    assert network["class_path"] == "machlite.models.JSCWill"
    assert network["init_args"]["dropout"] == 0.25
    assert printed["model"]["steps_per_call"] == 32  # from the base config
    assert printed["optimizer"]["class_path"] == "torch.optim.Adam"
    assert printed["optimizer"]["init_args"]["lr"] == 0.01
    assert printed["lr_scheduler"]["init_args"] == {"T_max": 5, "eta_min": 1e-6, "last_epoch": -1}
    # the sweep's own merge (for the synthetic-data answer) agrees with jsonargparse's
    merged = merge_config(load_config(tiny), block)
    for key in ("data", "optimizer", "lr_scheduler"):
        assert merged[key]["class_path"] == printed[key]["class_path"]
        assert merged[key]["init_args"].keys() <= printed[key]["init_args"].keys()
        for name, value in merged[key]["init_args"].items():  # text, as typed by jsonargparse
            typed = printed[key]["init_args"][name]
            assert type(typed)(value) == typed
    assert merged["model"]["network"]["init_args"] == {"dropout": "0.25"}


def test_synthetic_data_is_read_from_each_runs_merged_config(tmp_path: Path) -> None:
    tiny = CONFIGS / "jsc_tiny.yaml"

    def sweep(grid: dict, overrides: list | None = None, config: Path = tiny) -> Sweep:
        return Sweep(config=config, grid=grid, seeds=[0, 1], overrides=overrides or [])

    assert not is_synthetic_sweep(sweep({"data.batch_size": ["32", "64"]}))
    assert is_synthetic_sweep(sweep({"data.batch_size": ["32"]}, [("data.source", "synthetic")]))
    assert is_synthetic_sweep(sweep({"data.source": ["cernbox", "synthetic"]}))
    base = yaml.safe_load(tiny.read_text())
    base["data"]["init_args"]["source"] = "synthetic"
    synthetic_config = tmp_path / "synthetic.yaml"
    synthetic_config.write_text(yaml.safe_dump(base))
    assert is_synthetic_sweep(sweep({"data.batch_size": ["32"]}, config=synthetic_config))
    back = [("data.init_args.source", "cernbox")]
    assert not is_synthetic_sweep(sweep({"data.batch_size": ["32"]}, back, synthetic_config))
    # another data module replaces the block: its source is not the old one's
    other = sweep({"data": ["machlite.datasets.MNISTDataModule"]}, config=synthetic_config)
    assert not is_synthetic_sweep(other)


def test_finished_runs_are_skipped_unless_their_settings_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(
        Launcher, "run_all", lambda self, todo: started.append([r.name for r in todo])
    )
    files = [tmp_path / "summary.csv", tmp_path / "runs.csv", tmp_path / "summary.md"]
    monkeypatch.setattr(machlite.sweep, "write_summary", lambda sweep, runs, failed: files)
    sweep = Sweep(
        config=CONFIGS / "jsc_tiny.yaml",
        grid={"data.batch_size": ["32", "64"]},
        seeds=[0],
        overrides=[("trainer.max_epochs", "2")],
        sweep_dir=tmp_path / "sweep",
    )
    runs = expand(sweep)
    for r in runs:
        (sweep.sweep_dir / r.name).mkdir(parents=True)
        done = {"signature": run_settings(sweep, r).signature()}
        (sweep.sweep_dir / r.name / "done.json").write_text(json.dumps(done))

    def todo(sweep: Sweep) -> tuple[list[str], str]:
        out = io.StringIO()
        run_sweep(sweep, out=out)
        return started.pop(), out.getvalue()

    names, out = todo(sweep)
    assert names == [] and "2 already finished (skipped), 0 to run" in out
    sweep.overrides = [("trainer.max_epochs", "3")]  # another value
    names, out = todo(sweep)
    assert names == [r.name for r in runs]
    assert f"{runs[0].name} finished with other arguments; redoing it" in out
    sweep.overrides = [("trainer.max_epochs", "2")]
    sweep.config = CONFIGS / "jsc_toy.yaml"  # another base config
    assert todo(sweep)[0] == [r.name for r in runs]
    sweep.config = CONFIGS / "jsc_tiny.yaml"
    sweep.seeds = [0, 1]  # only the new seed's runs
    assert todo(sweep)[0] == [r.name for r in expand(sweep) if r.seed == 1]
    # a done.json from before the YAML overrides stored the fit flags: still finished
    sweep.seeds = [0]
    for r in runs:
        old = ["fit", "--config", str(sweep.config), "--trainer.max_epochs", "2"]
        old += ["--data.batch_size", r.values["data.batch_size"], "--seed_everything", "0"]
        (sweep.sweep_dir / r.name / "done.json").write_text(json.dumps({"signature": old}))
    names, out = todo(sweep)
    assert names == [] and "2 already finished (skipped), 0 to run" in out
    sweep.overrides = [("trainer.max_epochs", "3")]  # and redone when its settings changed
    assert todo(sweep)[0] == [r.name for r in runs]


def test_check_settings_names_the_setting_and_key_without_running_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def instantiate(*args: object, **kwargs: object) -> None:
        raise AssertionError("check_settings must not build the model, data or trainer")

    monkeypatch.setattr(machlite.cli.MachliteCLI, "instantiate_classes", instantiate)
    sweep = Sweep(
        config=CONFIGS / "jsc_tiny.yaml",
        grid={"optimizer.lr": ["1e-3", "fast"], "data.batch_size": ["32"]},
        seeds=[0, 1],
        sweep_dir=tmp_path / "sweep",
    )
    with pytest.raises(ConfigError) as err:
        check_settings(sweep)
    message = str(err.value)
    assert message.startswith("setting lr=fast,batch_size=32: optimizer.lr: ")
    assert "float" in message and "'fast'" in message and "\n" not in message
    sweep.overrides = [("data.batch_sise", "3")]
    sweep.grid["optimizer.lr"] = ["1e-3"]
    with pytest.raises(ConfigError, match=r"^setting lr=0.001,batch_size=32: data.batch_sise: "):
        check_settings(sweep)
    sweep.overrides = [("trainer.max_epochs", "2")]
    check_settings(sweep)  # every setting parses
    assert not any(tmp_path.iterdir())  # nothing written: no sweep, run or overrides file


# -- one run (the job) ---------------------------------------------------------------------------
def test_best_checkpoint_is_the_callbacks_else_last(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    best, later, last = (
        folder / name
        for name in (
            "best-epoch00-val_acc0.5000.ckpt",
            "best-epoch01-val_acc0.4000.ckpt",
            "last.ckpt",
        )
    )
    for path in (best, later, last):
        path.write_bytes(b"not read")
    callback = SimpleNamespace(best_model_path=str(best), last_model_path=str(last))
    trainer = SimpleNamespace(checkpoint_callback=callback)
    assert best_checkpoint(trainer, tmp_path) == best
    callback.best_model_path = ""  # e.g. --checkpoint.save_top_k 0
    assert best_checkpoint(trainer, tmp_path) == last
    assert best_checkpoint(SimpleNamespace(checkpoint_callback=None), tmp_path) == last
    last.unlink()
    with pytest.raises(MachliteError, match="saved no checkpoint"):
        best_checkpoint(trainer, tmp_path)


def test_a_job_fits_its_override_file_and_tests_the_callbacks_best_checkpoint(
    tmp_path: Path, jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep, _ = parse_sweep(
        [
            "--config",
            str(CONFIGS / "jsc_tiny.yaml"),
            "--grid",
            "trainer.max_epochs=3",
            "--grid",
            "optimizer.lr=2e-2",
            "--link",
            "lr_scheduler.init_args.T_max=trainer.max_epochs",
            "--seeds",
            "7",
            "--sweep_dir",
            str(tmp_path / "sweep"),
            *synthetic(jsc_data_dir),
            "--data.batch_size",
            "128",
            "--trainer.log_every_n_steps=1",
        ]
    )
    (one,) = expand(sweep)
    job = launcher(sweep).job(planned(sweep, one))
    run_dir = Path(job["run_dir"])
    assert run_dir == sweep.sweep_dir / "max_epochs=3,lr=0.02" / "seed_7"
    # the run's overrides: one nested YAML file, values as given
    text = (run_dir / "overrides.yaml").read_text()
    assert yaml.safe_load(text) == {
        "data": {
            "source": "synthetic",
            "data_dir": str(jsc_data_dir),
            "synthetic_jets": "3000",
            "batch_size": "128",
        },
        "trainer": {"log_every_n_steps": "1", "max_epochs": "3"},
        "optimizer": {"lr": "2e-2"},
        "lr_scheduler": {"init_args": {"T_max": "3"}},
    }
    assert job["args"][:5] == [
        "fit",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--config",
        str(run_dir / "overrides.yaml"),
    ]

    calls = []
    real = machlite.cli.run_lightning

    def spy(args: list[str]) -> machlite.cli.MachliteCLI:
        cli = real(args)
        calls.append((list(args), cli))
        return cli

    monkeypatch.setattr(machlite.cli, "run_lightning", spy)
    record = run_job(job)
    (fit_args, fit), (test_args, _) = calls
    assert fit_args[0] == "fit" and test_args[0] == "test"
    best = fit.trainer.checkpoint_callback.best_model_path
    assert Path(best).parent == run_dir / "checkpoints" and Path(best).name.startswith("best-")
    assert test_args[test_args.index("--ckpt_path") + 1] == best
    assert record["tested_checkpoint"] == Path(best).name
    assert read_done(run_dir) == json.loads(json.dumps(record))
    # the checkpoint of the epoch with the best val/acc (from the event files)
    epoch = int(record["metrics"]["epochs_to_best"]) - 1
    assert Path(best).name.startswith(f"best-epoch{epoch:02d}-")
    assert record["signature"] == run_settings(sweep, one).signature()
    # the run's saved config shows the overridden values, merged into the base config
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = config["data"]["init_args"]
    assert (data["source"], data["batch_size"], data["synthetic_jets"]) == ("synthetic", 128, 3000)
    assert data["val_fraction"] == 0.1
    assert config["optimizer"]["init_args"]["lr"] == 0.02
    assert config["trainer"]["max_epochs"] == config["lr_scheduler"]["init_args"]["T_max"] == 3
    assert config["seed_everything"] == 7
    assert 0.0 < record["metrics"]["test_acc"] <= 1.0


def test_summary_keeps_a_pruned_settings_sparsity_as_a_fraction(tmp_path: Path) -> None:
    sweep, runs = width_sweep(tmp_path, [6720.0, 2240.0], sparsity=0.5)
    write_summary(sweep, runs, failed=[])
    with open(sweep.sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {float(row["sparsity"]) for row in rows} == {0.5}  # not rounded to 0
    md = (sweep.sweep_dir / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| setting |"))
    assert "| params | bits | BOPs | sparsity |" in header
    assert "| 0.50 |" in md
