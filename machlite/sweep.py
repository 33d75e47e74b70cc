"""``machlite sweep``: a grid of settings x seeds, each a normal ``machlite fit``.

machlite sweep --config configs/jsc_tiny.yaml --grid data.batch_size=32,64,128,256 \\
    --grid optimizer.lr=1e-4,1e-3 --seeds 0,1,2 [--jobs N] [--sweep_dir DIR] [--name NAME] \\
    [--key value ...]
machlite sweep --sweep configs/sweeps/lab1_batch_size.yaml [--key value ...]

Each run is ``machlite.cli.main(["fit", ...])`` followed by ``main(["test", ...])`` on the
best-``val/acc`` checkpoint, both in one subprocess (``python -m machlite.sweep --job``).
Runs land in ``SWEEP_DIR/<setting>/seed_<S>`` (e.g. ``batch_size=32,lr=0.001/seed_0``), the
test results in its ``test/`` folder, the console output in its ``run.log``. A finished run
writes ``done.json`` (atomically) last; a sweep run again skips the runs that have one and
redoes the others. At the end: ``summary.csv``, ``summary.md``, ``runs.csv`` and
``plots/*.png`` in the sweep folder.
"""

import csv
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from machlite.errors import ConfigError, MachliteError

#: Keys the sweep sets itself, so they cannot be fixed by an override.
RESERVED = {
    "seed_everything": "use --seeds",
    "runs_dir": "use --sweep_dir",
    "run_name": "the sweep names every run",
    "config": "give the config with --config",
}
SWEEP_FILE_KEYS = ("config", "name", "grid", "seeds", "overrides", "link", "description")
METRICS = ("val_acc_final", "val_acc_best", "test_acc", "epochs_to_best", "sec_per_epoch")
METRIC_TITLES = {
    "val_acc_final": "final val/acc",
    "val_acc_best": "best val/acc",
    "test_acc": "test/acc",
    "epochs_to_best": "epochs to best",
    "sec_per_epoch": "s/epoch",
}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_PROGRESS_FLAG = "trainer.enable_progress_bar"


class Interrupted(MachliteError):
    """The user stopped the sweep (Ctrl-C)."""

    exit_code = 130


# -- the sweep's definition -------------------------------------------------------------------
@dataclass
class Sweep:
    """What to run.

    Attributes:
        config: The base config file (absolute), or None.
        grid: Swept key (dotted, as on the ``machlite fit`` command line) to its values.
        seeds: Seeds; each setting runs once per seed (``--seed_everything``).
        overrides: Fixed ``(key, value)`` settings passed to every run.
        link: Key set in each run to the value of a swept key (e.g. the cosine schedule's
            ``lr_scheduler.init_args.T_max`` to ``trainer.max_epochs``).
        name: The sweep's name.
        sweep_dir: Folder of the sweep's runs.
    """

    config: Path | None
    grid: dict[str, list[str]]
    seeds: list[int]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    link: dict[str, str] = field(default_factory=dict)
    name: str = "sweep"
    sweep_dir: Path = Path("sweeps/sweep")


@dataclass
class Run:
    """One setting with one seed.

    Attributes:
        setting: The setting's folder name, e.g. ``batch_size=32,lr=0.001``.
        values: Swept key to its value in this setting.
        seed: The seed.
    """

    setting: str
    values: dict[str, str]
    seed: int

    @property
    def name(self) -> str:
        """The run's folder under the sweep folder (TensorBoard's run name)."""
        return f"{self.setting}/seed_{self.seed}"


