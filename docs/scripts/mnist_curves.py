"""Draw docs/img/mnist_softmax_curves.png from the event files of MNIST runs.

    python docs/scripts/mnist_curves.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] --out FILE.png

Each RUN_DIR is a machlite run folder (``runs/<experiment>/version_N``). Left: ``train/loss``
against the optimizer step, with the lowest loss a softmax output can reach under
CrossEntropyLoss (1.4612). Right: ``val/acc`` per epoch.
"""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from machlite.events import load_events  # noqa: E402

SOFTMAX_FLOOR = math.log(math.e + 9) - 1


def scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """Steps and values of one scalar tag of a run."""
    points = load_events(run_dir).Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for item in opts.runs:
        label, run_dir = item.split("=", 1)
        steps, loss = scalars(Path(run_dir), "train/loss")
        loss_ax.plot(steps, loss, label=label, linewidth=0.8)
        _, acc = scalars(Path(run_dir), "val/acc")
        acc_ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], marker="o", label=label)
    loss_ax.axhline(SOFTMAX_FLOOR, color="grey", linestyle="--", linewidth=1)
    loss_ax.text(0, SOFTMAX_FLOOR + 0.03, "softmax + CrossEntropyLoss floor 1.4612", fontsize=8)
    loss_ax.set(xlabel="optimizer step", ylabel="train/loss (batch)", title="training loss")
    loss_ax.set_ylim(0, 2.5)
    acc_ax.set(xlabel="epoch", ylabel="val/acc (%)", title="validation accuracy (5,000 images)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(opts.out, dpi=110)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
