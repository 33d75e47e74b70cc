"""Shared pieces of the epoch benchmarks: timers, the plain loop, the machop-style pipeline."""

import cProfile
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from machlite.atomic import atomic_write
from machlite.cli import MachliteCLI
from machlite.datasets import InMemoryDataModule
from machlite.module import Classifier


class EpochTimer(Callback):
    """Time one training epoch: from its start to the end of training.

    The end of training comes after everything the epoch triggers: validation (when it
    runs), the epoch metrics and their logging, and the checkpoints. Use with one epoch.

    Args:
        profiler: Also run this profiler over the timed span.
    """

    def __init__(self, profiler: cProfile.Profile | None = None) -> None:
        self.seconds = float("nan")
        self.profiler = profiler

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.profiler is not None:
            self.profiler.enable()
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start
        if self.profiler is not None:
            self.profiler.disable()


def machlite_process(
    args: list[str], log: Path, script: str, env: dict[str, str] | None = None
) -> str:
    """Run ``python -m machlite ARGS`` in a new process and keep its output in ``log``.

    Args:
        args: The machlite arguments.
        log: Where its output goes.
        script: The calling script's name, for the failure line.
        env: Variables set for it on top of this process's environment.

    Returns:
        Its output (stdout and stderr). Exits with one line naming ``log`` when it fails.
    """
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "machlite", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{script}: machlite {' '.join(args[:3])} failed; see {log}")
    return proc.stdout + proc.stderr


def fit_run_folder(out: str, log: Path, script: str) -> Path:
    """The run folder of a ``machlite fit`` from its output ("results in DIR")."""
    import re
    import sys

    found = re.search(r"machlite: run finished; results in (\S+)", out)
    if found is None:
        sys.exit(f"{script}: the fit did not say where its run folder is; see {log}")
    return Path(found.group(1))


def machlite_epoch(
    args: list[str], validate: bool, profiler: cProfile.Profile | None = None
) -> float:
    """One epoch of machlite's own fit (the CLI's code path, default callbacks and logging)."""
    extra = ["--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0"]
    if not validate:
        extra += ["--trainer.limit_val_batches", "0"]
    timer = EpochTimer(profiler)
    timed_fit([*args, *extra], timer)
    return timer.seconds


def timed_fit(args: list[str], timer: Callback) -> MachliteCLI:
    """Fit machlite with ``args`` (the CLI's code path) and ``timer`` among its callbacks."""
    cli = MachliteCLI(
        model_class=Classifier,
        datamodule_class=InMemoryDataModule,
        subclass_mode_data=True,
        args=args,
        run=False,
    )
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def jsc_cli_args(
    config: str, jets: int, data_dir: Path, batch_size: int, runs_dir: Path, *overrides: str
) -> list[str]:
    """machlite arguments for a CPU fit of ``config`` on the SYNTHETIC JSC file in data_dir."""
    return [
        "--config", config, "--data.source", "synthetic",
        "--data.synthetic_jets", str(jets), "--data.data_dir", str(data_dir),
        "--data.batch_size", str(batch_size), "--runs_dir", str(runs_dir),
        "--trainer.accelerator", "cpu", *overrides,
    ]  # fmt: skip