def cli_value(value: Any) -> str:
    """A YAML value as a ``machlite fit`` command-line value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def value_label(value: str) -> str:
    """A short, file-name-safe label: numbers in shortest form, class paths by class name."""
    try:
        return str(int(value))
    except ValueError:
        pass
    try:
        number = float(value)
        if math.isfinite(number):
            return repr(number)
    except ValueError:
        pass
    if "/" in value or value.endswith((".yaml", ".yml")):
        value = Path(value).stem
    elif re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", value):
        value = value.rsplit(".", 1)[1]
    return _UNSAFE.sub("_", value).strip("_") or "_"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each swept key's name in run names: its last part (``optimizer.lr`` -> ``lr``), or the
    whole key where two last parts would clash."""
    last = {key: key.rsplit(".", 1)[-1] for key in keys}
    counts: dict[str, int] = {}
    for name in last.values():
        counts[name] = counts.get(name, 0) + 1
    return {key: name if counts[name] == 1 else key for key, name in last.items()}


def expand(sweep: Sweep) -> list[Run]:
    """Every setting x seed, seed-major: all settings with the first seed come first, so an
    interrupted sweep already covers every setting once.

    Raises:
        ConfigError: Two values of a key give the same label.
    """
    keys = list(sweep.grid)
    names = short_keys(keys)
    labels: dict[str, dict[str, str]] = {}
    for key in keys:
        labels[key] = {v: value_label(v) for v in sweep.grid[key]}
        if len(set(labels[key].values())) != len(sweep.grid[key]):
            labels[key] = {v: _UNSAFE.sub("_", v) for v in sweep.grid[key]}
            if len(set(labels[key].values())) != len(sweep.grid[key]):
                raise ConfigError(f"grid values of {key} must differ: {sweep.grid[key]}")
    settings = []
    for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        name = ",".join(f"{names[k]}={labels[k][v]}" for k, v in values.items()) or "base"
        settings.append((name, values))
    return [Run(name, values, seed) for seed in sweep.seeds for name, values in settings]


def fit_args(sweep: Sweep, run: Run) -> list[str]:
    """The ``machlite fit`` arguments of a run, without the run's place (see run_args)."""
    args = ["fit"]
    if sweep.config is not None:
        args += ["--config", str(sweep.config)]
    for key, value in sweep.overrides:
        args += [f"--{key}", value]
    for key, value in run.values.items():
        args += [f"--{key}", value]
    for target, source in sweep.link.items():
        args += [f"--{target}", run.values[source]]
    return args + ["--seed_everything", str(run.seed)]


def run_args(sweep: Sweep, run: Run) -> list[str]:
    """The full ``machlite fit`` arguments: fit_args plus the sweep folder and run name."""
    return fit_args(sweep, run) + ["--runs_dir", str(sweep.sweep_dir), "--run_name", run.name]


# -- parsing ----------------------------------------------------------------------------------
def parse_values(text: str) -> list[str]:
    """``"32,64,128"`` -> ``["32", "64", "128"]``."""
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_seeds(value: Any) -> list[int]:
    """Seeds from ``"0,1,2"``, ``[0, 1, 2]`` or ``0``."""
    items = parse_values(value) if isinstance(value, str) else value
    items = items if isinstance(items, list) else [items]
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"seeds must be integers like 0,1,2, got {value!r}") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers like 0,1,2, got {value!r}")
    return seeds


def parse_grid_option(text: str) -> tuple[str, list[str]]:
    """``"data.batch_size=32,64"`` -> ``("data.batch_size", ["32", "64"])``."""
    key, sep, values = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not parse_values(values):
        raise ConfigError(f"--grid {text!r}: write KEY=V1,V2,..., e.g. data.batch_size=32,64")
    return key, parse_values(values)


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """``["--trainer.max_epochs", "2", "--data.source=synthetic"]`` -> key/value pairs."""
    out = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(
                f"unexpected argument {token!r}: settings for every run are --key value "
                "pairs, e.g. --trainer.max_epochs 2"
            )
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value, e.g. --{key} VALUE")
            value = tokens[i + 1]
            i += 2
        out.append((key, value))
    return out


