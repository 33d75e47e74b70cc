"""Several optimizer steps per Lightning call give exactly the one-step-per-call results."""

import copy
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import machlite.engine
from machlite.accelerator_setup import set_steps_per_call
from machlite.cli import run_lightning
from machlite.datasets import JSCDataModule
from machlite.engine import MODULE_API, STEP_HOOKS, TRAINER_API, MultiStepEngine, skips_step_hooks
from machlite.errors import ConfigError
from machlite.models import JSCTiny
from machlite.module import Classifier

from .conftest import CONFIGS, curves, run, synthetic

#: What the probe callbacks saw, by experiment name.
SEEN: dict[str, dict[str, int | bool]] = {}


class PathProbe(Callback):
    """Records whether the module took the fast multi-step path (overrides no step hook)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seen = SEEN.setdefault(trainer.logger.name, {})
        seen["fast"] = pl_module.engine.fast
        seen["global_step"] = trainer.global_step


class StepHookCounter(PathProbe):
    """Uses the per-step hooks, so the module must call them on every optimizer step."""

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seen = SEEN.setdefault(trainer.logger.name, {})
        seen["after_backward"] = seen.get("after_backward", 0) + 1

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        seen = SEEN.setdefault(trainer.logger.name, {})
        seen["before_optimizer_step"] = seen.get("before_optimizer_step", 0) + 1


class BarProbe(PathProbe):
    """Records the Lightning calls and the progress bar's ``train/loss`` at the end."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        seen = SEEN.setdefault(trainer.logger.name, {})
        seen["calls"] = seen.get("calls", 0) + 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        SEEN[trainer.logger.name]["bar_loss"] = float(trainer.progress_bar_metrics["train/loss"])


