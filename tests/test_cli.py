import csv
import io
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.plugins.hparams import plugin_data_pb2

from machlite.cli import CALLBACKS, run_lightning
from machlite.events import load_events
from machlite.models import NETWORKS, count_parameters

from .conftest import CONFIGS, run, synthetic

JSC_CONFIGS = sorted(p.name for p in CONFIGS.glob("jsc_*.yaml"))
MNIST_CONFIGS = sorted(p.name for p in CONFIGS.glob("mnist*.yaml"))
#: The QAT configs: the files of configs/quant/ that are whole machlite configs.
QAT_CONFIGS = sorted(
    f"quant/{p.name}"
    for p in CONFIGS.glob("quant/*.yaml")
    if "model" in yaml.safe_load(p.read_text())
)
#: The whole configs of configs/prune/ (its block files run in tests/test_pruning.py).
PRUNE_CONFIGS = sorted(
    f"prune/{p.name}"
    for p in CONFIGS.glob("prune/*.yaml")
    if "model" in yaml.safe_load(p.read_text())
)


def test_every_config_is_covered() -> None:
    assert set(JSC_CONFIGS) | set(MNIST_CONFIGS) == {p.name for p in CONFIGS.glob("*.yaml")}
    assert {
        "jsc_tiny.yaml",
        "jsc_toy.yaml",
        "jsc_will.yaml",
        "mnist.yaml",
        "mnist_graphcore.yaml",
    } <= set(JSC_CONFIGS + MNIST_CONFIGS)
    assert {
        "quant/jsc_tiny_qat.yaml",
        "quant/jsc_toy_qat.yaml",
        "quant/jsc_will_qat.yaml",
        "quant/mnist_qat.yaml",
    } <= set(QAT_CONFIGS)
    assert "prune/jsc_toy_qat_pruned.yaml" in PRUNE_CONFIGS


#: Warnings a normal run may show, each because it tells the user something true.
ALLOWED_WARNINGS = (
    # fast_dev_run turns logging and checkpointing off; Lightning says so
    r"You are using `fast_dev_run`",
)


