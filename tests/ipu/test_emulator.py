"""Lightning 2.0.x's IPU path (IPUStrategy) against the poptorch test double in tests/ipu/emulator.

Runs only on the Python 3.10 "IPU-era" stack (lightning 2.0.x); skipped elsewhere. Run with:
``PYTHONPATH=tests/ipu/emulator .venv-ipu/bin/python -m pytest tests/ipu -q -p no:cacheprovider``
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from .conftest import is_lightning_2_0, lightning_version

pytestmark = pytest.mark.ipu

if not is_lightning_2_0():
    pytest.skip(
        "IPU emulator tests need lightning 2.0.x (in-tree IPUStrategy); "
        f"found lightning {lightning_version()}",
        allow_module_level=True,
    )

import poptorch  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

if not getattr(poptorch, "IS_EMULATOR", False):
    pytest.skip(
        "a real poptorch is importable; these tests target the emulator", allow_module_level=True
    )

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.accelerators import ipu as ipu_accelerator  # noqa: E402
from lightning.pytorch.strategies import IPUStrategy  # noqa: E402
from lightning.pytorch.trainer.states import RunningStage  # noqa: E402

if not ipu_accelerator._IPU_AVAILABLE:
    pytest.skip(
        "lightning.pytorch was imported before the poptorch emulator was on sys.path "
        "(run with PYTHONPATH=tests/ipu/emulator)",
        allow_module_level=True,
    )

N_SAMPLES = 32
MICRO_BATCH = 4


class TinyClassifier(pl.LightningModule):
    """Linear 4 -> 3 classifier whose steps follow the IPU rules (return tensors, no self.log)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: Any) -> torch.Tensor:
        x, y = batch
        return (self(x).argmax(-1) == y).float().mean()

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # host side: logging here is supported, unlike inside validation_step on a real IPU
        self.log("val_acc", outputs.mean())

    def predict_step(self, batch: Any, batch_idx: Any, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 4, generator=generator)
    y = torch.randint(0, 3, (N_SAMPLES,), generator=generator)
    return TensorDataset(x, y)


def _loader() -> DataLoader:
    return DataLoader(_dataset(), batch_size=MICRO_BATCH)