def load_sweep_file(path: Path) -> dict[str, Any]:
    """Read a sweep file; relative config paths are resolved against the file's folder.

    Raises:
        ConfigError: The file is missing, not YAML, or has unknown keys or bad values.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the sweep file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {path} is not valid YAML: {err}".splitlines()[0]) from err
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping with keys {SWEEP_FILE_KEYS}")
    unknown = sorted(set(data) - set(SWEEP_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"sweep file {path}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(SWEEP_FILE_KEYS)}"
        )
    out: dict[str, Any] = {"name": str(data.get("name") or Path(path).stem)}
    if data.get("config"):
        config = Path(str(data["config"]))
        out["config"] = config if config.is_absolute() else Path(path).parent / config
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep file {path}: grid must map keys to lists of values")
    out["grid"] = {}
    for key, values in grid.items():
        items = parse_values(values) if isinstance(values, str) else values
        items = items if isinstance(items, list) else [items]
        out["grid"][str(key)] = [cli_value(v) for v in items]
    if "seeds" in data:
        out["seeds"] = parse_seeds(data["seeds"])
    for block in ("overrides", "link"):
        value = data.get(block) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"sweep file {path}: {block} must be a mapping of key: value")
        out[block] = {str(k): cli_value(v) for k, v in value.items()}
    return out


def _config_source(config: Path | None) -> str | None:
    """The ``data`` source written in a config file (None when not given)."""
    if config is None:
        return None
    try:
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    args = data.get("init_args", data) if isinstance(data, dict) else {}
    return args.get("source") if isinstance(args, dict) else None


def is_synthetic_sweep(sweep: Sweep) -> bool:
    """True when the sweep's runs use synthetic data (config, overrides or grid say so)."""
    keys = ("data.source", "data.init_args.source")
    if any(k in keys and "synthetic" in values for k, values in sweep.grid.items()):
        return True
    source = _config_source(sweep.config)
    for key, value in sweep.overrides:
        if key in keys:
            source = value
    return source == "synthetic"


def validate(sweep: Sweep) -> None:
    """Check the sweep's keys before anything runs.

    Raises:
        ConfigError: A bad key, a key both swept and fixed, or a link to an unswept key.
    """
    if sweep.config is not None and not sweep.config.is_file():
        raise ConfigError(f"config file {sweep.config} not found: give --config PATH.yaml")
    fixed = [k for k, _ in sweep.overrides]
    for key in [*sweep.grid, *fixed, *sweep.link, *sweep.link.values()]:
        if not _KEY.match(key):
            raise ConfigError(f"{key!r} is not a config key like data.batch_size")
        if key in RESERVED:
            raise ConfigError(f"--{key} cannot be set in a sweep: {RESERVED[key]}")
    for key in sweep.grid:
        if key in fixed:
            raise ConfigError(f"{key} is both swept (--grid) and fixed (--{key}): drop one")
    for target, source in sweep.link.items():
        if source not in sweep.grid:
            raise ConfigError(f"link {target}: {source} is not a swept (grid) key")
        if target in sweep.grid or target in fixed:
            raise ConfigError(f"link target {target} is also swept or fixed: drop one")


def build_parser() -> Any:
    """The ``machlite sweep`` argument parser (extra ``--key value`` pairs are kept apart)."""
    from machlite.plot import OneLineArgumentParser

    parser = OneLineArgumentParser(
        prog="machlite sweep",
        allow_abbrev=False,
        description="Run every combination of --grid values once per seed, each a normal "
        "`machlite fit` then `machlite test` on its best checkpoint, under one sweep folder; "
        "write summary.csv, summary.md and plots. Further --key value pairs (e.g. "
        "--data.source synthetic --trainer.max_epochs 2) go to every run.",
    )
    parser.add_argument("--config", type=Path, help="the base config of every run")
    parser.add_argument(
        "--sweep",
        type=Path,
        help="a sweep file (config, grid, seeds, overrides, link); the other options add to it",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a swept key and its values, e.g. data.batch_size=32,64 (repeat for a grid)",
    )
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default 0)")
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="KEY=GRID_KEY",
        help="set KEY to the run's value of a swept key, e.g. "
        "lr_scheduler.init_args.T_max=trainer.max_epochs",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument(
        "--sweep_dir", type=Path, help="the sweep folder (default sweeps/NAME[_synthetic])"
    )
    parser.add_argument("--name", help="the sweep's name (default: the sweep file's name)")
    parser.add_argument("--dry_run", action="store_true", help="print each run's command and stop")
    return parser


