"""Hardware objectives (issue #25): each trial's tested checkpoint through the RTL flow.

The fast tests check the space and sweep files' ``hardware`` blocks and objectives, the
missing-tool line before any trial (the tool lookup monkeypatched to absent), a float
network's trials failing with their reason while the search goes on, the objective reader
and the sweep summary's columns, and JSC-Toy's width multiplier. The slow ones run real
searches with real yosys on JSC-Tiny at (4, 2) (about 4 s of synthesis a trial).
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from machlite.atomic import atomic_write_json
from machlite.errors import ConfigError
from machlite.models import JSCToy, JSCWill, count_parameters
from machlite.runs.hardware import HardwareOptions, hardware_value, parse_hardware
from machlite.runs.layout import RunFolder
from machlite.search.space import load_space

from .conftest import CONFIGS, run, synthetic, write_run

optuna = pytest.importorskip("optuna", reason='needs the search extra: pip install -e ".[search]"')

needs_tools = pytest.mark.skipif(
    shutil.which("yosys") is None, reason="yosys is not installed (apt-get install -y yosys)"
)
HW4 = CONFIGS / "quant" / "hw_int4_2.yaml"
QUIET = ["--trainer.enable_progress_bar", "false"]
SPACE = """
params:
  optimizer.lr: [0.001, 0.01]
objectives:
  val/acc: max
  luts: min