def _trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _fit(tmp_path: Path, max_epochs: int = 2, **kwargs: Any) -> tuple[TinyClassifier, pl.Trainer]:
    torch.manual_seed(1)
    model = TinyClassifier()
    trainer = _trainer(tmp_path, max_epochs=max_epochs, **kwargs)
    trainer.fit(model, _loader(), _loader())
    return model, trainer


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(_state(a).items(), _state(b).items(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


# ------------------------------------------------------------------------------------------------
# The test double itself
# ------------------------------------------------------------------------------------------------
def test_emulator_identifies_itself_and_is_detected_by_lightning() -> None:
    assert poptorch.IS_EMULATOR
    assert "TEST DOUBLE" in (poptorch.__doc__ or "")
    assert poptorch.ipuHardwareIsAvailable()
    assert ipu_accelerator._POPTORCH_AVAILABLE and ipu_accelerator._IPU_AVAILABLE


def test_options_chain_freeze_and_serialise() -> None:
    opts = poptorch.Options()
    assert opts.deviceIterations(2).replicationFactor(1).randomSeed(3).useIpuModel(True) is opts
    assert opts.Training.gradientAccumulation(2) is opts.Training
    assert (opts.device_iterations, opts.replication_factor) == (2, 1)
    assert opts.Training.toDict()["gradient_accumulation"] == 2

    executor = poptorch.trainingModel(torch.nn.Linear(2, 1), options=opts)
    assert executor._options is not opts
    as_dict = executor._options.toDict()
    assert (as_dict["device_iterations"], as_dict["gradient_accumulation"]) == (2, 2)
    assert as_dict["output_mode"] == poptorch.OutputMode.Final
    with pytest.raises(poptorch.Error, match="cannot be modified"):
        opts.deviceIterations(4)
    assert opts.clone().deviceIterations(4).device_iterations == 4


def test_dataloader_combines_micro_batches() -> None:
    opts = poptorch.Options().deviceIterations(2).replicationFactor(2)
    opts.Training.gradientAccumulation(2)
    loader = poptorch.DataLoader(opts, _dataset(), batch_size=2)
    assert isinstance(loader, DataLoader)
    assert loader.combinedBatchSize == 16 and loader.batch_size == 16
    assert loader.drop_last  # poptorch's default
    assert [len(x) for x, _ in loader] == [16, 16]


class _LossModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.layer(x)
        return out, F.cross_entropy(out, y)


def test_training_executor_matches_hand_written_loop() -> None:
    """One call = device_iterations optimizer steps, each on the mean gradient of ga micro-batches.

    Checked against a hand-written SGD-with-momentum loop over the same micro-batches.
    """
    torch.manual_seed(0)
    model = _LossModel()
    reference = _LossModel()
    reference.load_state_dict(model.state_dict())
    host_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opts = poptorch.Options().deviceIterations(2)
    opts.Training.gradientAccumulation(2)
    executor = poptorch.trainingModel(model, options=opts, optimizer=host_opt)
    x, y = _dataset().tensors

    assert executor._executable is None and not executor.isAttachedToDevice()
    out, loss = executor(x[:16], y[:16])  # micro-batch 4 = 16 / (2 * 2)
    assert executor._executable is not None and executor.isAttachedToDevice()
    assert out.shape == (4, 3) and loss.shape == ()  # OutputMode.Final: last micro-batch only
    assert executor._emulator_stats["optimizer_steps"] == 2
    assert not host_opt.state_dict()["state"] == {}  # state read back from the "device"
    with pytest.raises(poptorch.Error, match="backward"):
        loss.backward()

    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for step in range(2):
        ref_opt.zero_grad()
        for micro in range(2):
            sl = slice((2 * step + micro) * 4, (2 * step + micro + 1) * 4)
            (reference(x[sl], y[sl])[1] / 2).backward()
        ref_opt.step()
    _assert_same_weights(model, reference)  # host copy updated after the call

    with pytest.raises(poptorch.Error, match="don't match the inputs used to compile"):
        executor(x[:8], y[:8])
    executor.destroy()
    assert executor._executable is None


def test_inference_executor_follows_training_weights() -> None:
    torch.manual_seed(0)
    model = _LossModel()
    training = poptorch.trainingModel(model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    inference = poptorch.inferenceModel(model, options=poptorch.Options().deviceIterations(2))
    x, y = _dataset().tensors
    before, _ = inference(x[:8], y[:8])
    assert before.shape == (8, 3)  # OutputMode.All: every micro-batch
    training(x[:4], y[:4])
    after, _ = inference(x[:8], y[:8])
    assert not torch.allclose(before, after)
    assert torch.allclose(after, model.layer(x[:8]))


def test_dict_inputs_and_outputs_are_rejected() -> None:
    executor = poptorch.inferenceModel(torch.nn.Identity())
    with pytest.raises(TypeError, match="Dictionaries are not supported as input"):
        executor({"x": torch.ones(2)})


# ------------------------------------------------------------------------------------------------
# Lightning 2.0.x IPUStrategy on the emulator
# ------------------------------------------------------------------------------------------------
def test_fit_on_ipu_reports_ipu_and_trains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pl_logger = logging.getLogger("lightning.pytorch")
    pl_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            model, trainer = _fit(
                tmp_path,
                accelerator="ipu",
                devices=1,
                strategy=IPUStrategy(training_opts=poptorch.Options().deviceIterations(2)),
            )
    finally:
        pl_logger.removeHandler(caplog.handler)
    assert "IPU available: True, using: 1 IPUs" in caplog.text
    assert isinstance(trainer.strategy, IPUStrategy)
    assert isinstance(trainer.train_dataloader, poptorch.DataLoader)
    assert trainer.train_dataloader.combinedBatchSize == 2 * MICRO_BATCH
    assert trainer.state.finished
    assert trainer.callback_metrics["val_acc"].ndim == 0


@pytest.mark.parametrize(
    ("ipu_kwargs", "cpu_kwargs", "device_steps", "global_step"),
    [
        # 4 host batches of 8 per epoch; 2 device steps per host batch; Lightning counts 1
        pytest.param({"device_iterations": 2}, {}, 16, 8, id="device_iterations=2"),
        # 4 host batches of 8 per epoch; 1 device step per host batch; Lightning counts 1 per 2
        pytest.param(
            {"accumulate_grad_batches": 2},
            {"accumulate_grad_batches": 2},
            8,
            4,
            id="gradient_accumulation=2",
        ),
        # 4 host batches of 2 x 4 per epoch; 1 device step per host batch
        pytest.param({"devices": 2}, {"accumulate_grad_batches": 2}, 8, 8, id="replication=2"),
    ],
)
def test_ipu_weights_equal_equivalent_cpu_run(
    tmp_path: Path,
    ipu_kwargs: dict[str, Any],
    cpu_kwargs: dict[str, Any],
    device_steps: int,
    global_step: int,
) -> None:
    """The emulated device run equals the CPU run that sees the same micro-batches in order.

    device_iterations=2: two optimizer steps per host batch == CPU steps on each micro-batch.
    gradient accumulation / replication = 2: one step on the mean gradient of two micro-batches
    == CPU Trainer(accumulate_grad_batches=2). Two epochs, validation on, SGD with momentum.
    """
    ipu_kwargs = {"devices": 1, **ipu_kwargs}
    device_iterations = ipu_kwargs.pop("device_iterations", None)
    if device_iterations is not None:
        options = poptorch.Options().deviceIterations(device_iterations)
        ipu_kwargs["strategy"] = IPUStrategy(training_opts=options)
    ipu_model, ipu_trainer = _fit(tmp_path / "ipu", accelerator="ipu", **ipu_kwargs)
    cpu_model, _ = _fit(tmp_path / "cpu", accelerator="cpu", devices=1, **cpu_kwargs)
    _assert_same_weights(ipu_model, cpu_model)
    executor = ipu_trainer.strategy.poptorch_models[RunningStage.TRAINING]
    assert executor._emulator_stats["optimizer_steps"] == device_steps
    # Lightning 2.0.9 counts host batches (divided by accumulate_grad_batches), not device steps
    assert ipu_trainer.global_step == global_step


def test_validate_and_predict_run_the_inference_executor(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TinyClassifier()
    trainer = _trainer(tmp_path, accelerator="ipu", devices=1)
    calls: list[tuple[bool, bool]] = []

    class Spy(pl.Callback):
        def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            executor = trainer.strategy.poptorch_models[RunningStage.VALIDATING]
            calls.append((executor.training, executor.isAttachedToDevice()))

    trainer.callbacks.append(Spy())
    metrics = trainer.validate(model, _loader())
    assert calls == [(False, True)] * (N_SAMPLES // MICRO_BATCH)
    assert 0.0 <= metrics[0]["val_acc"] <= 1.0

    predictions = trainer.predict(model, _loader())
    assert len(predictions) == N_SAMPLES // MICRO_BATCH
    assert torch.allclose(torch.cat(predictions), model(_dataset().tensors[0]))


def test_single_emulated_ipu_is_shared_by_detaching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one IPU, fit only works because Lightning detaches the training model for validation."""
    monkeypatch.setenv(poptorch.FAKE_IPU_COUNT_ENV, "1")
    model, trainer = _fit(tmp_path, max_epochs=2, accelerator="ipu", devices=1)
    assert trainer.state.finished
    with pytest.raises(poptorch.Error, match="Failed to acquire 2 IPU"):
        _fit(tmp_path / "two", max_epochs=1, accelerator="ipu", devices=2)


def test_training_step_must_return_the_loss_tensor(tmp_path: Path) -> None:
    class DictOutput(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: Any) -> dict[str, torch.Tensor]:
            return {"loss": super().training_step(batch, batch_idx)}

    trainer = _trainer(tmp_path, accelerator="ipu", devices=1, max_epochs=1)
    with pytest.raises(poptorch.Error, match="Dictionaries are not supported as model outputs"):
        trainer.fit(DictOutput(), _loader())