def parse_sweep(argv: Sequence[str]) -> tuple[Sweep, Any]:
    """Parse the ``machlite sweep`` command line (and its sweep file) into a Sweep.

    Returns:
        The sweep and the parsed options (``jobs``, ``dry_run``).
    """
    args, extra = build_parser().parse_known_args(list(argv))
    spec: dict[str, Any] = {"grid": {}, "overrides": {}, "link": {}}
    if args.sweep is not None:
        spec = load_sweep_file(args.sweep)
    elif args.config is None:
        raise ConfigError("give --config CONFIG.yaml with --grid KEY=V1,V2, or --sweep FILE.yaml")
    config = args.config if args.config is not None else spec.get("config")
    grid = dict(spec["grid"])
    for text in args.grid:
        key, values = parse_grid_option(text)
        grid[key] = values
    link = dict(spec["link"])
    for text in args.link:
        target, sep, source = text.partition("=")
        if not sep:
            raise ConfigError(f"--link {text!r}: write KEY=GRID_KEY")
        link[target.strip()] = source.strip()
    seeds = parse_seeds(args.seeds) if args.seeds else spec.get("seeds", [0])
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    overrides = list(spec["overrides"].items()) + parse_overrides(extra)
    if config is None:
        name = args.name or spec.get("name") or "sweep"
    else:
        name = args.name or spec.get("name") or f"{Path(config).stem}_sweep"
    sweep = Sweep(
        config=Path(config).resolve() if config is not None else None,
        grid=grid,
        seeds=seeds,
        overrides=overrides,
        link=link,
        name=name,
    )
    validate(sweep)
    if args.sweep_dir is not None:
        sweep.sweep_dir = args.sweep_dir
    else:
        tag = "_synthetic" if is_synthetic_sweep(sweep) and "synthetic" not in name else ""
        sweep.sweep_dir = Path("sweeps") / f"{name}{tag}"
    sweep.sweep_dir = sweep.sweep_dir.resolve()
    return sweep, args