def _fit(
    jsc_data_dir: Path, k: int, config: str, probe: str = "PathProbe", extra: tuple[str, ...] = ()
) -> tuple[dict, dict[str, list[tuple[int, float]]], int, str]:
    name = f"k{k}_{probe}_{config.split('.')[0]}" + ("_extra" if extra else "")
    args = [
        "fit",
        "--config",
        str(CONFIGS / config),
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--data.batch_size",
        "64",
        "--model.steps_per_call",
        str(k),
        "--experiment",
        name,
        f"--trainer.callbacks+=tests.test_steps_per_call.{probe}",
        *extra,
    ]
    assert run(args) == 0
    run_dir = next(Path(f"runs/{name}_synthetic").glob("version_*"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"], curves(run_dir), ckpt["global_step"], f"{name}_synthetic"


def _values(curve: list[tuple[int, float]]) -> list[float]:
    return [v for _, v in curve]


def test_progress_bar_loss_is_set_once_per_call(
    jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logging every step, ``self.log`` (about 0.6 ms each) runs once per call, not per step.

    The progress bar still shows the latest logged ``train/loss``, the curve's last point.
    """
    shown: list[float] = []
    log = Classifier.log

    def counting_log(self: Classifier, name: str, value: object, *args: object, **kw: object):
        if name == "train/loss":
            shown.append(float(value))
        return log(self, name, value, *args, **kw)

    monkeypatch.setattr(Classifier, "log", counting_log)
    _, curves, steps, name = _fit(jsc_data_dir, 5, "jsc_tiny.yaml", probe="BarProbe")
    calls = SEEN[name]["calls"]
    assert len(curves["train/loss"]) == steps > 4 * calls  # every step is on the curve
    assert len(shown) == calls
    assert SEEN[name]["bar_loss"] == pytest.approx(curves["train/loss"][-1][1])
    assert shown[-1] == pytest.approx(curves["train/loss"][-1][1])


@pytest.mark.parametrize("config", ["jsc_will.yaml", "jsc_tiny.yaml"])
def test_multi_step_calls_match_single_steps(jsc_data_dir: Path, config: str) -> None:
    one_weights, one_curves, one_steps, one_name = _fit(jsc_data_dir, 1, config)
    k_weights, k_curves, k_steps, k_name = _fit(jsc_data_dir, 5, config)
    assert SEEN[one_name]["fast"] is False  # one step per call: Lightning's automatic path
    assert SEEN[k_name]["fast"] is True  # the fast path is what is compared here
    assert one_steps == k_steps == SEEN[k_name]["global_step"] > 20
    one_curve, k_curve = one_curves["train/loss"], k_curves["train/loss"]
    assert [s for s, _ in one_curve] == [s for s, _ in k_curve] == list(range(one_steps))
    assert _values(one_curve) == pytest.approx(_values(k_curve), abs=1e-6)
    assert one_curves.keys() == k_curves.keys()
    for tag in ("train/acc", "train/lr", "train/loss_epoch", "train/acc_epoch", "val/acc"):
        assert [s for s, _ in one_curves[tag]] == [s for s, _ in k_curves[tag]], tag
        assert _values(one_curves[tag]) == pytest.approx(_values(k_curves[tag]), abs=1e-6), tag
    assert one_weights.keys() == k_weights.keys()
    for name, value in one_weights.items():
        assert torch.allclose(value.float(), k_weights[name].float(), atol=1e-6), name


def test_pruned_multi_step_calls_match_single_steps(jsc_data_dir: Path) -> None:
    """model.pruning (issue #25), ramped over both epochs: K=5 gives K=1's weights and masks."""
    pruning = ("--model.pruning", str(CONFIGS / "prune" / "jsc_toy_75.yaml"))
    extra = (*pruning, "--model.pruning.end_epoch", "1")
    one_weights, one_curves, one_steps, one_name = _fit(
        jsc_data_dir, 1, "jsc_toy.yaml", extra=extra
    )
    k_weights, k_curves, k_steps, k_name = _fit(jsc_data_dir, 5, "jsc_toy.yaml", extra=extra)
    assert SEEN[k_name]["fast"] is True
    assert one_steps == k_steps > 20
    assert _values(one_curves["train/loss"]) == pytest.approx(_values(k_curves["train/loss"]))
    assert one_weights.keys() == k_weights.keys()
    masks = [key for key in one_weights if key.endswith("weight_mask")]
    assert len(masks) == 3
    zeros = sum(int((one_weights[key] == 0).sum()) for key in masks)
    assert zeros == round(0.75 * sum(one_weights[key].numel() for key in masks))
    for name, value in one_weights.items():
        assert torch.equal(value, k_weights[name]), name


def test_step_hooks_are_called_when_a_callback_needs_them(jsc_data_dir: Path) -> None:
    """A callback overriding a per-step hook turns the fast path off, with the same results."""
    fast_weights, fast_curves, fast_steps, fast_name = _fit(jsc_data_dir, 5, "jsc_tiny.yaml")
    hook_weights, hook_curves, hook_steps, hook_name = _fit(
        jsc_data_dir, 5, "jsc_tiny.yaml", probe="StepHookCounter"
    )
    assert SEEN[fast_name]["fast"] is True
    assert SEEN[hook_name]["fast"] is False
    assert SEEN[hook_name]["after_backward"] == hook_steps == fast_steps > 20
    assert SEEN[hook_name]["before_optimizer_step"] == hook_steps
    assert fast_curves["train/loss"] == hook_curves["train/loss"]
    for name, value in fast_weights.items():
        assert torch.equal(value, hook_weights[name]), name


def test_mnist_multi_step_calls_match_single_steps(mnist_dir: Path) -> None:
    """configs/mnist.yaml (16 steps per call, random shifts) on real MNIST: K=1 vs K=4."""
    results = {}
    for k, calls in ((1, 24), (4, 6)):  # 24 optimizer steps either way
        name = f"mnist_k{k}"
        args = [
            "fit",
            "--config",
            str(CONFIGS / "mnist.yaml"),
            "--data.data_dir",
            str(mnist_dir),
            "--data.batch_size",
            "16",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            str(calls),
            "--trainer.limit_val_batches",
            "1",
            "--trainer.log_every_n_steps",
            "1",
            "--model.steps_per_call",
            str(k),
            "--experiment",
            name,
            "--trainer.callbacks+=tests.test_steps_per_call.PathProbe",
        ]
        assert run(args) == 0
        run_dir = next(Path(f"runs/{name}").glob("version_*"))
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        results[k] = ckpt, curves(run_dir)["train/loss"]
    assert SEEN["mnist_k4"]["fast"] is True
    (one, one_curve), (four, four_curve) = results[1], results[4]
    assert one["global_step"] == four["global_step"] == 24
    assert [s for s, _ in one_curve] == [s for s, _ in four_curve] == list(range(24))
    assert _values(one_curve) == pytest.approx(_values(four_curve), abs=1e-5)
    for name, value in one["state_dict"].items():
        assert torch.allclose(value, four["state_dict"][name], atol=1e-6), name


class ManualBackwardOverride(Classifier):
    def manual_backward(self, loss: torch.Tensor, *args: object, **kwargs: object) -> None:
        super().manual_backward(loss * 1.0, *args, **kwargs)


def _instance_hooked() -> Callback:
    callback = PathProbe()
    callback.on_after_backward = lambda trainer, pl_module: None  # type: ignore[method-assign]
    return callback


@pytest.mark.parametrize(
    ("trainer_kwargs", "module_class", "fast"),
    [
        ({}, Classifier, True),
        ({"callbacks": [PathProbe()]}, Classifier, True),
        ({"precision": "bf16-mixed"}, Classifier, False),
        ({"precision": "64-true"}, Classifier, False),
        ({"strategy": "ddp", "devices": 2}, Classifier, False),
        ({"profiler": "simple"}, Classifier, False),
        ({"callbacks": [StepHookCounter()]}, Classifier, False),
        ({"callbacks": [_instance_hooked()]}, Classifier, False),
        ({}, ManualBackwardOverride, False),
    ],
    ids=[
        "default",
        "callback-without-step-hooks",
        "bf16-mixed",
        "64-true",
        "ddp",
        "profiler",
        "callback-overrides-hooks",
        "hook-set-on-instance",
        "module-overrides-manual_backward",
    ],
)
def test_fast_path_only_when_nothing_could_notice(
    trainer_kwargs: dict, module_class: type[Classifier], fast: bool
) -> None:
    model = module_class(JSCTiny(), num_classes=5, input_shape=(16,), steps_per_call=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, **trainer_kwargs)
    model.trainer = trainer
    assert skips_step_hooks(model) is fast


def test_engine_uses_only_its_documented_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine runs a fit's K steps on a module and trainer that have only the names its
    docstring lists (any other name raises AttributeError), reaches Lightning's private step
    counter only through machlite._compat.step_counter, and gives the plain loop's weights."""
    assert all(f"``{name}``" in machlite.engine.__doc__ for name in MODULE_API)
    real = Classifier(JSCTiny(), num_classes=5, input_shape=(16,), steps_per_call=3)
    assert all(hasattr(real, name) for name in MODULE_API if name != "trainer")
    assert all(hasattr(pl.Trainer(logger=False), name) for name in TRAINER_API)

    torch.manual_seed(0)
    network = nn.Linear(4, 3)
    reference = copy.deepcopy(network)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    sgd = torch.optim.SGD(network.parameters(), lr=0.1)
    counted: list[str] = []
    wrapper = types.SimpleNamespace(optimizer=sgd)  # what optimizers() gives on the fast path

    def step_counter(optimizer: object) -> tuple:
        assert optimizer is wrapper
        return (lambda: counted.append("before")), (lambda: counted.append("after"))

    monkeypatch.setattr(machlite.engine, "step_counter", step_counter)
    logged: list[tuple[int, dict]] = []
    trainer = types.SimpleNamespace(
        strategy=SingleDeviceStrategy("cpu"),
        profiler=PassThroughProfiler(),
        callbacks=[Callback()],
        lr_scheduler_configs=[
            types.SimpleNamespace(
                scheduler=torch.optim.lr_scheduler.StepLR(sgd, 1, gamma=0.5), interval="step"
            )
        ],
        log_every_n_steps=2,
        optimizers=[sgd],
        loggers=[types.SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))],
        is_global_zero=True,
        sanity_checking=False,
        world_size=1,
        state=types.SimpleNamespace(fn="fit"),
    )
    assert set(vars(trainer)) == set(TRAINER_API)
    shown: list[float] = []
    hooked: list[int] = []
    module = types.SimpleNamespace(
        trainer=trainer,
        optimizers=lambda: wrapper,
        global_step=0,
        log=lambda name, value, **kwargs: shown.append(value),
        device=torch.device("cpu"),
        network=network,
        loss_fn=nn.CrossEntropyLoss(),
        train_loss=MeanMetric(),
        train_acc=MulticlassAccuracy(num_classes=3, average="micro"),
        step_hooks=[lambda step, loss: hooked.append(step)],
    )
    for name in (*STEP_HOOKS, "backward", "manual_backward"):  # not overridden
        setattr(module, name, types.MethodType(getattr(pl.LightningModule, name), module))
    assert set(vars(module)) == set(MODULE_API)

    engine = MultiStepEngine(steps_per_call=3)
    engine.start(module)
    assert engine.fast is True
    engine.run(module, batches)
    engine.epoch_end(module)
    assert all(value is not module for value in vars(engine).values())  # keeps no reference

    plain = torch.optim.SGD(reference.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(plain, 1, gamma=0.5)
    losses = []
    for x, y in batches:
        plain.zero_grad()
        loss = nn.functional.cross_entropy(reference(x), y)
        loss.backward()
        plain.step()
        schedule.step()
        losses.append(loss.item())
    for mine, theirs in zip(network.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert counted == ["before", "after"] * 3
    assert hooked == [0, 1, 2]
    assert [(step, m["train/lr"]) for step, m in logged] == [(0, 0.1), (2, 0.025)]
    assert [m["train/loss"] for _, m in logged] == [losses[0], losses[2]]
    assert shown == [losses[2]]  # the progress bar: once per call, the last logged loss
    assert module.train_loss.compute().item() == pytest.approx(sum(losses) / 3)


def test_the_cli_links_data_steps_per_call_to_the_model(jsc_data_dir: Path) -> None:
    """``--model.steps_per_call K`` reaches the datamodule when the arguments are parsed: its
    training loader hands over K batches per call, and HPARAMS shows the setting once."""
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir)]
    args += ["--model.steps_per_call", "3", "--trainer.max_epochs", "1"]
    args += ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0"]
    cli = run_lightning(args)
    assert cli.model.steps_per_call == cli.datamodule.steps_per_call == 3
    assert cli.trainer.train_dataloader.batches_per_item == 3
    assert cli.trainer.global_step == 6
    settings = cli.hparams()
    assert settings["model.steps_per_call"] == 3 and "data.steps_per_call" not in settings


def test_a_datamodule_with_other_steps_per_call_stops_the_fit(jsc_data_dir: Path) -> None:
    """As a library, a datamodule handing over another number of batches per call than the
    model steps through stops the fit at its start, in one line saying what to give."""
    model = Classifier(JSCTiny(), steps_per_call=4)
    data = JSCDataModule(data_dir=str(jsc_data_dir), source="synthetic", synthetic_jets=3000)
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(ConfigError) as err:
        trainer.fit(model, data)
    assert str(err.value) == (
        "model.steps_per_call is 4 but the datamodule's steps_per_call is 1: give "
        "JSCDataModule(steps_per_call=4) the model's value (the CLI links them)"
    )
    assert model.global_step == 0


def test_set_steps_per_call_sets_the_model_and_its_linked_copy() -> None:
    """On IPUs the CLI runs one step per call: the model's value and the datamodule's."""
    config = Namespace(
        model=Namespace(steps_per_call=32),
        data=Namespace(class_path="x", init_args=Namespace(steps_per_call=32)),
    )
    set_steps_per_call(config, 1)
    assert config.model.steps_per_call == config.data.init_args.steps_per_call == 1
