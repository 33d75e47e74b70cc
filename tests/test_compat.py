"""machlite's contract with Lightning's and torchmetrics' internals (machlite/_compat.py).

Every private symbol in :data:`machlite._compat.PRIVATE_SYMBOLS` must exist in the installed
lightning and torchmetrics with the signature machlite expects, so that an upgrade that moves
one fails here, naming the symbol and where machlite uses it, instead of breaking a run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import pytest
import torch
from packaging.version import Version

from machlite import _compat
from machlite._compat import PRIVATE_SYMBOLS, PrivateSymbol

REPO = Path(__file__).resolve().parents[1]
#: Where each top-level package of machlite's source lives (setup.cfg's package_dir).
PACKAGE_DIRS = {"machlite": REPO / "machlite", "machlite.models": REPO / "models"}
PACKAGE_DIRS["machlite.datasets"] = REPO / "datasets"


def _load(dotted: str) -> Any:
    """Import ``package.module.Class`` (or ``package.Class``): the longest importable prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def _optimizer() -> Any:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    return LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))


def _batch_progress() -> Any:
    from lightning.pytorch.loops.progress import _BatchProgress

    return _BatchProgress()


def _checkpoint() -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint()


def _metric() -> Any:
    from torchmetrics import MeanMetric

    return MeanMetric()


#: A small real instance of each owner whose listed attributes are set in ``__init__``.
INSTANCES: dict[str, Callable[[], Any]] = {
    "lightning.pytorch.core.optimizer.LightningOptimizer": _optimizer,
    "lightning.pytorch.loops.progress._BatchProgress": _batch_progress,
    "lightning.pytorch.callbacks.ModelCheckpoint": _checkpoint,
    "torchmetrics.Metric": _metric,
}


def _where(symbol: PrivateSymbol) -> str:
    return f"{symbol.owner}.{symbol.name} (machlite uses it in {symbol.used_by})"


@pytest.mark.parametrize("symbol", PRIVATE_SYMBOLS, ids=lambda s: f"{s.owner}.{s.name}")
def test_private_symbol_exists_with_expected_signature(symbol: PrivateSymbol) -> None:
    if symbol.since is not None and Version(lightning.__version__) < Version(symbol.since):
        pytest.skip(f"{symbol.name} is new in lightning {symbol.since}: {lightning.__version__}")
    try:
        owner = _load(symbol.owner)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"owner moved: cannot import {_where(symbol)}: {err}")
    if symbol.instance:
        assert symbol.owner in INSTANCES, f"no test instance for {symbol.owner}: add one"
        obj = INSTANCES[symbol.owner]()
        assert isinstance(obj, owner), f"test instance is not a {symbol.owner}"
        assert hasattr(obj, symbol.name), f"attribute gone: {_where(symbol)}"
    else:
        assert hasattr(owner, symbol.name), f"attribute gone: {_where(symbol)}"
    if symbol.params is None:
        return
    method = getattr(owner, symbol.name)
    assert callable(method), f"no longer a method: {_where(symbol)}"
    found = tuple(inspect.signature(method).parameters)[1:]  # after self
    assert found == symbol.params, (
        f"signature changed: {_where(symbol)}: expected ({', '.join(symbol.params)}) "
        f"after self, found ({', '.join(found)})"
    )


# --- the wrappers of machlite._compat -----------------------------------------------------


