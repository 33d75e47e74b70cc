"""The ``machlite search`` command line, read into a :class:`Search` and checked before
anything runs.

:func:`parse_search` reads the options and the space file (:mod:`machlite.search.space`);
:func:`check_space` parses sample points of the space as ``machlite fit`` would
(:func:`machlite.cli.check_args`), so that an unknown key, or a distribution whose values do
not fit the key's type, stops the search with one line.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machlite.atomic import atomic_write
from machlite.errors import BadArguments, ConfigError, MachliteError, PlainArgumentParser
from machlite.runs.launcher import PlannedRun
from machlite.runs.layout import OVERRIDES_FILE
from machlite.runs.names import run_name
from machlite.runs.settings import (
    RESERVED,
    RunSettings,
    cli_value,
    is_synthetic_config,
    load_config,
    merge_config,
    override_block,
    parse_overrides,
    parse_seeds,
)
from machlite.search.space import Space, load_space
from machlite.search.study import SAMPLERS, default_storage


@dataclass
class Search:
    """What to search.

    Attributes:
        config: The base config file (absolute).
        space: The space: params, objectives, fixed overrides, pruner.
        space_file: The space file.
        overrides: Fixed ``(key, value)`` settings of every trial (the space file's, then the
            command line's), values as command-line text.
        seeds: Each trial runs once per seed; its objectives are the means.
        sampler: One of :data:`machlite.search.study.SAMPLERS`.
        sampler_seed: The sampler's seed, or None.
        trials: Trials to finish (COMPLETE or PRUNED), all processes together; None: the
            grid's size for ``grid``, else until ``timeout``.
        timeout: Seconds after which this process starts no new trial, or None.
        storage: The storage URL (see :func:`machlite.search.study.open_storage`).
        study: The study's name.
        jobs: Trials at once in this process.
        prune: Whether the pruner may stop trials.
        search_dir: The search folder.
    """

    config: Path
    space: Space
    space_file: Path
    overrides: list[tuple[str, str]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    sampler: str = "tpe"
    sampler_seed: int | None = None
    trials: int | None = 20
    timeout: float | None = None
    storage: str = ""
    study: str = "search"
    jobs: int = 1
    prune: bool = True
    search_dir: Path = Path("searches/search")

    def settings(self, values: dict[str, Any], seed: int) -> RunSettings:
        """One seed of a trial as run settings: the base config, then an override block of
        the fixed settings and the trial's values (as command-line text)."""
        pairs = [*self.overrides, *((k, cli_value(v)) for k, v in values.items())]
        return RunSettings(self.config, override_block(pairs), seed)

    def trial_run(
        self, folder: str, values: dict[str, Any], seed: int, extra: Sequence[str] = ()
    ) -> PlannedRun:
        """One seed of a trial, as the launcher runs it: ``FOLDER/seed_S`` in the search
        folder, with further ``machlite fit`` flags ``extra`` (the pruning callback). With
        hardware options in the space, its job measures the tested checkpoint's design."""
        hardware = None if self.space.hardware is None else self.space.hardware.to_dict()
        settings = self.settings(values, seed)
        return PlannedRun(run_name(folder, seed), settings, tuple(extra), hardware)

    def override_block(self, values: dict[str, Any]) -> dict[str, Any]:
        """A trial's override block: the fixed settings, then its values (nested, typed)."""
        return self.settings(values, self.seeds[0]).overrides

    def merged_config(self, values: dict[str, Any]) -> dict[str, Any]:
        """The base config with a trial's override block merged in."""
        return merge_config(load_config(self.config), self.override_block(values))

    def is_synthetic(self) -> bool:
        """True when the trials train on synthetic data (the merged config says so)."""
        probe = {p.key: p.probes()[0] for p in self.space.params}
        return is_synthetic_config(self.merged_config(probe))

    def pruner_args(self, trial: int, run_dir: str) -> list[str]:
        """The flags that add the pruning callback to a trial's fit (empty when off)."""
        if not self.prune:
            return []
        from machlite.search.pruning import callback_args

        pruner = self.space.pruner or {"type": "median"}
        monitor = next(iter(self.space.objectives))
        return callback_args(self.storage, self.study, trial, run_dir, monitor, pruner)

    def signature(self) -> dict[str, Any]:
        """What the study is made of; a stored study with another one is not resumed."""
        return {
            "space": self.space.signature(),
            "config": str(self.config),
            "overrides": [list(o) for o in self.overrides],
            "seeds": self.seeds,
        }


def build_parser() -> argparse.ArgumentParser:
    """The ``machlite search`` argument parser (extra ``--key value`` pairs are kept apart)."""
    parser = PlainArgumentParser(
        prog="machlite search",
        allow_abbrev=False,
        description="Search machlite config keys with Optuna: each trial is a normal "
        "`machlite fit` (then `machlite test` of its best checkpoint) in the search folder; "
        "write trials.csv, trials.md, best.yaml and plots. Further --key value pairs (e.g. "
        "--data.source synthetic --trainer.max_epochs 2) go to every trial.",
    )
    parser.add_argument("--config", type=Path, help="the base config of every trial")
    parser.add_argument(
        "--space", type=Path, required=True, help="the space file: params and objectives"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default tpe")
    parser.add_argument("--sampler_seed", type=int, default=None, help="the sampler's seed")
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="trials to finish, all processes on the storage together (default 20; the "
        "grid's size with --sampler grid)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds after which no new trial starts"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="SQLAlchemy URL (e.g. postgresql://user@host/db) or journal:PATH "
        "(default: sqlite:///SEARCH_DIR/study.db)",
    )
    parser.add_argument("--study", default=None, help="the study's name (default: the space's)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once (default 1)")
    parser.add_argument("--seeds", default=None, help="seeds of every trial, e.g. 0,1 (default 0)")
    parser.add_argument(
        "--search_dir", type=Path, help="the search folder (default searches/STUDY[_synthetic])"
    )
    parser.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the pruner stop hopeless trials at epoch ends (default: on when the one "
        "objective is a val/ metric)",
    )
    return parser


def parse_search(argv: Sequence[str]) -> Search:
    """Parse the ``machlite search`` command line and its space file into a Search.

    Raises:
        BadArguments: Unknown options or bad option values.
        ConfigError: A bad space file, base config, seeds or fixed setting.
    """
    args, extra = build_parser().parse_known_args(list(argv))
    space = load_space(args.space, cli_value)
    config = args.config if args.config is not None else space.config
    if config is None:
        raise ConfigError("give the base config: --config CONFIG.yaml (or config: in the space)")
    if not Path(config).is_file():
        raise ConfigError(f"config file {config} not found: give --config PATH.yaml")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    overrides = [*space.overrides, *parse_overrides(extra)]
    for key, _ in overrides:
        if key in RESERVED:
            why = RESERVED[key].format(front="search")
            raise ConfigError(f"--{key} cannot be set in a search: {why}")
        if key in space.keys:
            raise ConfigError(f"{key} is both searched (in the space) and fixed (--{key})")
    single_val = len(space.objectives) == 1 and next(iter(space.objectives)).startswith("val/")
    if args.prune and not single_val:
        raise ConfigError(
            "--prune needs one objective that is logged every epoch (a val/ metric, e.g. "
            f"val/acc); this space has {', '.join(space.objectives)}"
        )
    name = args.study or space.name
    search = Search(
        config=Path(config).resolve(),
        space=space,
        space_file=Path(args.space).resolve(),
        overrides=overrides,
        seeds=parse_seeds(args.seeds) if args.seeds else [0],
        sampler=args.sampler,
        sampler_seed=args.sampler_seed,
        trials=args.trials,
        timeout=args.timeout,
        study=name,
        jobs=args.jobs,
        prune=single_val if args.prune is None else args.prune,
    )
    if args.sampler != "grid" and args.trials is None:
        search.trials = None if args.timeout is not None else 20
    if args.search_dir is not None:
        search.search_dir = args.search_dir.resolve()
    else:
        tag = "_synthetic" if search.is_synthetic() and "synthetic" not in name else ""
        search.search_dir = (Path("searches") / f"{name}{tag}").resolve()
    search.storage = args.storage or default_storage(search.search_dir)
    return search


def sample_points(space: Space) -> list[dict[str, Any]]:
    """Points that cover every parameter's probe values (:meth:`Param.probes`): the i-th
    point takes each parameter's i-th probe (its last one when it has fewer)."""
    probes = [p.probes() for p in space.params]
    n = max(len(v) for v in probes)
    return [
        {
            p.key: values[min(i, len(values) - 1)]
            for p, values in zip(space.params, probes, strict=True)
        }
        for i in range(n)
    ]


def check_space(search: Search) -> None:
    """Parse sample points of the space as ``machlite fit`` would, training nothing.

    Raises:
        ConfigError: A point does not parse: an unknown key, or a value that does not fit its
            key's type; says which, e.g. ``space point lr=fast: optimizer.lr: ...``.
    """
    from machlite.cli import check_args

    with tempfile.TemporaryDirectory(prefix="machlite_search_") as folder:
        path = Path(folder) / OVERRIDES_FILE
        for point in sample_points(search.space):
            label = ",".join(f"{k}={cli_value(v)}" for k, v in point.items())
            settings = search.settings(point, search.seeds[0])
            atomic_write(path, settings.yaml())
            try:
                check_args([*settings.args(path), *search.pruner_args(0, folder)])
            except BadArguments as err:
                message = err.message.replace(str(path), str(search.space_file))
                raise ConfigError(f"space point {label}: {message}") from err
            except MachliteError as err:
                message = str(err).replace(str(path), str(search.space_file))
                raise ConfigError(f"space point {label}: {message}") from err


__all__ = ["Search", "build_parser", "check_space", "parse_search", "sample_points"]
