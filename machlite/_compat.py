"""machlite's contract with Lightning's and torchmetrics' internals: every private symbol, here.

machlite reaches below the public APIs in a few places, for speed (the multi-step engine skips
Lightning's per-step hook dispatch) and for safety (``last.ckpt`` at every epoch end, exact
resume, one-line CLI errors). Each such use goes through a function of this module, or, where
machlite overrides a private method, is listed in :data:`PRIVATE_SYMBOLS`.
``tests/test_compat.py`` checks that every listed symbol exists with the expected signature,
so an upgrade of lightning or torchmetrics that moves one fails CI loudly instead of
breaking a run silently. setup.cfg bounds lightning to the range CI tests (its lowest and
newest releases both run the fast suite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PrivateSymbol:
    """One private name machlite depends on.

    Attributes:
        owner: Dotted path of the class that has it.
        name: The attribute or method name.
        params: A method's parameter names after ``self`` (None for a data attribute).
        instance: True for an attribute set in ``__init__`` (checked on an instance).
        used_by: Where machlite uses it, and why.
        since: Lowest lightning release that has it, when newer than the IPU stack's 2.0.9.
    """

    owner: str
    name: str
    params: tuple[str, ...] | None
    instance: bool
    used_by: str
    since: str | None = None


_CLI = "lightning.pytorch.cli.LightningCLI"
_CKPT = "lightning.pytorch.callbacks.ModelCheckpoint"
_MANUAL = "machlite.checkpoint.model_checkpoint.MachliteCheckpoint"

#: Every private symbol machlite uses, with where and why.
PRIVATE_SYMBOLS: tuple[PrivateSymbol, ...] = (
    PrivateSymbol(
        "lightning.pytorch.core.optimizer.LightningOptimizer",
        "_on_before_step",
        None,
        True,
        "machlite.engine: count an optimizer step in global_step on the fast path",
    ),
    PrivateSymbol(
        "lightning.pytorch.core.optimizer.LightningOptimizer",
        "_on_after_step",
        None,
        True,
        "machlite.engine: close the optimizer-step count on the fast path",
    ),
    PrivateSymbol(
        _CKPT,
        "_save_last_checkpoint",
        ("trainer", "monitor_candidates"),
        False,
        f"{_MANUAL}: write last.ckpt at every epoch end and every N steps",
    ),
    PrivateSymbol(
        _CKPT,
        "_monitor_candidates",
        ("trainer",),
        False,
        f"{_MANUAL}: the metrics last.ckpt's name and state are filled from",
    ),
    PrivateSymbol(
        _CKPT,
        "_should_skip_saving_checkpoint",
        ("trainer",),
        False,
        f"{_MANUAL}: no second save at a step that already saved",
    ),
    PrivateSymbol(
        _CKPT,
        "_should_save_on_train_epoch_end",
        ("trainer",),
        False,
        f"{_MANUAL}: save last.ckpt where Lightning saves (train end or validation end)",
    ),
    PrivateSymbol(_CKPT, "_every_n_epochs", None, True, f"{_MANUAL}: epoch-end save cadence"),
    PrivateSymbol(
        _CKPT, "_every_n_train_steps", None, True, f"{_MANUAL}: Lightning's own step saves"
    ),
    PrivateSymbol(
        _CKPT, "_train_time_interval", None, True, f"{_MANUAL}: Lightning's own timed saves"
    ),
    PrivateSymbol(
        "lightning.pytorch.loops.progress._BatchProgress",
        "is_last_batch",
        None,
        True,
        f"{_MANUAL}: no step checkpoint right before the epoch-end one",
    ),
    PrivateSymbol(
        "torchmetrics.Metric",
        "_update_count",
        None,
        True,
        "machlite.checkpoint.resume: a restored half-epoch metric computes without a warning",
    ),
    PrivateSymbol(
        "torchmetrics.Metric",
        "_computed",
        None,
        True,
        "machlite.checkpoint.resume: drop a cached value after restoring a metric's state",
    ),
    PrivateSymbol(
        _CLI,
        "_parse_ckpt_path",
        (),
        False,
        "machlite.cli.MachliteCLI overrides it: checkpoint hyperparameters load with "
        "weights_only and a bad file is one line (not called by lightning < 2.5.5)",
        since="2.5.5",
    ),
    PrivateSymbol(
        _CLI,
        "_prepare_subcommand_kwargs",
        ("subcommand",),
        False,
        "machlite.cli.MachliteCLI overrides it: resolve --ckpt_path last, weights_only=True",
    ),
    PrivateSymbol(
        _CLI,
        "_run_subcommand",
        ("subcommand",),
        False,
        "machlite.cli.MachliteCLI overrides it: explain run-time failures in one line",
    ),
    PrivateSymbol(
        _CLI, "_get", ("config", "key", "default"), False, "machlite.cli: read a config value"
    ),
    PrivateSymbol(
        "torch._dynamo.utils",
        "counters",
        None,
        False,
        "machlite.compiled: say whether model.compile loaded its graph from the disk cache",
    ),
)


def step_counter(optimizer: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """The two calls around a raw ``optimizer.step()`` that make Lightning count the step.

    Lightning's manual-optimization loop installs them on the ``LightningOptimizer``; calling
    them keeps ``global_step`` (and everything keyed on it) right when machlite steps the
    wrapped torch optimizer directly.
    """
    return optimizer._on_before_step, optimizer._on_after_step


def compile_cache_hits() -> int:
    """How many compiled graphs this process has loaded from torch's on-disk caches.

    torch counts them in ``torch._dynamo.utils.counters``: Inductor's FX-graph cache and
    AOTAutograd's cache (a hit of the latter skips the former).
    """
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"]) + int(
        counters["aot_autograd"]["autograd_cache_hit"]
    )


def is_last_batch(trainer: Any) -> bool:
    """Whether the fit loop is at its epoch's last batch."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def save_last_checkpoint(callback: Any, trainer: Any) -> None:
    """Have a ModelCheckpoint write its ``last.ckpt`` now, as it does after a top-k save."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def mark_metric_restored(metric: Any) -> None:
    """Tell a torchmetrics Metric whose state was set by hand that it holds updates."""
    metric._update_count = max(metric._update_count, 1)
    metric._computed = None
