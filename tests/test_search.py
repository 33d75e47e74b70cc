"""machlite search: the space file, bad input, real searches, resume, shared storages, pruning."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import yaml

from machlite.errors import ConfigError
from machlite.runs.layout import PRUNED_FILE
from machlite.runs.settings import cli_value
from machlite.search.parsing import check_space, parse_search, sample_points
from machlite.search.space import load_space, parse_objectives, parse_param

from .conftest import CONFIGS, REPO, curves, run, synthetic

optuna = pytest.importorskip("optuna", reason='needs the search extra: pip install -e ".[search]"')

SPACE = """
params:
  optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  data.batch_size: {type: categorical, choices: [64, 256]}
objectives:
  val/acc: max
"""


def write_space(tmp_path: Path, text: str = SPACE, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def search_args(space: Path, jsc_data_dir: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "search",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--space",
        str(space),
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: ") and "Traceback" not in err[0]
    return err[0]


def load(search_dir: Path, storage: str | None = None, name: str = "space") -> object:
    from machlite.search.study import default_storage, open_storage

    storage = storage or default_storage(search_dir)
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def states(study: object) -> list[str]:
    return [
        t.state.name for t in study.get_trials() if not t.user_attrs.get("machlite_over_budget")
    ]


def trial_rows(search_dir: Path) -> list[dict[str, str]]:
    with open(search_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def cli(args: list[str], **kwargs: object) -> subprocess.Popen:
    """``machlite ARGS`` in its own process (and process group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "machlite", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


# -- the space file ------------------------------------------------------------------------------
def test_space_file_gives_distributions_grids_and_probe_points(tmp_path: Path) -> None:
    space = load_space(
        write_space(
            tmp_path,
            SPACE.replace(
                "objectives:",
                "  trainer.max_epochs: {type: int, low: 2, high: 6, step: 2}\n"
                "  model.network.dropout: {type: float, low: 0.0, high: 0.5, step: 0.25}\n"
                "objectives:",
            ),
        ),
        cli_value,
    )
    assert space.keys == [
        "optimizer.lr",
        "data.batch_size",
        "trainer.max_epochs",
        "model.network.dropout",
    ]
    assert space.objectives == {"val/acc": "maximize"}
    lr, bs, epochs, dropout = space.params
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert bs.distribution() == optuna.distributions.CategoricalDistribution([64, 256])
    assert epochs.grid() == [2, 4, 6] and dropout.grid() == [0.0, 0.25, 0.5]
    assert lr.grid() is None  # a float range without a step has no grid
    probes = lr.probes()
    assert probes[0] == 1e-4 and probes[-1] == 1e-2 and not float(probes[1]).is_integer()
    points = sample_points(space)
    assert len(points) == 3  # as many as the longest probe list; every choice appears
    assert {p["data.batch_size"] for p in points} == {64, 256}
    assert parse_objectives({"val/acc": "max", "epoch_time": "min"}) == {
        "val/acc": "maximize",
        "epoch_time": "minimize",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIGS / "search").glob("*.yaml")))
