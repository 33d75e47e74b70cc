"""Compiled training steps (``model.compile``, machlite/compiled.py).

Fast tests check the written-out optimizer updates against torch's optimizers (uncompiled:
the same function that gets traced) and that every case the compiled path cannot handle
trains eagerly with a one-line reason. The ``slow`` tests compile for real: weights after an
epoch equal to the eager engine's, JSC-Will's accuracy, no recompile for a partial group or a
smaller last batch, and a second process loading the graph from the on-disk cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from machlite.cli import run_lightning
from machlite.compiled import CompiledSteps, group_lrs, unsupported_optimizer
from machlite.datasets import JSCDataModule
from machlite.datasets.jsc_synthetic import write_synthetic_jsc
from machlite.models import JSCTiny, JSCToy
from machlite.module import Classifier
from tests.conftest import run

REPO = Path(__file__).resolve().parents[1]

OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01, betas=(0.8, 0.99)),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, eps=1e-6),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
    "sgd-nesterov": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
}


def _rounding_driven(network: torch.nn.Module) -> set[str]:
    """State entries whose value is set by rounding noise: a Linear bias feeding a BatchNorm.

    Its exact gradient is zero (the BatchNorm subtracts the batch mean), so its computed
    gradient is rounding noise, which Adam scales up to steps of about ``lr``: any change of
    summation order (compiled or not) sends it elsewhere, with the BatchNorm's running mean,
    which tracks it. The training-mode function does not depend on it at all.
    """
    keys = set()
    for name, module in network.named_modules():
        if isinstance(module, torch.nn.Sequential):
            layers = list(module.named_children())
            for (a, first), (b, second) in zip(layers, layers[1:], strict=False):
                if isinstance(first, torch.nn.Linear) and isinstance(
                    second, torch.nn.modules.batchnorm._BatchNorm
                ):
                    keys |= {f"{name}.{a}.bias", f"{name}.{b}.running_mean"}
    return keys


def _batches(n: int, size: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 16, generator=gen), torch.randint(0, 5, (size,), generator=gen))
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_written_out_update_matches_torch_optimizer(name: str) -> None:
    """Three steps of the traced function (run eagerly) give torch's weights and state."""
    torch.manual_seed(0)
    net, ref = JSCToy(), JSCToy()
    ref.load_state_dict(net.state_dict())
    opt, ref_opt = OPTIMIZERS[name](net.parameters()), OPTIMIZERS[name](ref.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = _batches(4)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref_scheduler = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5)
    ref_losses = []
    for k, (x, y) in enumerate(batches):
        ref_opt.zero_grad()
        loss = loss_fn(ref(x), y)
        loss.backward()
        ref_opt.step()
        ref_scheduler.step()
        ref_losses.append(loss.detach())
        if k == 0:  # the first step is eager in both: it creates the optimizer state
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
            scheduler.step()
    steps = CompiledSteps(net, loss_fn, opt, group=3)
    assert steps.ready()
    lr = opt.defaults["lr"] * 0.5
    lrs = group_lrs(opt, [scheduler], 3)
    assert lrs == [[lr], [lr * 0.5], [lr * 0.25]]  # each step's, before the schedule moves on
    xs = torch.stack([x for x, _ in batches[1:]])
    ys = torch.stack([y for _, y in batches[1:]])
    scalars = torch.tensor(steps._scalars(lrs), dtype=torch.float32)
    with torch.no_grad():
        losses, outs = steps._steps(
            steps.params, list(net.buffers()), steps._state_tensors(), xs, ys, scalars
        )
    torch.testing.assert_close(losses, torch.stack(ref_losses[1:]), rtol=1e-6, atol=1e-7)
    assert outs.shape == (3, 64, 5)
    theirs, noise = ref.state_dict(), _rounding_driven(net)
    assert len(noise) == 6  # JSC-Toy: three Linear layers feed a BatchNorm
    for key, mine in net.state_dict().items():
        if key not in noise:
            torch.testing.assert_close(mine, theirs[key], rtol=1e-5, atol=1e-7, msg=key)
    names = dict(ref.named_parameters())
    for (key, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        for name, value in ref_opt.state[q].items():
            if key not in noise and name != "step":
                torch.testing.assert_close(opt.state[p][name], value, rtol=1e-5, atol=1e-7)
    assert names.keys() >= {k for k in noise if k.endswith("bias")}
    with torch.no_grad():  # the training-mode function does not depend on those biases
        torch.testing.assert_close(net(xs[0]), ref(xs[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: torch.optim.RMSprop(p), "optimizer RMSprop is not one it writes out"),
        (lambda p: torch.optim.Adam(p, amsgrad=True), "Adam(amsgrad=True) is not supported"),
        (lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), "SGD(maximize=True)"),
    ],
)
def test_unsupported_optimizers_are_named(make: Any, reason: str) -> None:
    """Each optimizer the compiled steps cannot update says why."""
    assert reason in unsupported_optimizer(make(JSCTiny().parameters()))
    with pytest.raises(ValueError, match="not"):
        CompiledSteps(JSCTiny(), torch.nn.CrossEntropyLoss(), make(JSCTiny().parameters()))