@pytest.mark.parametrize("config", JSC_CONFIGS + MNIST_CONFIGS + QAT_CONFIGS + PRUNE_CONFIGS)
def test_config_runs_quietly(
    config: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """fast_dev_run of every config, the QAT ones included, on CPU (synthetic JSC, or the
    real MNIST copy): no unexpected warning, no advertising, and the network's
    exact-parameter summary."""
    if Path(config).name.startswith("jsc_"):
        data = synthetic(request.getfixturevalue("jsc_data_dir"))
    else:
        data = ["--data.data_dir", str(request.getfixturevalue("mnist_dir"))]
    fast = ["--trainer.fast_dev_run", "2", "--trainer.accelerator", "cpu"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # as Python shows them to a user: deprecations in libraries stay hidden
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        assert run(["fit", "--config", str(CONFIGS / config), *fast, *data]) == 0
    unexpected = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not any(re.search(pattern, str(w.message)) for pattern in ALLOWED_WARNINGS)
    ]
    assert not unexpected, unexpected
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "Tip:" not in out and "litlogger" not in out
    network = yaml.safe_load(CONFIGS.joinpath(config).read_text())["model"]["network"]
    name = network["class_path"].rsplit(".", 1)[1]
    params = count_parameters(NETWORKS[name](**(network.get("init_args") or {})))
    assert f"total: {params:,} parameters" in out
    assert "MulticlassAccuracy" not in out  # metric objects are not layers


def test_bad_key_and_bad_value_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(CONFIGS / "jsc_tiny.yaml")
    assert run(["fit", "--config", config, "--data.batch_sise", "64"]) == 2
    assert "batch_sise" in capsys.readouterr().err
    assert run(["fit", "--config", config, "--data.batch_size", "many"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert run(["fit", "--config", config, "--data.batch_size", "0"]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "PositiveInt" in err and "Traceback" not in err
    assert run(["fit", "--config", config, "--data.val_fraction", "1.5"]) == 2
    assert "v<1.0" in capsys.readouterr().err
    assert run(["fit", "--config", config, "--optimizer.lr", "fast"]) == 2
    assert "lr" in capsys.readouterr().err


def test_network_that_does_not_fit_the_data_exits_2(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "fit",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        *synthetic(jsc_data_dir),
        "--model.network",
        "machlite.models.MNISTNet",
    ]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("machlite: error: network MNISTNet does not accept inputs")
    assert len(err.splitlines()) == 1


def test_main_job_offline_stops_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fit", "--config", str(CONFIGS / "jsc_will.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("machlite: error: JSC file ")
    assert "cernbox.cern.ch" in err[0] and "--data.source synthetic" in err[0]


def test_print_config_shows_linked_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fit", "--config", str(CONFIGS / "jsc_will.yaml"), "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "machlite.models.JSCWill" in out and "batch_size: 256" in out
    assert "lr: 0.001" in out


def test_print_config_shows_machlite_callbacks(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for key, cls in CALLBACKS.items():
        assert config[key]["class_path"].rsplit(".", 1)[1] == cls.__name__, key
    assert config["checkpoint_io"]["class_path"].endswith("AtomicCheckpointIO")
    assert config["checkpoint"]["monitor"] == "val/acc"


def test_config_switches_machlite_callbacks_off(jsc_data_dir: Path, tmp_path: Path) -> None:
    """``KEY: null`` in a config file drops that callback; the others and their options stay."""
    off = tmp_path / "off.yaml"
    off.write_text("collapse_warning: null\ncheckpoint_io: null\n")
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir)]
    args += ["--trainer.max_epochs", "1"]
    cli = run_lightning(
        [*args, "--config", str(off), "--divergence_guard.check_every_n_steps", "7"]
    )
    kinds = {type(c).__name__: c for c in cli.trainer.callbacks}
    assert "CollapseWarning" not in kinds and "PredictionWriter" not in kinds  # predict only
    assert {"RunReport", "HParamsLogger", "ResumeState", "ConfusionReport"} <= set(kinds)
    assert kinds["DivergenceGuard"].check_every_n_steps == 7
    assert kinds["HParamsLogger"].hparams["data.batch_size"] == 256
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"
    on = run_lightning(args)
    assert "CollapseWarning" in {type(c).__name__ for c in on.trainer.callbacks}
    assert type(on.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


def _train_size(jsc_data_dir: Path) -> int:
    from machlite.datasets import JSCDataModule

    dm = JSCDataModule(data_dir=str(jsc_data_dir), source="synthetic", synthetic_jets=3000)
    dm.setup()
    return len(dm.splits["train"][1])


def _fit_two_epochs(jsc_data_dir: Path) -> Path:
    args = [
        "fit",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--experiment",
        "two",
    ]
    assert run(args) == 0
    runs = sorted(Path("runs/two_synthetic").glob("version_*"))
    assert len(runs) == 1
    return runs[0]


def test_two_epoch_fit_writes_curves_tensorboard_can_read(jsc_data_dir: Path) -> None:
    run_dir = _fit_two_epochs(jsc_data_dir)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    acc = load_events(run_dir)
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/acc",
        "train/lr",
        "train/loss_epoch",
        "val/loss",
        "val/acc",
    } <= tags
    # 3000 synthetic jets, deduplicated, 80% train part, 90% of it trains, in batches of 256
    steps_per_epoch = -(-_train_size(jsc_data_dir) // 256)
    train_points = [e.step for e in acc.Scalars("train/loss")]
    assert train_points == list(range(2 * steps_per_epoch))  # log_every_n_steps=1
    assert len(acc.Scalars("val/loss")) == len(acc.Scalars("val/acc")) == 2
    assert len(acc.Scalars("train/loss_epoch")) == 2
    # val/acc_best: a real curve, the running best of val/acc at each validation
    best = acc.Scalars("val/acc_best")
    assert [e.step for e in best] == [e.step for e in acc.Scalars("val/acc")]
    running = [max(e.value for e in acc.Scalars("val/acc")[: i + 1]) for i in range(2)]
    assert [e.value for e in best] == pytest.approx(running)
    # the HPARAMS tab: the settings, with the real curves as its metrics; no hp/* points
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["data.batch_size"].number_value == 256
    assert hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert hparams["model.bits"].number_value == 117 * 32  # JSC-Tiny, float: 32 bits a value
    assert hparams["model.bops"].number_value > 0
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert metrics == {"val/acc", "val/acc_best", "val/loss", "train/loss_epoch", "test/acc"}
    assert metrics - {"test/acc"} <= tags
    assert not [tag for tag in tags if tag.startswith("hp/")]


def _tag_as_cuda(src: Path, dst: Path) -> None:
    """Rewrite a checkpoint so its tensors claim to live on cuda:0, as a GPU run saves them."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(item, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_checkpoint_tests_on_cpu(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _fit_two_epochs(jsc_data_dir)
    gpu_ckpt = run_dir / "gpu.ckpt"
    _tag_as_cuda(run_dir / "checkpoints" / "last.ckpt", gpu_ckpt)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(io.BytesIO(gpu_ckpt.read_bytes()), weights_only=False)
    capsys.readouterr()
    args = [
        "test",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        *synthetic(jsc_data_dir),
        "--experiment",
        "two",
        "--ckpt_path",
        str(gpu_ckpt),
    ]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "test/acc" in out


def test_predict_writes_classes_and_probabilities(jsc_data_dir: Path) -> None:
    run_dir = _fit_two_epochs(jsc_data_dir)
    args = [
        "predict",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        *synthetic(jsc_data_dir),
        "--experiment",
        "two",
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
    ]
    assert run(args) == 0
    out_file = sorted(Path("runs/two_synthetic").glob("version_*/predictions.csv"))[-1]
    with open(out_file) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 100
    for row in rows[:50]:
        probs = [float(row[f"prob_{k}"]) for k in range(5)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert int(row["class"]) == max(range(5), key=probs.__getitem__)