def check_settings(sweep: Sweep) -> None:
    """Parse every setting's ``machlite fit`` arguments (``--print_config``, no training), so
    that a misspelt key or a bad value stops the sweep before any run starts.

    Raises:
        ConfigError: A setting's arguments do not parse; says which and why.
    """
    import contextlib
    import io
    import warnings

    from machlite.cli import main as cli_main

    checked: set[str] = set()
    for run in expand(sweep):
        if run.setting in checked:
            continue
        checked.add(run.setting)
        err = io.StringIO()
        code = 0
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(err),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                cli_main([*fit_args(sweep, run), "--print_config"])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        if code:
            lines = [line.strip() for line in err.getvalue().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit {code}"
            raise ConfigError(f"setting {run.setting}: {reason.removeprefix('machlite: error: ')}")


# -- one run (the subprocess) -----------------------------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``done.json``, or None when it has not finished."""
    try:
        data = json.loads((run_dir / "done.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def best_checkpoint(run_dir: Path) -> Path:
    """The fit's best checkpoint (as its ModelCheckpoint recorded it), else ``last.ckpt``.

    Raises:
        MachliteError: The run saved no checkpoint.
    """
    import torch

    folder = run_dir / "checkpoints"
    last = folder / "last.ckpt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        for value in (state.get("callbacks") or {}).values():  # ModelCheckpoint's state
            path = value.get("best_model_path") if isinstance(value, dict) else None
            if path and Path(path).is_file():
                return Path(path)
    best = sorted(folder.glob("best-*.ckpt"))
    if best:
        return best[-1]
    if last.is_file():
        return last
    raise MachliteError(f"the run saved no checkpoint in {folder}: cannot test it")


def run_job(job: dict[str, Any]) -> None:
    """Fit, test the best checkpoint, then write ``done.json``: one run of a sweep.

    Args:
        job: ``args`` (the full ``machlite fit`` arguments), ``extra`` (added to both fit
            and test), ``signature``, ``run_dir``, ``runs_dir`` and ``run_name``.
    """
    from machlite.cli import main
    from machlite.events import count_network_parameters, read_run, run_metrics

    run_dir = Path(job["run_dir"])
    started = time.time()
    main(job["args"] + job["extra"])
    fitted = time.time()
    ckpt = best_checkpoint(run_dir)
    main(
        [
            "test",
            "--config",
            str(run_dir / "config.yaml"),
            "--ckpt_path",
            str(ckpt),
            "--runs_dir",
            job["runs_dir"],
            "--run_name",
            f"{job['run_name']}/test",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    finished = time.time()
    record = {
        "run": job["run_name"],
        "signature": job["signature"],
        "metrics": run_metrics(read_run(run_dir, job["run_name"])),
        "params": count_network_parameters(run_dir),
        "tested_checkpoint": ckpt.name,
        "fit_seconds": round(fitted - started, 3),
        "test_seconds": round(finished - fitted, 3),
        "started": started,
        "finished": finished,
    }
    write_json_atomic(run_dir / "done.json", record)


# -- the sweep --------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(index: int, total: int, name: str, elapsed: float, finished: int) -> str:
    """``run i/N NAME | elapsed H:MM:SS | left ~H:MM:SS`` (left: mean time per finished run
    times the runs not finished; ``?`` before the first one finishes)."""
    left = f"~{_clock(elapsed / finished * (total - finished))}" if finished else "?"
    return f"machlite sweep: run {index}/{total} {name} | elapsed {_clock(elapsed)} | left {left}"


def _failure_reason(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("machlite: error:")]
    return (errors or lines or ["no output"])[-1][:300]


@dataclass
class _Running:
    run: Run
    proc: subprocess.Popen
    log: IO[bytes]
    start: float


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop(running: list[_Running]) -> None:
    """Terminate runs (their folders stay unfinished, so the next sweep redoes them)."""
    for item in running:
        if item.proc.poll() is None:
            item.proc.terminate()
    for item in running:
        try:
            item.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            item.proc.kill()
            item.proc.wait()
        item.log.close()


class Runner:
    """Launch the runs of a sweep (``jobs`` at once) and report on each.

    Args:
        sweep: The sweep.
        jobs: Runs at once, each in its own process.
        out: Where progress lines go.
    """

    def __init__(self, sweep: Sweep, jobs: int = 1, out: IO[str] | None = None) -> None:
        self.sweep = sweep
        self.jobs = jobs
        self.out = out or sys.stdout
        self.failed: list[tuple[Run, int, str]] = []
        self.finished: list[Run] = []

    def say(self, text: str) -> None:
        """Print one line of the sweep's own output."""
        print(text, file=self.out, flush=True)

    def _extra(self) -> list[str]:
        """Hide Lightning's progress bar unless one run at a time goes to a terminal."""
        shows_bar = self.jobs == 1 and getattr(self.out, "isatty", lambda: False)()
        user_set = any(k == _PROGRESS_FLAG for k, _ in self.sweep.overrides)
        return [] if shows_bar or user_set else [f"--{_PROGRESS_FLAG}", "false"]

    def start(self, run: Run) -> _Running:
        """Replace any unfinished run folder and launch the run."""
        run_dir = self.sweep.sweep_dir / run.name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        job = {
            "args": run_args(self.sweep, run),
            "extra": self._extra(),
            "signature": fit_args(self.sweep, run),
            "run_dir": str(run_dir),
            "runs_dir": str(self.sweep.sweep_dir),
            "run_name": run.name,
        }
        log = open(run_dir / "run.log", "wb")  # noqa: SIM115 (closed in finish)
        tee = self.jobs == 1
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "machlite.sweep", "--job", json.dumps(job)],
            stdout=subprocess.PIPE if tee else log,
            stderr=subprocess.STDOUT,
        )
        running = _Running(run, proc, log, start)
        if tee:  # one run at a time: its output (Lightning's bar) shows under the progress line
            assert proc.stdout is not None
            try:
                while chunk := os.read(proc.stdout.fileno(), 65536):
                    log.write(chunk)
                    log.flush()
                    self.out.write(chunk.decode(errors="replace"))
                    self.out.flush()
            except BaseException:  # Ctrl-C while streaming: stop the run too
                _stop([running])
                raise
            proc.stdout.close()
        return running

    def finish(self, running: _Running) -> None:
        """Record a run that ended: finished (done.json written) or failed."""
        code = running.proc.wait()
        running.log.close()
        run_dir = self.sweep.sweep_dir / running.run.name
        done = read_done(run_dir)
        if code == 0 and done is not None:
            self.finished.append(running.run)
            test = done.get("metrics", {}).get("test_acc")
            result = f"test/acc {test:.4f}" if isinstance(test, float) else "no test/acc"
            seconds = time.time() - running.start
            self.say(f"machlite sweep: finished {running.run.name}: {result} ({seconds:.0f} s)")
        else:
            reason = _failure_reason(run_dir / "run.log")
            self.failed.append((running.run, code, reason))
            self.say(
                f"machlite sweep: FAILED {running.run.name} (exit {code}): {reason} "
                f"[log: {run_dir / 'run.log'}]"
            )

    def run_all(self, todo: list[Run]) -> None:
        """Run ``todo``, ``jobs`` at a time, printing a progress line before each start."""
        queue = list(todo)
        running: list[_Running] = []
        t0 = time.time()
        started = 0
        # `kill` (SIGTERM) stops the runs too, as Ctrl-C does
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    run = queue.pop(0)
                    started += 1
                    done_count = len(self.finished) + len(self.failed)
                    self.say(
                        progress_line(started, len(todo), run.name, time.time() - t0, done_count)
                    )
                    running.append(self.start(run))
                for item in [r for r in running if r.proc.poll() is not None]:
                    running.remove(item)
                    self.finish(item)
                if running:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            _stop(running)
            raise Interrupted(
                "sweep interrupted; run the same command again to resume: finished runs are "
                "kept and unfinished ones are redone"
            ) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1; None for one value)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(sweep: Sweep, runs: list[Run]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-run and per-setting numbers of the finished runs, read from their event files.

    Returns:
        ``(run_rows, setting_rows)``. A setting row has ``setting``, the short key of each
        swept parameter, ``n``, ``seeds``, ``<metric>_mean`` and ``<metric>_std`` for each of
        METRICS, and ``params``.
    """
    from machlite.events import read_run, run_metrics

    names = short_keys(list(sweep.grid))
    run_rows: list[dict[str, Any]] = []
    for run in runs:
        run_dir = sweep.sweep_dir / run.name
        done = read_done(run_dir)
        if done is None:
            continue
        metrics = run_metrics(read_run(run_dir, run.name))
        run_rows.append(
            {
                "setting": run.setting,
                "seed": run.seed,
                **metrics,
                "params": done.get("params"),
                "fit_seconds": done.get("fit_seconds"),
            }
        )
    setting_rows = []
    for setting in dict.fromkeys(run.setting for run in runs):
        rows = [r for r in run_rows if r["setting"] == setting]
        if not rows:
            continue
        values = next(r.values for r in runs if r.setting == setting)
        row: dict[str, Any] = {"setting": setting}
        row.update({names[k]: v for k, v in values.items()})
        row["n"] = len(rows)
        row["seeds"] = " ".join(str(r["seed"]) for r in rows)
        for metric in METRICS:
            found = [r[metric] for r in rows if r[metric] is not None]
            row[f"{metric}_mean"], row[f"{metric}_std"] = _stats(found)
        params = {r["params"] for r in rows}
        row["params"] = params.pop() if len(params) == 1 else None
        setting_rows.append(row)
    return run_rows, setting_rows


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is inside it, else as is."""
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV (the first row's keys are the header)."""
    with open(path, "w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)


def _mean_std(row: dict[str, Any], metric: str, digits: int) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _versus_best(rows: list[dict[str, Any]], metric: str) -> dict[str, str]:
    """Mark the best mean and the settings within two standard errors of it."""
    scored = [r for r in rows if r[f"{metric}_mean"] is not None]
    if not scored:
        return {}
    best = max(scored, key=lambda r: r[f"{metric}_mean"])
    marks = {best["setting"]: "best"}
    for row in scored:
        if row is best or row[f"{metric}_std"] is None or best[f"{metric}_std"] is None:
            continue
        diff = best[f"{metric}_mean"] - row[f"{metric}_mean"]
        se = math.sqrt(
            best[f"{metric}_std"] ** 2 / best["n"] + row[f"{metric}_std"] ** 2 / row["n"]
        )
        marks[row["setting"]] = "≈ best" if diff < 2 * se else ""
    return marks


def summary_markdown(
    sweep: Sweep,
    setting_rows: list[dict[str, Any]],
    total: int,
    failed: list[tuple[Run, int, str]],
    plots: list[Path],
    synthetic: bool,
) -> str:
    """The text of ``summary.md``."""
    lines = [f"# Sweep `{sweep.name}`", ""]
    if synthetic:
        lines += [
            "**SYNTHETIC DATA.** These runs trained on a synthetic JSC file. The numbers "
            "exercise the pipeline; they say nothing about accuracy on real jets.",
            "",
        ]
    swept = ", ".join(f"`{k}` ({', '.join(v)})" for k, v in sweep.grid.items()) or "nothing"
    fixed = " ".join(f"--{k} {v}" for k, v in sweep.overrides)
    lines += [
        f"- config: `{_shown(sweep.config)}`" if sweep.config else "- config: none",
        f"- swept: {swept}; seeds: {', '.join(map(str, sweep.seeds))}",
    ]
    if fixed:
        lines.append(f"- fixed for every run: `{fixed}`")
    if sweep.link:
        lines.append("- linked: " + ", ".join(f"`{t}` = `{s}`" for t, s in sweep.link.items()))
    finished = sum(r["n"] for r in setting_rows)
    lines += [f"- runs finished: {finished} of {total}", ""]
    has_test = any(r["test_acc_mean"] is not None for r in setting_rows)
    metric = "test_acc" if has_test else "val_acc_best"
    marks = _versus_best(setting_rows, metric)
    header = ["setting", "seeds", *(METRIC_TITLES[m] for m in METRICS), "params", "vs best"]
    lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 2) + "|---|"]
    for row in setting_rows:
        cells = [f"`{row['setting']}`", str(row["n"])]
        for m in METRICS:
            cells.append(_mean_std(row, m, 4 if "acc" in m else 1 if m == "epochs_to_best" else 2))
        cells.append("–" if row["params"] is None else f"{row['params']:,}")
        cells.append(marks.get(row["setting"], ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell is the mean ± the sample standard deviation (n−1) over the seeds. "
        "test/acc is the checkpoint with the best val/acc, evaluated on the test split. "
        "Epochs to best counts from 1. s/epoch is the wall time between validations, "
        "from the event files (runs sharing the CPU under --jobs are slower).",
        f'"vs best": the setting with the best mean {METRIC_TITLES[metric]}, and the ones '
        "whose mean is within two standard errors of it, i.e. not distinguishable from it "
        "with these seeds. Needs at least two seeds per setting.",
        "",
    ]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{run.name}` (exit {code}): {reason}" for run, code, reason in failed]
        lines += ["", "Their logs are `run.log` in each run folder.", ""]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            rel = plot.relative_to(sweep.sweep_dir).as_posix()
            lines += [f"![{plot.stem}]({rel})", ""]
    return "\n".join(lines)


def report(sweep: Sweep, runs: list[Run], failed: list[tuple[Run, int, str]]) -> list[Path]:
    """Write summary.csv, runs.csv, summary.md and the plots of the finished runs.

    Returns:
        The files written.
    """
    from machlite.events import is_synthetic, read_run
    from machlite.plot import draw

    run_rows, setting_rows = summarize(sweep, runs)
    out = sweep.sweep_dir
    write_csv(out / "summary.csv", setting_rows)
    write_csv(out / "runs.csv", run_rows)
    finished = [r for r in runs if read_done(out / r.name) is not None]
    synthetic = any(is_synthetic(out / r.name) for r in finished)
    plots: list[Path] = []
    if finished:
        plots = draw([read_run(out / r.name, r.name) for r in finished], out / "plots", sweep.name)
    text = summary_markdown(sweep, setting_rows, len(runs), failed, plots, synthetic)
    (out / "summary.md").write_text(text)
    return [out / "summary.csv", out / "runs.csv", out / "summary.md", *plots]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run_sweep(sweep: Sweep, jobs: int = 1, out: IO[str] | None = None) -> Runner:
    """Run the sweep's unfinished runs, then write its summary and plots.

    Returns:
        The runner, with its ``finished`` and ``failed`` runs.
    """
    runner = Runner(sweep, jobs, out)
    runs = expand(sweep)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        sweep.sweep_dir / "sweep.json",
        {
            "name": sweep.name,
            "config": str(sweep.config) if sweep.config else None,
            "grid": sweep.grid,
            "seeds": sweep.seeds,
            "overrides": [list(o) for o in sweep.overrides],
            "link": sweep.link,
            "runs": [r.name for r in runs],
        },
    )
    todo = []
    for run in runs:
        done = read_done(sweep.sweep_dir / run.name)
        if done is not None and done.get("signature") == fit_args(sweep, run):
            continue
        if done is not None:
            runner.say(f"machlite sweep: {run.name} finished with other arguments; redoing it")
        todo.append(run)
    n_settings = len(runs) // max(len(sweep.seeds), 1)
    runner.say(
        f"machlite sweep: {sweep.name}: {_count(n_settings, 'setting')} x "
        f"{_count(len(sweep.seeds), 'seed')} = "
        f"{len(runs)} runs in {sweep.sweep_dir}; {len(runs) - len(todo)} already finished "
        f"(skipped), {len(todo)} to run, {jobs} at a time"
    )
    runner.run_all(todo)
    files = report(sweep, runs, runner.failed)
    runner.say(f"machlite sweep: summary {files[2]} and {files[0]}")
    if len(files) > 3:
        runner.say(f"machlite sweep: plots in {files[3].parent}")
    runner.say(f"machlite sweep: view the runs with: tensorboard --logdir {sweep.sweep_dir}")
    return runner


def main(argv: Sequence[str]) -> None:
    """The ``machlite sweep`` command.

    Raises:
        MachliteError: Bad options, or some runs failed (after the others finished).
    """
    sweep, args = parse_sweep(argv)
    check_settings(sweep)
    if args.dry_run:
        for run in expand(sweep):
            print("machlite " + shlex.join(run_args(sweep, run)))
        return
    runner = run_sweep(sweep, args.jobs)
    if runner.failed:
        names = ", ".join(run.name for run, _, _ in runner.failed[:3])
        more = f" and {len(runner.failed) - 3} more" if len(runner.failed) > 3 else ""
        raise MachliteError(
            f"{len(runner.failed)} of {len(expand(sweep))} runs failed ({names}{more}); their "
            "logs are run.log in each run folder; run the same command again to retry them"
        )


def _job_main(argv: Sequence[str]) -> None:
    """``python -m machlite.sweep --job JSON``: one run of a sweep (see run_job)."""
    if len(argv) != 2 or argv[0] != "--job":
        raise SystemExit("usage: python -m machlite.sweep --job JSON (machlite sweep runs this)")
    sys.argv = sys.argv[:1]  # main() gets its arguments as a list, not from the command line
    try:
        run_job(json.loads(argv[1]))
    except MachliteError as err:
        print(f"machlite: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    _job_main(sys.argv[1:])