class _HookedCallback(Callback):
    """A callback that needs Lightning's per-step hooks (as gradient monitors do)."""

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = True


def _fit(
    jsc_data_dir: Path, steps_per_call: int = 4, network: Any = JSCTiny, **trainer: Any
) -> Classifier:
    model = Classifier(network(), steps_per_call=steps_per_call, compile=True)
    if "optimizer" in trainer:
        make = trainer.pop("optimizer")
        model.configure_optimizers = lambda: make(model.parameters())  # type: ignore[method-assign]
    data = JSCDataModule(
        data_dir=str(jsc_data_dir),
        source="synthetic",
        synthetic_jets=3000,
        batch_size=64,
        steps_per_call=steps_per_call,
    )
    settings = {
        "max_steps": 8,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "accelerator": "cpu",
        "devices": 1,
    }
    try:
        pl.Trainer(**{**settings, **trainer}).fit(model, datamodule=data)
    finally:  # the DDP case: later tests in this process must not see a process group
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return model


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ({"steps_per_call": 1}, "model.steps_per_call is 1"),
        ({"precision": "bf16-mixed"}, "precision bf16-mixed: compiled steps run in 32-bit"),
        ({"profiler": "simple"}, "a profiler is attached"),
        ({"callbacks": [_HookedCallback()]}, "callback _HookedCallback needs Lightning's"),
        ({"optimizer": torch.optim.RMSprop}, "optimizer RMSprop is not one it writes out"),
        ({"strategy": "ddp"}, "strategy DDPStrategy: compiled steps run on one device"),
    ],
)
def test_fallback_trains_eagerly_and_says_why(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str], case: dict, reason: str
) -> None:
    """Where compiled steps cannot apply, the fit trains eagerly after one line saying why."""
    model = _fit(jsc_data_dir, **case)
    assert model.engine.compiled is None
    assert model.global_step == 8
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "model.compile" in line]
    assert lines == [f"machlite: warning: model.compile: running eager steps, since {reason}"] or (
        len(lines) == 1 and reason in lines[0]
    ), err


class _DataDependentNet(torch.nn.Module):
    """A network whose forward branches on a value: ``fullgraph`` compiling refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out * 2 if out.sum().item() > 1e9 else out


def test_a_network_torch_compile_refuses_trains_eagerly(
    jsc_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When tracing fails (in the second call: its first full group), the fit says so in one
    line and trains every step eagerly."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    model = _fit(jsc_data_dir, network=_DataDependentNet)
    assert model.engine.compile and model.engine.compiled is None
    assert model.global_step == 8  # every step ran, eagerly
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "model.compile" in ln]
    assert len(lines) == 1, lines
    assert lines[0].startswith("machlite: warning: model.compile: running eager steps: ")


def test_compile_is_a_documented_model_option(capsys: pytest.CaptureFixture[str]) -> None:
    """``machlite fit --help`` lists model.compile with its help text."""
    assert run(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--model.compile" in out
    assert "torch.compile" in out


# -- compiled for real (slow: 30-150 s of compiling each on a 2-core machine) ---------------
@pytest.fixture()
def compile_cache(torch_compile_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tests' shared torch compile cache, for this test's process."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(torch_compile_cache))
    return torch_compile_cache


@pytest.fixture(scope="module")
def jsc_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with 20,000 synthetic jets: 14,112 training jets, 71 steps of batch 200."""
    root = tmp_path_factory.mktemp("jsc20k")
    write_synthetic_jsc(root / "jsc" / "jsc_synthetic_20000.h5", 20000)
    return root


def _config_fit(config: str, data: Path, compile: bool, *extra: str) -> Any:
    args = ["fit", "--config", str(REPO / "configs" / f"{config}.yaml")]
    args += ["--data.source", "synthetic", "--data.data_dir", str(data)]
    args += ["--data.synthetic_jets", "20000", "--model.compile", str(compile).lower()]
    args += ["--trainer.enable_progress_bar", "false", *extra]
    return run_lightning(args)


