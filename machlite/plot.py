"""``machlite plot RUN_OR_SWEEP_DIR``: learning-curve PNGs drawn from the event files.

The figures are :mod:`machlite.figures`' (what they show is described there): ``plots/*.png``
in the folder, or ``--out``.
"""

from collections.abc import Sequence
from pathlib import Path

from machlite.errors import PlainArgumentParser


def main(argv: Sequence[str]) -> None:
    """The ``machlite plot`` command."""
    from machlite.figures import plot_runs  # matplotlib: only once the arguments parse

    parser = PlainArgumentParser(
        prog="machlite plot",
        description="Draw learning-curve PNGs (training loss against step, validation "
        "accuracy against epoch) from the TensorBoard event files of a run or a sweep folder, "
        "and accuracy against BOPs where the settings differ in BOPs.",
    )
    parser.add_argument("dir", type=Path, help="a run folder, runs/<experiment>, or a sweep")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default DIR/plots)")
    parser.add_argument("--title", default=None, help="figure title (default: the folder name)")
    args = parser.parse_args(list(argv))
    for path in plot_runs(args.dir, args.out, args.title):
        print(f"machlite plot: wrote {path}")
