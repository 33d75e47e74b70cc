"""``machlite.runs.load``: a run's task and datamodule from its checkpoint, as ``machlite
validate`` would configure them, with the checkpoint read once and nothing run or printed."""

import pathlib
from pathlib import Path

import pytest
import torch
import yaml

from machlite.errors import BadArguments, ConfigError, DataError
from machlite.models import JSCTiny, JSCToy
from machlite.module import Classifier
from machlite.quant import layer_formats, load_quant_config
from machlite.runs.load import evaluation_trainer, load_run

from .conftest import CONFIGS, synthetic

TINY = CONFIGS / "jsc_tiny.yaml"


def _checkpoint(path: Path, network: torch.nn.Module, **extra: object) -> Path:
    torch.manual_seed(0)
    model = Classifier(network=network, num_classes=5, input_shape=(16,))
    torch.save({"state_dict": model.state_dict(), **extra}, path)
    return path


def test_load_run_gives_the_task_with_the_checkpoint_weights(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(Path("tiny.ckpt"), JSCTiny())
    run = load_run(TINY, ckpt, [*synthetic(jsc_data_dir), "--data.eval_batch_size", "77"])
    assert isinstance(run.model, Classifier) and isinstance(run.model.network, JSCTiny)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert run.datamodule.eval_batch_size == 77  # the override
    assert run.model.num_classes == run.datamodule.num_classes == 5  # the link
    assert run.datamodule.splits == {}  # nothing read yet
    assert run.trainer_config["max_epochs"] == 10 and run.ckpt_path == ckpt
    assert capsys.readouterr().out == ""  # nothing printed, nothing run
    assert not Path("runs").exists()  # no run folder


def test_the_checkpoint_hyperparameters_update_the_model_config(jsc_data_dir: Path) -> None:
    quant = load_quant_config(CONFIGS / "quant" / "int8_4.yaml")
    hparams = {"quantization": quant.to_dict()}
    ckpt = _checkpoint(Path("qat.ckpt"), JSCTiny(), hyper_parameters=hparams)
    run = load_run(TINY, ckpt, synthetic(jsc_data_dir))  # a float config: reloads quantized
    assert run.model.quantization == quant
    assert layer_formats(run.model.network)["seq_blocks.2"] == quant.by_type["linear"]


def test_a_run_folder_config_loads_and_its_ckpt_path_is_ignored(jsc_data_dir: Path) -> None:
    ckpt = _checkpoint(Path("tiny.ckpt"), JSCTiny())
    config = yaml.safe_load(TINY.read_text())
    config.update({"ckpt_path": "elsewhere.ckpt", "weights_only": None, "verbose": True})
    Path("config.yaml").write_text(yaml.safe_dump(config))  # as a fit's saved config.yaml
    run = load_run("config.yaml", ckpt, synthetic(jsc_data_dir))
    assert run.ckpt_path == ckpt


def test_errors_are_one_line(jsc_data_dir: Path) -> None:
    data = synthetic(jsc_data_dir)
    with pytest.raises(DataError, match=r"^checkpoint nope.ckpt does not exist"):
        load_run(TINY, "nope.ckpt", data)
    toy = _checkpoint(Path("toy.ckpt"), JSCToy())
    with pytest.raises(ConfigError, match=r"does not match the network JSCTiny \(") as err:
        load_run(TINY, toy, data)
    assert "\n" not in str(err.value)
    tiny = _checkpoint(Path("tiny.ckpt"), JSCTiny())
    with pytest.raises(BadArguments, match="no_such_key"):
        load_run(TINY, tiny, [*data, "--data.no_such_key", "1"])
    torch.save({"hyper_parameters": {}}, "empty.ckpt")
    with pytest.raises(DataError, match="has no state_dict"):
        load_run(TINY, "empty.ckpt", data)


def test_weights_only_as_machlite_validate_takes_it(jsc_data_dir: Path) -> None:
    ckpt = _checkpoint(Path("code.ckpt"), JSCTiny(), note=pathlib.PurePosixPath("x"))
    with pytest.raises(ConfigError, match="needs arbitrary code to load"):
        load_run(TINY, ckpt, synthetic(jsc_data_dir))
    run = load_run(TINY, ckpt, [*synthetic(jsc_data_dir), "--weights_only", "false"])
    assert isinstance(run.model.network, JSCTiny)


def test_evaluation_trainer_is_quiet_and_evaluates(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(Path("tiny.ckpt"), JSCTiny())
    run = load_run(TINY, ckpt, [*synthetic(jsc_data_dir), "--trainer.accelerator", "cpu"])
    trainer = evaluation_trainer(run)
    assert trainer.logger is None and trainer.checkpoint_callback is None
    metrics = trainer.validate(run.model, datamodule=run.datamodule, verbose=False)[0]
    assert set(metrics) == {"val/loss", "val/acc"}
    assert capsys.readouterr().out == ""
    assert not Path("runs").exists() and not Path("lightning_logs").exists()