def test_mark_metric_restored_computes_a_restored_metric_without_warning() -> None:
    from torchmetrics import MeanMetric

    source = MeanMetric()
    source.update(torch.tensor([1.0, 2.0, 3.0]))
    restored = MeanMetric()
    restored.update(torch.tensor([10.0]))
    assert restored.compute() == 10.0  # cached: a later compute() would return it again
    for key, value in source.metric_state.items():
        setattr(restored, key, value.clone())
    _compat.mark_metric_restored(restored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert restored.compute() == pytest.approx(2.0)

    fresh = MeanMetric()  # what the wrapper prevents: a warning, then a stale or wrong value
    for key, value in source.metric_state.items():
        setattr(fresh, key, value.clone())
    with pytest.warns(UserWarning, match="before the ``update``"):
        fresh.compute()


def test_step_counter_returns_the_optimizers_two_hooks() -> None:
    optimizer = _optimizer()
    calls: list[str] = []
    optimizer._on_before_step = lambda: calls.append("before")  # as Lightning's loop installs
    optimizer._on_after_step = lambda: calls.append("after")
    before, after = _compat.step_counter(optimizer)
    before()
    after()
    assert calls == ["before", "after"]


def test_is_last_batch_reads_the_fit_loops_batch_progress() -> None:
    progress = _batch_progress()
    trainer = SimpleNamespace(
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    )
    assert _compat.is_last_batch(trainer) is False
    progress.is_last_batch = True
    assert _compat.is_last_batch(trainer) is True


def test_save_last_checkpoint_passes_the_monitor_candidates() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    calls: list[tuple[Any, Any]] = []
    trainer = object()

    class Recording(ModelCheckpoint):
        def _monitor_candidates(self, trainer: Any) -> dict[str, torch.Tensor]:
            return {"epoch": torch.tensor(3), "seen": trainer}

        def _save_last_checkpoint(self, trainer: Any, monitor_candidates: dict) -> None:
            calls.append((trainer, monitor_candidates))

    _compat.save_last_checkpoint(Recording(), trainer)
    assert len(calls) == 1
    assert calls[0][0] is trainer
    assert calls[0][1]["seen"] is trainer


# --- the private names appear only where the table says ------------------------------------


def _module_file(dotted: str) -> Path | None:
    """The source file of a machlite module path (its longest prefix that is a module, below
    the top-level package: ``machlite.engine`` is not ``machlite/__init__.py``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        name = ".".join(parts[:cut])
        package = max((p for p in PACKAGE_DIRS if name == p or name.startswith(p + ".")), key=len)
        rest = name[len(package) :].lstrip(".").split(".") if name != package else []
        base = PACKAGE_DIRS[package].joinpath(*rest)
        for candidate in (base.with_suffix(".py") if rest else None, base / "__init__.py"):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


def _used_by_files(symbol: PrivateSymbol) -> set[Path]:
    names = re.findall(r"\bmachlite(?:\.\w+)*", symbol.used_by)
    return {f for f in map(_module_file, names) if f is not None}


def _source_files() -> list[Path]:
    return sorted(f for d in PACKAGE_DIRS.values() for f in d.rglob("*.py"))


@pytest.mark.parametrize("symbol", PRIVATE_SYMBOLS, ids=lambda s: f"{s.owner}.{s.name}")
def test_used_by_names_an_existing_machlite_module(symbol: PrivateSymbol) -> None:
    assert _used_by_files(symbol), (
        f"{symbol.owner}.{symbol.name}: used_by names no existing machlite module: "
        f"{symbol.used_by!r}"
    )


def test_private_names_are_used_only_in_compat_or_where_listed() -> None:
    """Every ``x._name`` access and ``def _name`` of a listed private name is in _compat.py or
    in a file its ``used_by`` names.

    This matches by name only (it cannot tell a Lightning object from another), so an
    unrelated ``._get`` elsewhere in machlite would be flagged too: list it, or rename it.
    """
    allowed: dict[str, set[Path]] = {}
    for symbol in PRIVATE_SYMBOLS:
        if symbol.name.startswith("_") and not symbol.name.startswith("__"):
            allowed.setdefault(symbol.name, {REPO / "machlite" / "_compat.py"})
            allowed[symbol.name] |= _used_by_files(symbol)
    stray = []
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = node.name
            else:
                continue
            if name in allowed and path not in allowed[name]:
                stray.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not stray, (
        "private Lightning/torchmetrics names used outside machlite/_compat.py and the "
        "files PRIVATE_SYMBOLS' used_by names (go through a _compat function, or list the "
        "use):\n" + "\n".join(stray)
    )
