"""The progress bar counts optimizer steps (not Lightning calls of K steps), TQDM and Rich."""

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import Callback, ModelSummary

from machlite.callbacks.progress import StepRichProgressBar, StepTQDMProgressBar
from machlite.callbacks.summary import NetworkSummary
from machlite.cli import run_lightning

from .conftest import CONFIGS, synthetic

SEEN: dict[str, Any] = {}


class BarProbe(Callback):
    """Record the bar's total, its count before each call and at the end, and its postfix."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        SEEN["totals"] = [
            *SEEN.get("totals", []),
            trainer.progress_bar_callback.total_train_batches,
        ]
        SEEN["counts"] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        SEEN["counts"].append(_count(trainer.progress_bar_callback))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        bar = trainer.progress_bar_callback
        SEEN["counts"].append(_count(bar))
        SEEN["steps"] = trainer.global_step
        if isinstance(bar, StepTQDMProgressBar):
            SEEN["postfix"] = bar.train_progress_bar.postfix or ""


def _count(bar: Any) -> int:
    """How many steps the bar shows as done."""
    if isinstance(bar, StepTQDMProgressBar):
        return bar.train_progress_bar.n
    return int(bar.progress.tasks[bar.train_progress_bar_id].completed)


def _fit(jsc_data_dir: Path, k: int, *extra: str) -> Any:
    SEEN.clear()
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir)]
    args += ["--data.batch_size", "64", "--trainer.max_epochs", "1"]
    args += ["--model.steps_per_call", str(k), "--trainer.enable_model_summary", "false"]
    args += ["--trainer.callbacks+=tests.test_progress.BarProbe", *extra]
    return run_lightning(args)


@pytest.mark.parametrize("k", [1, 5])
def test_tqdm_bar_counts_optimizer_steps(jsc_data_dir: Path, k: int) -> None:
    cli = _fit(jsc_data_dir, k, "--trainer.callbacks+=TQDMProgressBar")
    assert isinstance(cli.trainer.progress_bar_callback, StepTQDMProgressBar)
    steps = SEEN["steps"]
    assert steps > 5 and SEEN["totals"] == [steps]  # the epoch's optimizer steps, not calls
    calls = -(-steps // k)
    # before each call: the steps done so far; at the end: all of them
    assert SEEN["counts"] == [min(i * k, steps) for i in range(calls)] + [steps]
    assert "v_num" not in SEEN["postfix"] and "train/loss" in SEEN["postfix"]


def test_rich_bar_counts_optimizer_steps(jsc_data_dir: Path) -> None:
    pytest.importorskip("rich", reason="RichProgressBar needs the rich package")
    cli = _fit(jsc_data_dir, 5, "--trainer.callbacks+=RichProgressBar")
    assert isinstance(cli.trainer.progress_bar_callback, StepRichProgressBar)
    steps = SEEN["steps"]
    assert SEEN["totals"] == [steps]
    assert SEEN["counts"][1:] == [min(i * 5, steps) for i in range(1, -(-steps // 5))] + [steps]


def test_default_bar_and_summary_stay_machlite_s_with_rich_installed(jsc_data_dir: Path) -> None:
    """Lightning switches its defaults to Rich when ``rich`` imports; machlite's do not."""
    pytest.importorskip("rich", reason="the rich package (in the dev extra) is not installed")
    cli = _fit(jsc_data_dir, 5, "--trainer.enable_model_summary", "true")
    assert type(cli.trainer.progress_bar_callback) is StepTQDMProgressBar
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, ModelSummary)] == [
        NetworkSummary
    ]