#: Each config's settings in these tests: JSC-Tiny as committed but at batch 200 (71 steps
#: an epoch, so calls of 32, 32 and 7 steps end in a partial group and a smaller batch);
#: JSC-Toy and JSC-Will at 4 steps per call (groups of 4: a shorter compile).
SETTINGS = {
    "jsc_tiny": ["--data.batch_size", "200"],
    "jsc_toy": ["--model.steps_per_call", "4"],
    "jsc_will": ["--model.steps_per_call", "4"],
    "quant/jsc_tiny_qat": ["--data.batch_size", "200"],  # quantization-aware: fake-quant ops
}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["jsc_tiny", "jsc_toy", "quant/jsc_tiny_qat"])
def test_compiled_epoch_equals_eager(config: str, jsc_20k: Path, compile_cache: Path) -> None:
    """One epoch (SYNTHETIC data): the same steps; weights, outputs and epoch metrics equal
    to rtol 1e-4 (JSC-Toy's rounding-driven biases: see :func:`_rounding_driven`)."""
    extra = [*SETTINGS[config], "--trainer.max_epochs", "1"]
    eager = _config_fit(config, jsc_20k, False, *extra)
    compiled = _config_fit(config, jsc_20k, True, *extra)
    assert compiled.model.engine.compiled is not None
    assert compiled.model.engine.compiled.compile_seconds is not None
    assert compiled.trainer.global_step == eager.trainer.global_step > 50
    ours, theirs = compiled.model.state_dict(), eager.model.state_dict()
    assert ours.keys() == theirs.keys()
    noise = {f"network.{key}" for key in _rounding_driven(eager.model.network)}
    assert bool(noise) == (config == "jsc_toy")
    for key in theirs.keys() - noise:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    # batch statistics; the running ones (off by what the rounding-driven biases moved)
    for mode in ("train",) if noise else ("train", "eval"):
        nets = [cli.model.network.train(mode == "train") for cli in (compiled, eager)]
        with torch.no_grad():
            mine, ref = (net(x) for net in nets)
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6, msg=mode)
    for key in ("train/loss_epoch", "val/loss"):
        mine, ref = compiled.trainer.callback_metrics[key], eager.trainer.callback_metrics[key]
        torch.testing.assert_close(mine, ref, rtol=1e-3 if noise else 1e-4, atol=0, msg=key)


@pytest.mark.slow
def test_compiled_jsc_will_reaches_eager_accuracy(jsc_20k: Path, compile_cache: Path) -> None:
    """JSC-Will (dropout), 3 epochs, SYNTHETIC data: final validation accuracy within 0.5
    points of eager's on the same seed."""
    extra = [*SETTINGS["jsc_will"], "--trainer.max_epochs", "3"]
    eager = _config_fit("jsc_will", jsc_20k, False, *extra)
    compiled = _config_fit("jsc_will", jsc_20k, True, *extra)
    assert compiled.model.engine.compiled is not None
    acc, ref = (cli.trainer.callback_metrics["val/acc"].item() for cli in (compiled, eager))
    assert abs(acc - ref) <= 0.005, (acc, ref)


@pytest.mark.slow
def test_partial_groups_do_not_recompile_and_cache_serves_a_second_process(
    jsc_20k: Path, compile_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two epochs whose calls end in a partial group and a smaller last batch compile one
    graph; a new process with the same shapes loads it from the on-disk cache."""
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    extra = [*SETTINGS["jsc_tiny"], "--trainer.max_epochs", "2"]
    first = _config_fit("jsc_tiny", jsc_20k, True, *extra)
    sizes = first.trainer.train_dataloader.batch_sizes()
    assert sizes[-1] < 200 and len(sizes) % 32 % 8 != 0  # a smaller last batch, partial group
    assert first.trainer.global_step == 2 * len(sizes)
    assert first.model.engine.compiled.compile_seconds is not None
    config = str(REPO / "configs" / "jsc_tiny.yaml")
    args = [sys.executable, "-m", "machlite", "fit", "--config", config]
    args += ["--data.source", "synthetic", "--data.data_dir", str(jsc_20k)]
    args += ["--data.synthetic_jets", "20000", "--model.compile", "true", *extra]
    args += ["--trainer.enable_progress_bar", "false"]
    done = subprocess.run(
        args, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model.compile: 8 steps of JSCTiny at batch 200 loaded from the compile cache" in (
        done.stdout
    ), done.stdout[-3000:]


@pytest.mark.slow
def test_compiled_fit_resumes_like_an_uninterrupted_one(
    jsc_20k: Path, compile_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One compiled epoch, then ``--ckpt_path last`` to two: the weights of two epochs in one
    go (the optimizer state and the schedule come back from the checkpoint)."""
    monkeypatch.chdir(tmp_path)
    two = [*SETTINGS["jsc_tiny"], "--trainer.max_epochs", "2"]
    whole = _config_fit("jsc_tiny", jsc_20k, True, *two, "--run_name", "whole")
    one = [*SETTINGS["jsc_tiny"], "--trainer.max_epochs", "1", "--run_name", "resumed"]
    _config_fit("jsc_tiny", jsc_20k, True, *one)
    resumed = _config_fit(
        "jsc_tiny", jsc_20k, True, *two, "--run_name", "resumed", "--ckpt_path", "last"
    )
    assert resumed.model.engine.compiled is not None
    assert resumed.trainer.global_step == whole.trainer.global_step
    ours, theirs = resumed.model.state_dict(), whole.model.state_dict()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)