"""


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hw_space.yaml"
    path.write_text(text)
    return path


def search_args(space: Path, jsc_data_dir: Path, config: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--config",
        str(config),
        "--space",
        str(space),
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "1",
        *QUIET,
        "--search_dir",
        "s",
        *extra,
    ]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: ") and "Traceback" not in err[0]
    return err[0]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def study_of(search_dir: Path) -> object:
    from machlite.search.study import default_storage, open_storage

    storage = open_storage(default_storage(search_dir))
    return optuna.load_study(study_name="hw_space", storage=storage)


# -- the space file -----------------------------------------------------------------------------
def test_space_takes_hardware_objectives_and_the_hardware_block(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, SPACE))
    assert space.objectives == {"val/acc": "maximize", "luts": "minimize"}
    assert space.hardware == HardwareOptions()  # a hardware objective: the defaults
    assert space.signature()["hardware"]["synth_timeout"] == 300.0
    text = SPACE.replace("luts: min", "ffs: min\n  dsps: min\n  latency_cycles: min")
    text += "hardware: {synth_timeout: 60, latency_cutoff: 2.5, rtl_sim: true, samples: 200}\n"
    space = load_space(write_space(tmp_path, text))
    assert space.hardware == HardwareOptions(60, 2.5, True, 200, False)
    assert list(space.objectives) == ["val/acc", "ffs", "dsps", "latency_cycles"]
    plain = load_space(write_space(tmp_path, SPACE.replace("  luts: min\n", "")))
    assert plain.hardware is None and "hardware" not in plain.signature()
    block_only = load_space(
        write_space(tmp_path, SPACE.replace("  luts: min\n", "") + "hardware: {}\n")
    )
    assert block_only.hardware == HardwareOptions()  # measured, not optimised


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            "{synth_timeout: 0}",
            "hardware: synth_timeout must be a number of seconds above 0, got 0",
        ),
        ("{synth_timeout: soon}", "synth_timeout must be a number of seconds above 0"),
        ("{latency_cutoff: -1}", "latency_cutoff must be a number of ns, 0 or more, got -1"),
        ("{rtl_sim: 'yes'}", "rtl_sim must be true or false, got 'yes'"),
        ("{samples: 0}", "samples must be an int >= 1, got 0"),
        ("{samples: 2.5}", "samples must be an int >= 1, got 2.5"),
        (
            "{synth: false}",
            "hardware: unknown key(s) synth; allowed: synth_timeout, latency_cutoff",
        ),
        ("[300]", "hardware must be a mapping like {synth_timeout: 300, samples: 1000}"),
    ],
)
def test_bad_hardware_blocks_are_one_line(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_space(write_space(tmp_path, SPACE + f"hardware: {block}\n"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_objective_names_the_hardware_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nor one of .*luts, ffs, dsps, latency_cycles"):
        load_space(write_space(tmp_path, SPACE.replace("luts", "lut")))


# -- tools missing: one line before any trial ---------------------------------------------------
@pytest.mark.parametrize("missing", ["yosys", "alkaid"])
def test_a_missing_tool_stops_the_search_before_any_trial(
    tmp_path: Path,
    jsc_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
) -> None:
    from machlite.hw import tools

    if missing == "yosys":
        which = tools.shutil.which
        monkeypatch.setattr(tools.shutil, "which", lambda n: None if n == "yosys" else which(n))
    else:
        monkeypatch.setitem(sys.modules, "alkaid", None)  # import alkaid: ImportError
    space = write_space(tmp_path, SPACE)
    assert run(search_args(space, jsc_data_dir, CONFIGS / "jsc_tiny.yaml")) == 2
    line = one_error_line(capsys)
    assert line.startswith("machlite: error: the objective luts")
    if missing == "yosys":
        assert "needs yosys, which is not on PATH: apt-get install -y yosys" in line
    else:
        assert "needs alkaid, which is not installed: pip install -e '.[hw]'" in line
    assert not (tmp_path / "s").exists()  # no study, no trial


def test_a_missing_tool_stops_a_hardware_sweep_before_any_run(
    tmp_path: Path,
    jsc_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from machlite.hw import tools

    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    sweep = tmp_path / "hw_sweep.yaml"
    sweep.write_text(
        f"config: {CONFIGS / 'jsc_tiny.yaml'}\ngrid: {{data.batch_size: [64]}}\n"
        "hardware: {synth_timeout: 30}\n"
    )
    args = ["sweep", "--sweep", str(sweep), *synthetic(jsc_data_dir), "--sweep_dir", "w"]
    assert run(args) == 2
    line = one_error_line(capsys)
    assert "the sweep's hardware block: synthesis needs yosys" in line
    assert not (tmp_path / "w").exists()


def test_sweep_files_take_a_hardware_block(tmp_path: Path) -> None:
    from machlite.sweep.parsing import load_sweep_file

    path = tmp_path / "s.yaml"
    path.write_text("grid: {data.batch_size: [64]}\nhardware: {samples: 100}\n")
    assert load_sweep_file(path)["hardware"] == HardwareOptions(samples=100)
    path.write_text("grid: {data.batch_size: [64]}\nhardware: {samples: -1}\n")
    with pytest.raises(ConfigError, match=r"sweep file .*: hardware: samples must be an int"):
        load_sweep_file(path)
    assert parse_hardware(True, "x") == HardwareOptions()


# -- failures: the trial fails with its reason, the search goes on ------------------------------
@needs_tools
def test_a_float_network_fails_each_trial_with_its_reason_and_the_search_goes_on(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("alkaid")
    space = write_space(tmp_path, SPACE)  # jsc_tiny.yaml is float: no exact design
    assert run(search_args(space, jsc_data_dir, CONFIGS / "jsc_tiny.yaml", "--trials", "1")) == 1
    line = one_error_line(capsys)
    assert "3 trials in a row failed, so the search stopped; the last, trial 2: " in line
    assert "hardware: layer seq_blocks.0 (BatchNorm1d) is float" in line
    table = rows(tmp_path / "s" / "trials.csv")  # each failure replaced by a new trial
    assert [r["state"] for r in table] == ["FAIL"] * 3
    assert all("is float; the RTL computes in fixed point only" in r["note"] for r in table)
    for r in table:  # nothing lost: the fit and its test are kept
        run_dir = RunFolder(tmp_path / "s" / r["folder"] / "seed_0")
        assert list(run_dir.checkpoints.glob("*.ckpt")) and run_dir.test.is_dir()
        assert not run_dir.done.exists() and not run_dir.hardware.exists()


# -- reading hardware.json ----------------------------------------------------------------------
def test_the_objective_reader_and_the_sweep_summary_read_hardware_json(tmp_path: Path) -> None:
    from machlite.search.loop import objective_value
    from machlite.sweep.spec import Sweep, expand
    from machlite.sweep.summary import summarize, summary_markdown

    sweep = Sweep(None, {"data.batch_size": ["64"]}, [0, 1], sweep_dir=tmp_path)
    for i, run_ in enumerate(expand(sweep)):
        run_dir = tmp_path / run_.name
        run_dir.mkdir(parents=True)
        write_run(run_dir, [0.5, 0.6], 0.6, run_.seed)
        record = {"luts": 100 + 20 * i, "ffs": 3, "dsps": 0, "latency_cycles": 2}
        atomic_write_json(RunFolder(run_dir).hardware, record)
    first = tmp_path / expand(sweep)[0].name
    assert objective_value("luts", "minimize", first) == 100.0
    assert objective_value("latency_cycles", "minimize", first) == 2.0
    assert hardware_value("luts", tmp_path) is None  # no hardware.json
    run_rows, setting_rows = summarize(sweep, expand(sweep))
    assert [r["luts"] for r in run_rows] == [100.0, 120.0]
    assert setting_rows[0]["luts"] == 110.0 and setting_rows[0]["ffs"] == 3.0
    text = summary_markdown(sweep, setting_rows, 2, [], [], True)
    assert "| yosys LUTs | yosys FFs | yosys DSPs | latency (cycles) |" in text
    assert "not Vivado" in text
    (RunFolder(first).hardware).unlink()
    (RunFolder(tmp_path / expand(sweep)[1].name).hardware).unlink()
    assert "luts" not in summarize(sweep, expand(sweep))[1][0]  # no file: no columns


# -- the width multiplier -----------------------------------------------------------------------
def test_width_multiplier_defaults_to_the_original_networks() -> None:
    assert count_parameters(JSCToy()) == count_parameters(JSCToy(width=1.0)) == 327
    assert count_parameters(JSCWill()) == count_parameters(JSCWill(width=1)) == 3231
    wide = JSCToy(width=2.0)
    assert [m.out_features for m in wide.modules() if hasattr(m, "out_features")] == [16, 16, 5]
    assert [m.out_features for m in JSCToy(width=0.5).modules() if hasattr(m, "out_features")] == [
        4,
        4,
        5,
    ]
    assert count_parameters(JSCWill(width=0.5)) < 3231
    with pytest.raises(ValueError, match="width .* must be a number above 0"):
        JSCToy(width=0)


# -- real searches, real yosys ------------------------------------------------------------------
@pytest.mark.slow
@needs_tools
def test_a_two_trial_search_on_accuracy_and_luts_writes_the_pareto_front(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("alkaid")
    from machlite.cli import check_args

    space = write_space(tmp_path, SPACE + "hardware: {synth_timeout: 120, samples: 200}\n")
    args = search_args(space, jsc_data_dir, CONFIGS / "jsc_tiny.yaml", "--sampler", "grid")
    assert run([*args, "--model.quantization", str(HW4), "--sampler_seed", "0"]) == 0
    assert "luts" in capsys.readouterr().out
    study = study_of(tmp_path / "s")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    table = rows(tmp_path / "s" / "trials.csv")
    for trial, row in zip(study.trials, table, strict=True):
        run_dir = RunFolder(tmp_path / "s" / row["folder"] / "seed_0")
        record = json.loads(run_dir.hardware.read_text())
        assert record["luts"] > 0 and trial.values[1] == record["luts"] == float(row["luts"])
        assert record["latency_cycles"] == 0 and record["dsps"] == 0  # combinational, no DSPs
        assert record["design"]["identical"] == 1.0 and record["design"]["samples"] == 200
        done = json.loads(run_dir.done.read_text())
        assert Path(record["checkpoint"]).name == done["tested_checkpoint"]
        assert done["hardware_seconds"] > 0 and "not Vivado" in record["tool"]
        assert not run_dir.hardware_dir.exists()  # the Verilog project removed (keep_rtl false)
    assert matplotlib.image.imread(tmp_path / "s" / "plots" / "pareto.png").std() > 0.01
    front = [t.number for t in study.best_trials]
    configs = sorted((tmp_path / "s" / "pareto").glob("trial_*.yaml"))
    assert [int(p.stem.split("_")[1]) for p in configs] == sorted(front)
    for path in configs:
        text = path.read_text()
        assert "SYNTHETIC DATA" in text and "not Vivado" in text
        config = yaml.safe_load(text)
        assert config["model"]["quantization"]  # the formats the trial trained at
        check_args(["fit", "--config", str(path)])  # runnable as machlite fit takes it
    assert "pareto/trial_N.yaml" in (tmp_path / "s" / "trials.md").read_text()


@pytest.mark.slow
@needs_tools
def test_a_synthesis_past_its_timeout_fails_the_trial_with_one_line(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("alkaid")
    space = write_space(tmp_path, SPACE + "hardware: {synth_timeout: 0.01, samples: 100}\n")
    args = search_args(space, jsc_data_dir, CONFIGS / "jsc_tiny.yaml", "--trials", "1")
    assert run([*args, "--model.quantization", str(HW4)]) == 1
    line = one_error_line(capsys)
    assert "yosys did not finish within synth_timeout 0.01 s (the hardware block)" in line
    table = rows(tmp_path / "s" / "trials.csv")
    assert [r["state"] for r in table] == ["FAIL"] * 3
    assert all("yosys did not finish within synth_timeout 0.01 s" in r["note"] for r in table)
    for r in table:  # the fit, test and yosys's log are kept
        run_dir = RunFolder(tmp_path / "s" / r["folder"] / "seed_0")
        assert list(run_dir.checkpoints.glob("*.ckpt")) and run_dir.test.is_dir()
        assert (run_dir.hardware_dir / "yosys.log").is_file()


@pytest.mark.slow
@needs_tools
def test_a_hardware_sweep_has_the_columns_and_skips_finished_runs(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("alkaid")
    sweep = tmp_path / "hw_sweep.yaml"
    sweep.write_text(
        f"config: {CONFIGS / 'jsc_tiny.yaml'}\ngrid: {{optimizer.lr: [0.001]}}\n"
        f"overrides: {{model.quantization: {HW4}, trainer.max_epochs: 1}}\n"
        "hardware: {samples: 100}\n"
    )
    args = ["sweep", "--sweep", str(sweep), *synthetic(jsc_data_dir), *QUIET, "--sweep_dir", "w"]
    assert run(args) == 0
    row = rows(tmp_path / "w" / "summary.csv")[0]
    record = json.loads((tmp_path / "w" / "lr=0.001" / "seed_0" / "hardware.json").read_text())
    assert float(row["luts"]) == record["luts"] > 0 and row["latency_cycles"] == "0"
    assert "| yosys LUTs |" in (tmp_path / "w" / "summary.md").read_text()
    capsys.readouterr()
    assert run(args) == 0  # finished with its hardware.json: skipped
    assert "1 already finished (skipped), 0 to run" in capsys.readouterr().out