def test_space_files_parse_and_every_sample_point_is_a_valid_fit(name: str) -> None:
    base = {
        "bit_widths.yaml": "quant/jsc_tiny_qat.yaml",
        "hardware_pareto.yaml": "quant/jsc_toy_qat.yaml",
        "mnist_lr_batch_size.yaml": "mnist.yaml",
    }
    data = (
        ["--data.data_dir", "data"] if name.startswith("mnist") else ["--data.source", "synthetic"]
    )
    search = parse_search(["--space", str(CONFIGS / "search" / name), *data])
    assert search.config == (CONFIGS / base.get(name, "jsc_tiny.yaml")).resolve()
    assert search.space.params and search.space.objectives
    check_space(search)  # raises ConfigError on a point machlite fit would not take


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "float", "low": 1, "high": 0.1}, "must be below high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
        ({"type": "int", "low": 1.5, "high": 4}, "whole number"),
        ({"type": "categorical", "choices": []}, "categorical needs choices"),
        ({"type": "normal", "mu": 0}, "needs a distribution"),
        ({"type": "float", "low": 0.1, "high": 1, "scale": "log"}, "unknown field(s) scale"),
    ],
)
def test_bad_distributions_are_config_errors(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_param("optimizer.lr", spec)


@pytest.mark.parametrize(
    ("case", "space", "extra", "message"),
    [
        (
            "unknown key",
            SPACE.replace("data.batch_size", "data.batch_sise"),
            [],
            "space point optimizer.lr=0.0001,data.batch_sise=64: data.batch_sise: ",
        ),
        (
            "float range on an int key",
            SPACE.replace(
                "{type: categorical, choices: [64, 256]}", "{type: float, low: 32, high: 256}"
            ),
            [],
            "data.batch_size",
        ),
        (
            "text choices on a float key",
            SPACE.replace(
                "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
                "{type: categorical, choices: [fast, slow]}",
            ),
            [],
            "optimizer.lr",
        ),
        ("empty space", "params: {}\nobjectives: {val/acc: max}\n", [], "the space is empty"),
        ("bad direction", SPACE.replace("val/acc: max", "val/acc: up"), [], "max or min"),
        (
            "unreachable storage",
            SPACE,
            ["--storage", "postgresql://machlite:secret@127.0.0.1:1/search"],
            "cannot open the storage postgresql+psycopg://machlite:***@127.0.0.1:1/search: "
            "connection",
        ),
        ("storage driver unknown", SPACE, ["--storage", "nosuchdb://x/y"], "cannot open the"),
        ("searched and fixed", SPACE, ["--optimizer.lr", "0.1"], "both searched"),
        (
            "prune with two objectives",
            SPACE.replace("val/acc: max", "val/acc: max\n  epoch_time: min"),
            ["--prune"],
            "--prune needs one objective",
        ),
        ("grid of a float range", SPACE, ["--sampler", "grid"], "float range without a step"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_runs(
    case: str,
    space: str,
    extra: list[str],
    message: str,
    tmp_path: Path,
    jsc_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_space(tmp_path, space)
    assert run(search_args(path, jsc_data_dir, *extra)) == 2, case
    line = one_error_line(capsys)
    assert message in line, line
    assert "secret" not in line
    assert not list(tmp_path.rglob("seed_0")), "a trial ran"
    assert not list(tmp_path.rglob("trials.csv"))


def test_without_optuna_the_command_names_the_extra(
    tmp_path: Path, jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    assert run(search_args(write_space(tmp_path), jsc_data_dir)) == 1
    assert 'pip install -e ".[search]"' in one_error_line(capsys)
    assert not (tmp_path / "searches").exists()


def test_search_dir_and_storage_defaults(tmp_path: Path, jsc_data_dir: Path) -> None:
    search = parse_search(search_args(write_space(tmp_path), jsc_data_dir)[1:])
    assert search.search_dir == (tmp_path / "searches" / "space_synthetic").resolve()
    assert search.storage == f"sqlite:///{search.search_dir / 'study.db'}"
    assert search.prune and search.trials == 20 and search.seeds == [0]
    from machlite.search.loop import launcher

    assert launcher(search).root == search.search_dir  # the trials' runs go there
    planned = search.trial_run("trial=0000", {"optimizer.lr": 0.5}, 3)
    assert planned.name == "trial=0000/seed_3" and planned.settings.seed == 3


# -- the pruning callback, against a real study ---------------------------------------------------
def test_trial_pruner_reports_each_epoch_and_raises_when_pruned(tmp_path: Path) -> None:
    import torch

    from machlite.search.pruning import TrialPruned, TrialPruner
    from machlite.search.study import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=open_storage(url),
        study_name="s",
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=0.5),
    )
    trial = study.ask()
    pruner = {"type": "threshold", "lower": 0.5}
    callback = TrialPruner(url, "s", trial.number, str(tmp_path), pruner=pruner)
    trainer = SimpleNamespace(sanity_checking=True, callback_metrics={}, current_epoch=0)
    callback.on_validation_end(trainer, None)  # the sanity check is not an epoch
    trainer.sanity_checking = False
    for epoch, acc in enumerate([0.7, 0.6]):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/acc": torch.tensor(acc)}
        callback.on_validation_end(trainer, None)
    assert not (tmp_path / PRUNED_FILE).exists()
    trainer.current_epoch, trainer.callback_metrics = 2, {"val/acc": torch.tensor(0.2)}
    with pytest.raises(TrialPruned, match="pruned after epoch 3: val/acc 0.2000"):
        callback.on_validation_end(trainer, None)
    assert yaml.safe_load((tmp_path / PRUNED_FILE).read_text())["epoch"] == 3
    reported = study.trials[trial.number].intermediate_values
    assert reported == pytest.approx({0: 0.7, 1: 0.6, 2: 0.2})


# -- real searches on synthetic JSC ---------------------------------------------------------------
@pytest.mark.slow  # about 2.5 minutes on the 2-core machine
def test_four_trial_tpe_search_writes_every_output_and_best_yaml_reproduces(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path)
    args = search_args(space, jsc_data_dir, "--trials", "4", "--sampler_seed", "0", "--no-prune")
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "0 finished, 4 to run, 1 at a time" in out
    search_dir = tmp_path / "searches" / "space_synthetic"
    study = load(search_dir)
    assert states(study) == ["COMPLETE"] * 4
    rows = trial_rows(search_dir)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    for row, trial in zip(rows, study.trials, strict=True):
        folder = search_dir / row["folder"]
        assert row["folder"].startswith(f"trial={trial.number:04d},lr=")
        assert f"batch_size={trial.params['data.batch_size']}" in row["folder"]
        run_dir = folder / "seed_0"
        assert (run_dir / "done.json").is_file() and (run_dir / "test").is_dir()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["optimizer"]["init_args"]["lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert config["data"]["init_args"]["batch_size"] == trial.params["data.batch_size"]
        val = [v for _, v in curves(run_dir)["val/acc"]]
        assert float(row["val/acc"]) == pytest.approx(max(val), rel=1e-5)
        assert trial.values == [pytest.approx(max(val))]
    md = (search_dir / "trials.md").read_text()
    assert "SYNTHETIC DATA" in md and "optuna-dashboard sqlite:///" in md
    assert "| trial | state | lr | batch_size | val/acc | best |" in md
    for name in ("history", "importances"):
        assert matplotlib.image.imread(search_dir / "plots" / f"{name}.png").std() > 0.01
    # best.yaml is the best trial's config: a fit of it gives the same validation curve
    best = yaml.safe_load((search_dir / "best.yaml").read_text())
    assert best["optimizer"]["init_args"]["lr"] == study.best_trial.params["optimizer.lr"]
    assert best["trainer"]["max_epochs"] == 1 and best["seed_everything"] == 0
    assert "SYNTHETIC" in (search_dir / "best.yaml").read_text()
    fit = ["fit", "--config", str(search_dir / "best.yaml"), "--runs_dir", "again"]
    assert run([*fit, "--run_name", "best", "--trainer.enable_progress_bar", "false"]) == 0
    best_dir = search_dir / study.best_trial.user_attrs["machlite_folder"] / "seed_0"
    assert curves(tmp_path / "again" / "best")["val/acc"] == curves(best_dir)["val/acc"]

    # the same command again: nothing left to run
    assert run(args) == 0
    assert "4 finished, 0 to run" in capsys.readouterr().out
    assert len(load(search_dir).trials) == 4


@pytest.mark.slow  # about a minute on the 2-core machine
def test_bit_width_search_has_the_bops_of_each_trial_s_formats(
    tmp_path: Path, jsc_data_dir: Path
) -> None:
    from machlite.quant.cost import bops

    args = ["search", "--space", str(CONFIGS / "search" / "bit_widths.yaml")]  # its own config
    args += [*synthetic(jsc_data_dir), "--trainer.max_epochs", "1", "--trials", "2"]
    args += ["--trainer.enable_progress_bar", "false", "--sampler_seed", "0", "--no-prune"]
    assert run([*args, "--search_dir", str(tmp_path / "s")]) == 0
    study = load(tmp_path / "s", name="bit_widths")
    assert states(study) == ["COMPLETE"] * 2
    key = "model.quantization.by_type.linear"
    for trial in study.trials:
        # JSC-Tiny: BatchNorm (float, no BOPs), then Linear(16, 5) at the trial's widths
        b_a, b_w = trial.params[f"{key}.data_in.width"], trial.params[f"{key}.weight.width"]
        assert trial.values[1] == pytest.approx(bops(16, 5, b_a, b_w))
        assert 0.0 <= trial.values[0] <= 1.0
    assert (tmp_path / "s" / "plots" / "pareto.png").is_file()


def test_pruning_stops_a_hopeless_trial_early_and_can_be_switched_off(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # no trial reaches val/acc 0.99 on this data: the threshold pruner stops each at epoch 1
    space = write_space(tmp_path, SPACE + "pruner: {type: threshold, lower: 0.99}\n")
    base = search_args(space, jsc_data_dir, "--trials", "1", epochs=3)
    assert run([*base, "--search_dir", "pruned"]) == 0
    assert "machlite search: pruned trial=0000" in capsys.readouterr().out
    study = load(tmp_path / "pruned")
    assert states(study) == ["PRUNED"]
    assert list(study.trials[0].intermediate_values) == [0]  # one epoch reported, then stopped
    run_dir = tmp_path / "pruned" / study.trials[0].user_attrs["machlite_folder"] / "seed_0"
    assert len(curves(run_dir)["val/acc"]) == 1 and not (run_dir / "done.json").exists()
    row = trial_rows(tmp_path / "pruned")[0]
    assert row["state"] == "PRUNED" and row["epochs_reported"] == "1"
    assert not (tmp_path / "pruned" / "best.yaml").exists()

    assert run([*base, "--search_dir", "kept", "--no-prune"]) == 0
    study = load(tmp_path / "kept")
    assert states(study) == ["COMPLETE"]
    run_dir = tmp_path / "kept" / study.trials[0].user_attrs["machlite_folder"] / "seed_0"
    assert len(curves(run_dir)["val/acc"]) == 3


def test_a_search_whose_trials_keep_failing_stops_with_one_line(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # MNISTNet parses (check_space passes) but does not accept JSC's inputs: each trial fails
    space = write_space(
        tmp_path,
        "params:\n  model.network: {type: categorical, choices: [machlite.models.MNISTNet]}\n",
    )
    assert run(search_args(space, jsc_data_dir, "--trials", "10")) == 1
    line = one_error_line(capsys)
    assert "3 trials in a row failed, so the search stopped; the last, trial 2: " in line
    assert "MNISTNet" in line
    study = load(tmp_path / "searches" / "space_synthetic")
    assert states(study) == ["FAIL"] * 3  # not 10, and not forever
    rows = trial_rows(tmp_path / "searches" / "space_synthetic")
    assert [r["state"] for r in rows] == ["FAIL"] * 3 and "MNISTNet" in rows[0]["note"]


@pytest.mark.slow
def test_grid_sampler_visits_every_grid_point_once(
    tmp_path: Path, jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(
        tmp_path,
        "params:\n"
        "  optimizer.lr: {type: categorical, choices: [0.001, 0.01]}\n"
        "  data.batch_size: {type: int, low: 64, high: 128, step: 64}\n"
        "objectives: {val/acc: max, epoch_time: min}\n",
        "grid.yaml",
    )
    args = search_args(space, jsc_data_dir, "--sampler", "grid", "--trials", "10")
    assert run(args) == 0
    assert "0 finished, 4 to run" in capsys.readouterr().out  # capped at the grid's size
    search_dir = tmp_path / "searches" / "grid_synthetic"
    study = load(search_dir, name="grid")
    assert states(study) == ["COMPLETE"] * 4
    points = sorted((t.params["optimizer.lr"], t.params["data.batch_size"]) for t in study.trials)
    assert points == [(0.001, 64), (0.001, 128), (0.01, 64), (0.01, 128)]
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in study.trials)
    rows = trial_rows(search_dir)
    assert "pareto" in rows[0] and any(r["pareto"] == "yes" for r in rows)
    assert matplotlib.image.imread(search_dir / "plots" / "pareto.png").std() > 0.01
    assert run(args) == 0
    assert "4 finished, 0 to run" in capsys.readouterr().out
    assert len(load(search_dir, name="grid").trials) == 4


def _wait_for(predicate: object, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the search ended early:\n{proc.stdout.read()}")
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_search_killed_mid_trial_continues_without_losing_or_repeating_trials(
    tmp_path: Path, jsc_data_dir: Path
) -> None:
    args = search_args(write_space(tmp_path), jsc_data_dir, "--trials", "3", "--no-prune")
    search_dir = tmp_path / "searches" / "space_synthetic"
    proc = cli(args)
    # kill -9 the search and its trial's process while trial 1 runs (trial 0 finished)
    _wait_for(lambda: len(list(search_dir.glob("trial=0001,*/seed_0/events.*"))) == 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = load(search_dir)
    assert states(study) == ["COMPLETE", "RUNNING"]
    first = sorted(p.name for p in search_dir.glob("trial=0000,*/seed_0/events.*"))

    proc = cli(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "trial(s) 1 were running when their search stopped: marked FAIL" in out
    assert "1 finished, 2 to run" in out
    study = load(search_dir)
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "stopped while it ran" in study.trials[1].user_attrs["machlite_note"]
    # trial 0 was not run again: its folder holds the first run's event file only
    assert sorted(p.name for p in search_dir.glob("trial=0000,*/seed_0/events.*")) == first
    rows = trial_rows(search_dir)
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


def test_stale_trials_are_failed_and_just_asked_ones_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from optuna.trial import TrialState

    import machlite.search.study as study_module
    from machlite.search.study import HEARTBEAT, OWNER, fail_stale_trials, owner

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    just_asked = study.ask()  # no owner yet: another worker sets it during the grace period
    orphan = study.ask()  # its worker died between ask and setting the owner
    alive = study.ask()
    alive.set_user_attr(OWNER, owner())
    alive.set_user_attr(HEARTBEAT, time.time())
    gone_here = study.ask()  # this host, a pid that does not exist
    gone_here.set_user_attr(OWNER, f"{socket.gethostname()}:{2**22 + 12345}")
    gone_elsewhere = study.ask()  # another host, silent for an hour
    gone_elsewhere.set_user_attr(OWNER, "elsewhere:1")
    gone_elsewhere.set_user_attr(HEARTBEAT, time.time() - 3600)
    waited = []

    def other_workers_meanwhile(seconds: float) -> None:
        waited.append(seconds)
        just_asked.set_user_attr(OWNER, owner())
        just_asked.set_user_attr(HEARTBEAT, time.time())
        study.ask()  # a trial asked for during the wait, not yet owned either

    monkeypatch.setattr(study_module.time, "sleep", other_workers_meanwhile)
    assert fail_stale_trials(study, storage) == [
        orphan.number,
        gone_here.number,
        gone_elsewhere.number,
    ]
    assert waited == [study_module.OWNERLESS_GRACE]
    assert [t.state for t in study.trials] == [
        TrialState.RUNNING,
        TrialState.FAIL,
        TrialState.RUNNING,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.RUNNING,
    ]


def _two_searches_share(args: list[str], storage: str, tmp_path: Path, trials: int) -> None:
    """Two `machlite search` processes on one storage run disjoint trials adding up to
    ``trials``."""
    shared = [*args, "--storage", storage, "--study", "shared", "--trials", str(trials)]
    procs = [cli([*shared, "--search_dir", str(tmp_path / f"worker{i}")]) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    if [p.returncode for p in procs] != [0, 0]:  # the whole of each worker's output
        pytest.fail(
            "".join(
                f"worker {i} exited {p.returncode}:\n{out}\n"
                for i, (p, out) in enumerate(zip(procs, outs, strict=True))
            ),
            pytrace=False,
        )
    from machlite.search.study import open_storage

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    run_trials = [t for t in study.trials if not t.user_attrs.get("machlite_over_budget")]
    assert [t.state.name for t in run_trials] == ["COMPLETE"] * trials
    owners = {t.user_attrs["machlite_owner"] for t in run_trials}
    assert len(owners) == 2  # both processes ran trials
    folders = {
        t.number: sorted((tmp_path / f"worker{i}").glob(f"trial={t.number:04d},*/seed_0/done.json"))
        for t in run_trials
        for i in range(2)
        if list((tmp_path / f"worker{i}").glob(f"trial={t.number:04d},*/seed_0/done.json"))
    }
    assert sorted(folders) == [t.number for t in run_trials]  # each trial ran in one place
    assert all(len(found) == 1 for found in folders.values())


@pytest.mark.slow
def test_two_searches_share_one_sqlite_storage(tmp_path: Path, jsc_data_dir: Path) -> None:
    args = search_args(write_space(tmp_path), jsc_data_dir, "--no-prune")
    _two_searches_share(args, f"sqlite:///{tmp_path / 'shared.db'}", tmp_path, 4)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on localhost, from Debian's postgresql package."""
    try:
        bindir = Path(
            subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("PostgreSQL is not installed (pg_config not found): apt install postgresql")
    if not (bindir / "initdb").is_file() or not (bindir / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not in {bindir}")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="machlite_pg_"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = "postgres" if _user_exists("postgres") else "nobody"
        as_user = ["runuser", "-u", user, "--"]
        shutil.chown(folder, user)
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "machlite"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=localhost -p {port} -c unix_socket_directories={folder}"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-o",
            options,
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://machlite@localhost:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.slow
def test_two_searches_share_one_postgresql_study(
    tmp_path: Path, jsc_data_dir: Path, postgres_url: str
) -> None:
    pytest.importorskip("psycopg", reason='needs the search extra: pip install -e ".[search]"')
    args = search_args(write_space(tmp_path), jsc_data_dir, "--no-prune")
    _two_searches_share(args, postgres_url, tmp_path, 4)


def test_journal_storage_option(tmp_path: Path, jsc_data_dir: Path) -> None:
    from machlite.search.study import open_storage

    storage = open_storage(f"journal:{tmp_path / 'j' / 'study.log'}")
    study = optuna.create_study(storage=storage, study_name="j")
    study.tell(study.ask(), 1.0)
    again = optuna.load_study(
        study_name="j", storage=open_storage(f"journal:{tmp_path}/j/study.log")
    )
    assert [t.value for t in again.trials] == [1.0]


def test_search_modules_are_in_setup_cfg() -> None:
    text = (REPO / "setup.cfg").read_text()
    assert "    machlite.search\n" in text and "search =\n    optuna" in text
    assert "psycopg[binary]" in text


def test_bits_and_bops_objectives_read_the_run_s_hparams(tmp_path: Path) -> None:
    from machlite.search.loop import objective_value

    from .conftest import write_run

    write_run(tmp_path, [0.5, 0.6], 0.6, 0, {"model.bits": 1364.0, "model.bops": 2240.0})
    assert objective_value("bops", "minimize", tmp_path) == 2240.0
    assert objective_value("bits", "minimize", tmp_path) == 1364.0
    assert objective_value("val/acc", "maximize", tmp_path) == pytest.approx(0.6)
    assert parse_objectives({"val/acc": "max", "bops": "min"}) == {
        "val/acc": "maximize",
        "bops": "minimize",
    }


def test_trial_folders_use_the_shortest_distinct_names_and_stay_under_the_limit() -> None:
    from machlite.search.loop import MAX_FOLDER_NAME, trial_folder

    values = {
        "model.network.init_args.width": 1.0,
        "model.quantization.by_type.linear.weight.width": 8,
        "model.quantization.by_type.linear.data_in.width": 6,
        "model.pruning.sparsity": 0.75,
    }
    name = trial_folder(3, values)
    assert name == "trial=0003,init_args.width=1,weight.width=8,data_in.width=6,sparsity=0.75"
    many = {f"model.block{i}.layer.weight.width": 8 for i in range(40)}
    assert trial_folder(7, many) == "trial=0007"  # too long for a file name: the number
    assert len(trial_folder(7, dict(list(many.items())[:2]))) <= MAX_FOLDER_NAME
