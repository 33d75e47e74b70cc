"""What a run recorded, read back: its scalars and HPARAMS (event files), and ``done.json``.

:func:`read_run` loads one run folder's event files (through :func:`machlite.events.load_events`,
the one event reader); :func:`find_runs` finds every training run under a folder;
:func:`run_metrics` reduces a run to its summary numbers; :func:`read_done` reads the record a
run job writes last (:mod:`machlite.runs.job`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machlite.events import TEST_ACC, TRAIN_LOSS, VAL_ACC, has_events, load_events, session_hparams
from machlite.runs.layout import RunFolder
from machlite.runs.names import seed_of


@dataclass
class RunData:
    """The scalars of one run folder.

    Attributes:
        path: The run folder.
        name: Its name relative to the folder it was found under (TensorBoard's run name).
        scalars: Tag to ``[(step, value, wall_time), ...]`` sorted by step.
        first_event_time: Wall time of the event file's first event (the writer's start).
        hparams: The settings of its HPARAMS entry (machlite.callbacks.HParamsLogger), e.g.
            ``optimizer.lr``, ``model.bits``, ``model.bops``; empty when it has none.
    """

    path: Path
    name: str
    scalars: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    first_event_time: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)

    def values(self, tag: str) -> list[float]:
        """The values of ``tag`` in step order (empty when the run did not log it)."""
        return [value for _, value, _ in self.scalars.get(tag, [])]

    @property
    def seed(self) -> int | None:
        """The seed from a ``seed_N`` folder name, else None."""
        return seed_of(self.path)


def read_run(run_dir: Path, name: str | None = None) -> RunData:
    """Load every scalar of the event files directly in ``run_dir``, and its HPARAMS entry.

    Args:
        run_dir: A run folder.
        name: The run's display name (default: the folder's name).
    """
    acc = load_events(run_dir, scalars_only=True)
    scalars = {
        tag: sorted((e.step, float(e.value), e.wall_time) for e in acc.Scalars(tag))
        for tag in acc.Tags()["scalars"]
    }
    try:
        first = acc.FirstEventTimestamp()
    except ValueError:
        first = None
    return RunData(Path(run_dir), name or Path(run_dir).name, scalars, first, session_hparams(acc))


def find_runs(root: Path) -> list[RunData]:
    """Every training run under ``root`` (``root`` itself included), sorted by name.

    Folders without training curves (``train/loss`` or ``val/acc``), such as the ``test/``
    folders ``machlite sweep`` writes, are left out.
    """
    root = Path(root)
    folders = [root] if has_events(root) else []
    folders += sorted(p.parent for p in root.rglob("events.out.tfevents.*") if p.parent != root)
    runs = []
    for folder in dict.fromkeys(folders):
        rel = folder.relative_to(root).as_posix()
        run = read_run(folder, root.resolve().name if rel == "." else rel)
        if TRAIN_LOSS in run.scalars or VAL_ACC in run.scalars:
            runs.append(run)
    return runs


def run_metrics(run: RunData) -> dict[str, float | None]:
    """A run's summary numbers, from its event files.

    Returns:
        ``val_acc_final`` (last val/acc), ``val_acc_best`` (highest), ``epochs_to_best``
        (1-based epoch of the first best), ``epochs`` (validation epochs run),
        ``sec_per_epoch`` (the mean wall time between val/acc points; for a single epoch,
        from the event file's first event to it) and ``test_acc`` (the last test/acc in
        the run's ``test/`` folder, else in the run itself). Missing values are None.
    """
    val = run.scalars.get(VAL_ACC, [])
    out: dict[str, float | None] = dict.fromkeys(
        ("val_acc_final", "val_acc_best", "epochs_to_best", "epochs", "sec_per_epoch", "test_acc")
    )
    if val:
        values = [v for _, v, _ in val]
        best = max(values)
        out["val_acc_final"] = values[-1]
        out["val_acc_best"] = best
        out["epochs_to_best"] = float(values.index(best) + 1)
        out["epochs"] = float(len(values))
        if len(val) > 1:
            out["sec_per_epoch"] = (val[-1][2] - val[0][2]) / (len(val) - 1)
        elif run.first_event_time is not None:
            out["sec_per_epoch"] = val[0][2] - run.first_event_time
    test_dir = RunFolder(run.path).test
    test = read_run(test_dir) if has_events(test_dir) else run
    if test.values(TEST_ACC):
        out["test_acc"] = test.values(TEST_ACC)[-1]
    return {k: (None if v is not None and math.isnan(v) else v) for k, v in out.items()}


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``done.json``, or None when it has not finished."""
    try:
        data = json.loads(RunFolder(run_dir).done.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