def plain_epoch(network: nn.Module, x: Tensor, y: Tensor, batch_size: int, seed: int) -> float:
    """One epoch of a hand-written loop: Adam, one index operation per batch, no logging."""
    torch.manual_seed(seed)
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    perm = torch.randperm(len(x))
    for i in range(0, len(x), batch_size):
        idx = perm[i : i + batch_size]
        if len(idx) < 2:
            continue
        loss = loss_fn(network(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class MachopStyleModule(pl.LightningModule):
    """machop's training module, in miniature: per-step loss and accuracy logging."""

    def __init__(self, network: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.network = network
        self.loss_fn = nn.CrossEntropyLoss()
        self.acc_train = MulticlassAccuracy(num_classes)
        self.acc_val = MulticlassAccuracy(num_classes)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out = self.network(x)
        loss = self.loss_fn(out, y)
        self.acc_train(out, y)
        self.log("train_acc", self.acc_train, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self.network(x)
        self.acc_val(out, y)
        self.log("val_acc", self.acc_val, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val_loss", self.loss_fn(out, y), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def machop_style_epoch(
    network: nn.Module, dataset: Dataset, batch_size: int, num_classes: int, log_dir: Path
) -> float:
    """One epoch machop's way: a map-style dataset + DataLoader (2 workers), per-step
    logging, progress bar, and validation on the training set. Validation included."""
    # A last batch of one sample would stop BatchNorm: drop it, as the plain loop does.
    drop_last = len(dataset) % batch_size == 1
    train = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=drop_last
    )
    val = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=2)
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=pl.loggers.TensorBoardLogger(str(log_dir), name="machop_style"),
        callbacks=[timer],
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(MachopStyleModule(network, num_classes), train, val)
    return timer.seconds


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run every variant once per round, ``repeats`` rounds; return each one's median.

    Round r starts with variant r (the order rotates), so no variant always runs first or
    always follows the same neighbour.
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = variants[name]()
            times[name].append(seconds)
            print(f"  round {round_ + 1}/{repeats} {name}: {seconds:.2f} s", flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def compare(
    prefix: str,
    cli_args: list[str],
    network: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    machop_dataset: Dataset,
    batch_size: int,
    num_classes: int,
    log_dir: Path,
    repeats: int,
) -> dict[str, float]:
    """Time variants (a) to (d) interleaved at one batch size; return times and ratios.

    Keys are ``{prefix}_bs{B}_{variant}_s`` (median seconds),
    ``{prefix}_bs{B}_machlite_over_plain`` and ``{prefix}_bs{B}_machopstyle_over_machlite``.
    """
    print(f"batch size {batch_size}:", flush=True)
    # Untimed warm-up (first-call costs: lazy imports, the first TensorBoard writer, ...).
    machlite_epoch([*cli_args, "--trainer.limit_train_batches", "2"], validate=True)
    plain_epoch(network(), x[: 4 * batch_size], y[: 4 * batch_size], batch_size, seed=0)
    med = interleaved(
        {
            "machlite_train": partial(machlite_epoch, cli_args, validate=False),
            "machlite_train_val": partial(machlite_epoch, cli_args, validate=True),
            "plain": lambda: plain_epoch(network(), x, y, batch_size, seed=0),
            "machop_style": lambda: machop_style_epoch(
                network(), machop_dataset, batch_size, num_classes, log_dir
            ),
        },
        repeats,
    )
    key = f"{prefix}_bs{batch_size}"
    results = {f"{key}_{name}_s": seconds for name, seconds in med.items()}
    results[f"{key}_machlite_over_plain"] = med["machlite_train"] / med["plain"]
    results[f"{key}_machopstyle_over_machlite"] = med["machop_style"] / med["machlite_train_val"]
    return results


def environment() -> dict[str, str | int | float]:
    """What the numbers were measured on: versions, CPU count and the load average."""
    import os
    import platform

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }


def report(path: str | None, results: dict, targets: dict[str, float] | None = None) -> None:
    """Print the results as a Markdown table and write them to ``path`` as JSON (if given).

    The machine's description (:func:`environment`, taken now, at the end of the run) is
    written with them. A key in ``targets`` (an upper bound) is shown with pass or FAIL.
    """
    results = {**results, **{f"env_{k}": v for k, v in environment().items()}}
    print("\n| measure | value |\n|---|---:|")
    for key, value in results.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if targets and key in targets:
            verdict = "pass" if value <= targets[key] else "FAIL"
            text += f" (target <= {targets[key]}: {verdict})"
        print(f"| {key} | {text} |")
    if path:
        atomic_write(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
