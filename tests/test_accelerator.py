"""Accelerator choice on the main stack (no poptorch, lightning without IPU support)."""

import os
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torchmetrics import MeanMetric

from machlite.accelerator import choose_accelerator, lightning_has_ipu, stop_gpu_probe
from machlite.errors import ConfigError
from machlite.ipu import on_ipu, record_host_call

from .conftest import CONFIGS, run, synthetic

pytestmark = pytest.mark.skipif(lightning_has_ipu(), reason="main stack only (no in-tree IPU)")


def test_ipu_request_stops_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--config", str(CONFIGS / "mnist_graphcore.yaml")]
    assert run(["fit", *config, "--trainer.accelerator", "ipu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("machlite: error: --trainer.accelerator ipu:")
    for needed in ("has no IPU support", "lightning 2.0.9", "torch 2.0.1", "Python 3.10"):
        assert needed in err[0]
    assert "pip install -e '.[ipu]'" in err[0] and "docs/ipu.md" in err[0]


def test_auto_says_what_it_picked_and_why(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accelerator, reason = choose_accelerator("auto")
    assert accelerator == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "no IPU" in reason
    config = ["--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir)]
    assert run(["fit", *config, "--trainer.fast_dev_run", "1"]) == 0
    out = capsys.readouterr().out
    assert f"machlite: accelerator {accelerator} (" in out
    assert f" on {accelerator} x1" in out  # RunReport: what Lightning really used


def test_explicit_accelerator_is_kept() -> None:
    assert choose_accelerator("cpu") == ("cpu", "set by trainer.accelerator")
    with pytest.raises(ConfigError, match="has no IPU support"):
        choose_accelerator("IPU")


NO_GPU_CUDA_BUILD = torch.version.cuda is not None and not torch.cuda.is_available()


@pytest.mark.skipif(not NO_GPU_CUDA_BUILD, reason="needs a CUDA build of torch and no CUDA GPU")
def test_cpu_runs_stop_torch_probing_for_a_gpu(
    jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert stop_gpu_probe() is True
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert torch.cuda.device_count() == 0
    assert stop_gpu_probe() is False  # already set: left alone
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert stop_gpu_probe() is False
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir)]
    args += ["--trainer.fast_dev_run", "true"]
    assert run(args) == 0
    assert "accelerator cpu (no CUDA GPU" in capsys.readouterr().out
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_ipu_host_call_is_recorded_on_the_host() -> None:
    """machlite.ipu.record_host_call, which only the IPU stack runs for real (tests/ipu)."""
    assert on_ipu(pl.Trainer(accelerator="cpu", logger=False)) is False
    logged: list[tuple[int, dict]] = []
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    trainer = SimpleNamespace(
        log_every_n_steps=2,
        optimizers=[sgd],
        loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))],
        is_global_zero=True,
        sanity_checking=False,
    )
    module = SimpleNamespace(trainer=trainer, train_loss=MeanMetric(), global_step=0)
    for step, loss in enumerate([1.0, 2.0, 4.0], start=1):  # Lightning counts the call first
        module.global_step = step
        outputs = {"loss": torch.tensor([loss, loss])} if step == 2 else torch.tensor(loss)
        record_host_call(module, outputs)
    assert module.train_loss.compute().item() == pytest.approx(7 / 3)
    assert logged == [
        (0, {"train/loss": 1.0, "train/lr": 0.05}),
        (2, {"train/loss": 4.0, "train/lr": 0.05}),
    ]
