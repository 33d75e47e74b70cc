"""The ``machlite sweep`` command line and sweep files, read into a :class:`Sweep`.

Options and sweep files are parsed and checked here before anything runs:
:func:`parse_sweep` reads them (:func:`validate` checks the keys), and :func:`check_settings`
parses every setting as ``machlite fit`` would, without training.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from machlite.atomic import atomic_write
from machlite.config_files import yaml_error_message
from machlite.errors import BadArguments, ConfigError, MachliteError, PlainArgumentParser
from machlite.runs.hardware import parse_hardware
from machlite.runs.layout import OVERRIDES_FILE
from machlite.runs.settings import (
    RESERVED,
    cli_value,
    parse_overrides,
    parse_seeds,
    parse_values,
)
from machlite.sweep.spec import Sweep, expand, is_synthetic_sweep, run_settings

SWEEP_FILE_KEYS = (
    "config",
    "name",
    "grid",
    "seeds",
    "overrides",
    "link",
    "hardware",
    "description",
)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def parse_grid_option(text: str) -> tuple[str, list[str]]:
    """``"data.batch_size=32,64"`` -> ``("data.batch_size", ["32", "64"])``."""
    key, sep, values = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not parse_values(values):
        raise ConfigError(f"--grid {text!r}: write KEY=V1,V2,..., e.g. data.batch_size=32,64")
    return key, parse_values(values)


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
        where = f"sweep file {path} is not valid YAML"
        raise ConfigError(yaml_error_message(err, where)) from err  # with line and column
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
    if "hardware" in data:  # each run measures its tested checkpoint's design
        out["hardware"] = parse_hardware(data["hardware"], f"sweep file {path}")
    return out


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
            why = RESERVED[key].format(front="sweep")
            raise ConfigError(f"--{key} cannot be set in a sweep: {why}")
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
    parser = PlainArgumentParser(
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
        hardware=spec.get("hardware"),
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
    """Parse every setting as ``machlite fit`` would (:func:`machlite.cli.check_args`: no
    training, no data read), so that a misspelt key or a bad value stops the sweep before
    any run starts. The override blocks are written to a temporary folder.

    Raises:
        ConfigError: A setting does not parse; says which and why, e.g. ``setting lr=fast:
            optimizer.lr: expected a value of type float, got 'fast' (see: ...)``.
    """
    from machlite.cli import check_args

    checked: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="machlite_sweep_") as folder:
        path = Path(folder) / OVERRIDES_FILE
        for run in expand(sweep):
            if run.setting in checked:
                continue
            checked.add(run.setting)
            settings = run_settings(sweep, run)
            atomic_write(path, settings.yaml())
            try:
                check_args(settings.args(path))
            except BadArguments as err:
                raise ConfigError(f"setting {run.setting}: {err.message}") from err
            except MachliteError as err:
                raise ConfigError(f"setting {run.setting}: {err}") from err
