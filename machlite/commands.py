"""The ``machlite`` command: its table of subcommands and its one error handler.

    machlite fit --config configs/jsc_will.yaml
    machlite models
    machlite sweep --config configs/jsc_tiny.yaml --grid data.batch_size=64,256
    machlite plot sweeps/jsc_tiny_sweep

:data:`COMMANDS` maps each subcommand to the function that runs it, named as a string so that
``machlite models`` and ``machlite --help`` import neither Lightning nor torchvision (the
table is read without importing any of them). :func:`main` is the only place where an error
a user can fix becomes one line on stderr and an exit code; everything below it raises.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from machlite import __version__
from machlite.errors import BadArguments, MachliteError


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        summary: One line for ``machlite --help``.
        target: ``module:function`` that runs it, called with the arguments.
        with_name: Whether the function also gets the subcommand's name as its first
            argument (the Lightning subcommands share one function).
    """

    summary: str
    target: str
    with_name: bool = False

    def load(self) -> Callable[[list[str]], object]:
        """Import the function that runs this subcommand."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


_LIGHTNING = "machlite.cli:run_lightning"

#: Every subcommand, in the order ``machlite --help`` lists them.
COMMANDS: dict[str, Command] = {
    "fit": Command("train a network (Lightning Trainer.fit)", _LIGHTNING, with_name=True),
    "validate": Command("evaluate a checkpoint on the validation split", _LIGHTNING, True),
    "test": Command("evaluate a checkpoint on the test split (confusion matrix)", _LIGHTNING, True),
    "predict": Command("write predictions.csv for the predict split", _LIGHTNING, True),
    "models": Command("list the networks with their exact parameter counts", __name__ + ":models"),
    "sweep": Command(
        "run a grid of settings x seeds, then summarise and plot", "machlite.sweep:main"
    ),
    "plot": Command("plot the learning curves of the runs under a folder", "machlite.plot:main"),
    "search": Command("Optuna search over config keys (TPE, grid, ...)", "machlite.search:main"),
    "quantize": Command(
        "post-training quantization: accuracy, bits and BOPs", "machlite.quantize:main"
    ),
    "export": Command("export a checkpoint to ONNX, QONNX or hls4ml", "machlite.export:main"),
}


def help_text() -> str:
    """The text of ``machlite --help``."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: machlite SUBCOMMAND [options]",
        "",
        "machlite: train, evaluate and compare small networks for hardware research",
        "(JSC-Tiny/Toy/Will on the jet-substructure data, the MNIST CNN) with Lightning.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()),
        "",
        "`machlite SUBCOMMAND --help` documents every option of a subcommand.",
        "Start with: machlite fit --config configs/jsc_will.yaml",
    ]
    return "\n".join(lines)


def models(args: Sequence[str] = ()) -> None:
    """``machlite models``: print every network with its parameter count.

    Imports torch and the networks only (no Lightning).
    """
    if list(args) in (["-h"], ["--help"]):
        print("usage: machlite models\n\nList every network with its exact parameter count.")
        return
    if args:
        raise BadArguments(f"machlite models takes no arguments, got {' '.join(args)!r}")
    from machlite.models import NETWORKS, count_parameters

    print(f"{'network':<10} {'params':>9}  {'import':<30} description")
    for name, cls in NETWORKS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        doc = re.sub(r"\s*\([\d,]+ parameters\)\.?$", "", doc)
        params = count_parameters(cls())
        print(f"{name:<10} {params:>9,}  {'machlite.models.' + name:<30} {doc}")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user-fixable error into ``machlite: error: ...`` on stderr and its exit code."""
    try:
        yield
    except BadArguments as err:
        print(f"machlite: error: {err.message}", file=sys.stderr)
        sys.exit(err.code)
    except MachliteError as err:
        print(f"machlite: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``machlite`` command with ``args`` (default: the process's arguments).

    User mistakes (bad flags or values, bad data files) end with a one-line message on
    stderr and a nonzero exit code instead of a traceback.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        if not argv:
            sys.exit(2)
        return
    if argv[0] == "--version":
        print(f"machlite {__version__}")
        return
    with one_line_errors():
        command = COMMANDS.get(argv[0])
        if command is None:
            raise BadArguments(
                f"unknown subcommand {argv[0]!r}: choose one of {', '.join(COMMANDS)} "
                "(see: machlite --help)"
            )
        function = command.load()
        function(argv if command.with_name else argv[1:])
