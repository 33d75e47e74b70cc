"""Compiled training steps (``model.compile: true``) against eager training, in ONE run.

On SYNTHETIC JSC data of the real size (about 789,600 training jets), interleaved and
repeated (median of --repeats):
  (1) steady state, per batch size: a JSC-Tiny training epoch of compiled machlite (the
      second epoch of a fit: the first compiled or loaded the graph) over a plain eager
      PyTorch loop's epoch (benchmarks/common.py's, the issue's reference), with eager
      machlite beside them;
  (2) whole fits, per config: the config's 10-epoch fit in a fresh process, compiled with an
      empty compile cache (first process) and with the cache that run left (cached), over
      today's eager machlite fit; startup, data loading, validation and checkpoints included.
The keys are merged into the JSON file given (e.g. the one benchmarks/jsc_epoch.py wrote).

    python benchmarks/jsc_compiled.py --json benchmarks/results/jsc_epoch_2core.json
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    environment,
    interleaved,
    jsc_cli_args,
    machlite_epoch,
    plain_epoch,
    report,
    timed_fit,
)
from jsc_epoch import jsc_parser, setup_seconds  # noqa: E402

from machlite.accelerator import stop_gpu_probe  # noqa: E402
from machlite.atomic import atomic_write_json  # noqa: E402
from machlite.datasets import JSCDataModule  # noqa: E402
from machlite.models import NETWORKS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: The issue's bound on compiled machlite's steady-state epoch over the plain eager loop's.
TARGET = 0.4


class SecondEpochTimer(Callback):
    """Time the second training epoch (the first one compiled the graph or loaded it)."""

    def __init__(self) -> None:
        self.seconds = float("nan")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.seconds = time.perf_counter() - self._start


def compiled_epoch(args: list[str]) -> float:
    """A steady-state training epoch of compiled machlite (the CLI's code path)."""
    extra = ["--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0"]
    extra += ["--trainer.num_sanity_val_steps", "0", "--model.compile", "true"]
    timer = SecondEpochTimer()
    cli = timed_fit([*args, *extra], timer)
    if cli.model.engine.compiled is None:
        raise SystemExit("the compiled path did not apply: see the warning above")
    return timer.seconds


def whole_fit(args: list[str], cache: Path, work: Path) -> float:
    """Wall time of ``machlite fit ARGS`` in a new process with compile cache ``cache``."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "machlite", "fit", *args]
    command += ["--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"machlite fit failed:\n{done.stderr[-2000:]}")
    return seconds


class FreshCache:
    """Hands out a new empty compile cache per first-process run; ``last`` is the newest."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0
        self.last = root / "cache0"

    def new(self) -> Path:
        self.count += 1
        self.last = self.root / f"cache{self.count}"
        return self.last


def main() -> None:
    """Run the benchmark, print the table, merge the keys into --json."""
    parser = jsc_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=["jsc_tiny", "jsc_will"], help="whole-fit configs"
    )
    args = parser.parse_args()

    stop_gpu_probe()  # as a machlite CPU run does, for every variant (performance.md)
    work = Path(tempfile.mkdtemp(prefix="machlite-bench-"))
    data_dir = work / "data"
    print(f"SYNTHETIC JSC data, {args.jets} jets, in {data_dir}", flush=True)
    setup_seconds(data_dir, args.jets, cached=False)  # writes the synthetic file once
    dm = JSCDataModule(data_dir=str(data_dir), source="synthetic", synthetic_jets=args.jets)
    dm.setup("fit")
    x, y = dm.splits["train"]
    network = NETWORKS[args.network]
    results: dict[str, float | int] = {"train_jets": len(y)}
    targets = {}
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "steady_cache"))

    for bs in args.batch_sizes:
        print(f"steady state, batch size {bs}:", flush=True)
        cli_args = jsc_cli_args(args.config, args.jets, data_dir, bs, work / "runs")
        compiled_epoch([*cli_args, "--trainer.limit_train_batches", "40"])  # compiles, untimed
        med = interleaved(
            {
                "compiled": partial(compiled_epoch, cli_args),
                "machlite_eager": partial(machlite_epoch, cli_args, validate=False),
                "plain": lambda: plain_epoch(network(), x, y, bs, seed=0),  # noqa: B023
            },
            args.repeats,
        )
        key = f"jsc_bs{bs}"
        results |= {f"{key}_compiled_train_s": med["compiled"]}
        results[f"{key}_compiled_run_plain_s"] = med["plain"]  # this run's own references
        results[f"{key}_compiled_run_machlite_eager_s"] = med["machlite_eager"]
        results[f"{key}_compiled_over_plain"] = med["compiled"] / med["plain"]
        results[f"{key}_compiled_over_machlite_eager"] = med["compiled"] / med["machlite_eager"]
        targets[f"{key}_compiled_over_plain"] = TARGET

    for config in args.configs:
        print(f"whole fit, configs/{config}.yaml:", flush=True)
        path = str(REPO / "configs" / f"{config}.yaml")
        fit_args = jsc_cli_args(path, args.jets, data_dir, 256, work / "runs")
        batch = fit_args.index("--data.batch_size")
        del fit_args[batch : batch + 2]  # the config's own batch size
        caches = FreshCache(work / f"{config}_caches")
        compiled_args = [*fit_args, "--model.compile", "true"]
        med = interleaved(
            {
                "eager": lambda: whole_fit(fit_args, work / "unused", work),  # noqa: B023
                "compiled_first": lambda: whole_fit(compiled_args, caches.new(), work),  # noqa: B023
                "compiled_cached": lambda: whole_fit(compiled_args, caches.last, work),  # noqa: B023
            },
            args.repeats,
        )
        key = f"{config}_fit"
        results |= {f"{key}_{name}_s": seconds for name, seconds in med.items()}
        results[f"{key}_compiled_first_over_eager"] = med["compiled_first"] / med["eager"]
        results[f"{key}_compiled_cached_over_eager"] = med["compiled_cached"] / med["eager"]

    report(None, results, targets)
    if args.json:  # merged into the file; this run's machine under compiled_env_*
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else {}
        mine = {f"compiled_{k}" if k == "train_jets" else k: v for k, v in results.items()}
        env = {f"compiled_env_{k}": v for k, v in environment().items()}
        atomic_write_json(path, dict(sorted({**old, **mine, **env}.items())))
        print(f"wrote {path}")


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
