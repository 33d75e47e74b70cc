"""``machlite search``: Optuna over machlite config keys, each trial a normal ``machlite fit``.

machlite search --config configs/jsc_tiny.yaml --space configs/search/lr_batch_size.yaml \\
    [--sampler tpe|random|grid|nsga2|qmc] [--trials N] [--timeout T] [--storage URL] \\
    [--study NAME] [--jobs J] [--seeds 0,1] [--search_dir DIR] [--prune/--no-prune] \\
    [--key value ...]

The space file names config keys with distributions and the objectives
(:mod:`~machlite.search.space`). Every trial's seeds are runs of the run package
(:mod:`machlite.runs.launcher` and ``python -m machlite.runs.job``: fit, test of the best
checkpoint, ``done.json``), as a sweep's are, in ``SEARCH_DIR/trial=NNNN,<params>/seed_<S>``.
The study lives in a storage (default ``SEARCH_DIR/study.db``, SQLite), so the same command
run again continues it, and several processes given one ``--storage`` share it. At the end:
``trials.csv``, ``trials.md``, ``best.yaml`` and ``plots/*.png``.

The package's modules, each one concept:

- :mod:`~machlite.search.space`: the space file;
- :mod:`~machlite.search.parsing`: the command line, and the space checked against
  ``machlite fit`` before anything runs;
- :mod:`~machlite.search.study`: Optuna: storage, sampler, pruner, study, stale trials;
- :mod:`~machlite.search.pruning`: the Lightning callback that reports to a trial;
- :mod:`~machlite.search.loop`: asking, running and telling trials;
- :mod:`~machlite.search.results`: the tables, ``best.yaml`` and the plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from machlite.errors import MachliteError
from machlite.search.parsing import Search, check_space, parse_search
from machlite.search.study import require_optuna

__all__ = ["Search", "check_space", "main", "parse_search", "search"]


def search(options: Search, out: IO[str] | None = None) -> tuple[Any, Any]:
    """Run a parsed and checked search, then write its results (:mod:`machlite.search.results`).

    Returns:
        The study, and the :class:`~machlite.search.loop.SearchLoop` that ran this
        process's trials.
    """
    from machlite.search.loop import run_search
    from machlite.search.results import write_results

    study, loop = run_search(options, out)
    files = write_results(options, study)
    print(f"machlite search: {files[1]} and {files[0]}", file=out, flush=True)
    best = options.search_dir / "best.yaml"
    if best.is_file():
        print(f"machlite search: best config {best}", file=out, flush=True)
    return study, loop


def main(argv: Sequence[str]) -> None:
    """The ``machlite search`` command.

    Raises:
        MachliteError: Optuna is missing, bad options, a bad space, an unreachable storage,
            or this process's trials failed several times in a row (it stopped asking).
    """
    if list(argv) in (["-h"], ["--help"]):
        from machlite.search.parsing import build_parser

        build_parser().print_help()
        return
    require_optuna()
    options = parse_search(argv)
    check_space(options)
    _, loop = search(options)
    from machlite.search.loop import FAILS_IN_A_ROW

    if loop.fails_in_a_row >= FAILS_IN_A_ROW:
        raise MachliteError(
            f"{loop.fails_in_a_row} trials in a row failed, so the search stopped; the last, "
            f"{loop.last_failure}; the logs are run.log in each trial folder"
        )
