"""One run's folder: where its config, checkpoints, test results, records and logs are.

Every file name of a run folder is spelled here and nowhere else::

    RUNS_DIR/EXPERIMENT/version_N/      (or RUNS_DIR/RUN_NAME, e.g. a sweep's SETTING/seed_S)
        config.yaml                     the exact config (Lightning's SaveConfigCallback)
        events.out.tfevents.*           TensorBoard's event files
        checkpoints/last.ckpt           the latest epoch (and best-*.ckpt, the best val/acc)
        test/                           the test of the best checkpoint (sweeps and searches)
        overrides.yaml                  the run's override block (sweeps and searches)
        done.json                       written last by a run job: it finished
        pruned.json                     a search trial the pruner stopped
        hardware.json                   the tested checkpoint's RTL costs (hardware objectives)
        rtl/                            its Verilog project (removed unless keep_rtl)
        warnings.txt                    the warnings printed during the run
        run.log                         a run job's whole output

This module imports nothing heavy, so light commands may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: The run's exact config, as Lightning's SaveConfigCallback writes it.
CONFIG_FILE = "config.yaml"
#: The folder of the run's checkpoints.
CHECKPOINTS_DIR = "checkpoints"
#: The latest checkpoint's file name in :data:`CHECKPOINTS_DIR` (Lightning's ``save_last``).
LAST_CHECKPOINT = "last.ckpt"
#: The folder a run job tests the best checkpoint into.
TEST_DIR = "test"
#: The run's override block (a second ``--config`` after the base config).
OVERRIDES_FILE = "overrides.yaml"
#: A run job's record, written last: the run finished.
DONE_FILE = "done.json"
#: Written by a search trial's run when the pruner stopped it.
PRUNED_FILE = "pruned.json"
#: The best checkpoint's Verilog design and yosys costs, when the run's settings ask for it.
HARDWARE_FILE = "hardware.json"
#: The folder of that Verilog project (and yosys's log).
HARDWARE_DIR = "rtl"
#: The warnings printed during a run (machlite.notices.warn).
WARNINGS_FILE = "warnings.txt"
#: A run job's whole output.
LOG_FILE = "run.log"
#: The name of a new run's folder under its experiment: ``version_N``.
VERSION_PREFIX = "version_"
VERSION_FOLDER = re.compile(rf"{VERSION_PREFIX}(\d+)")


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the paths of what it holds.

    Attributes:
        path: The run folder itself.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunFolder:
        """The run folder of a checkpoint: ``RUN/checkpoints/X.ckpt`` -> ``RUN`` (a checkpoint
        elsewhere: its own folder)."""
        ckpt = Path(ckpt)
        parent = ckpt.parent
        return cls(parent.parent if parent.name == CHECKPOINTS_DIR else parent)

    @classmethod
    def version(cls, experiment_dir: str | Path, number: int) -> RunFolder:
        """``EXPERIMENT_DIR/version_N``."""
        return cls(Path(experiment_dir) / f"{VERSION_PREFIX}{number}")

    @property
    def config(self) -> Path:
        """The run's ``config.yaml``."""
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        """The run's ``checkpoints/`` folder."""
        return self.path / CHECKPOINTS_DIR

    @property
    def last_checkpoint(self) -> Path:
        """The run's ``checkpoints/last.ckpt``."""
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def test(self) -> Path:
        """The ``test/`` folder with the event files of the best checkpoint's test."""
        return self.path / TEST_DIR

    @property
    def overrides(self) -> Path:
        """The run's ``overrides.yaml``."""
        return self.path / OVERRIDES_FILE

    @property
    def done(self) -> Path:
        """The run's ``done.json``."""
        return self.path / DONE_FILE

    @property
    def pruned(self) -> Path:
        """A pruned trial's ``pruned.json``."""
        return self.path / PRUNED_FILE

    @property
    def hardware(self) -> Path:
        """The run's ``hardware.json`` (the RTL flow's costs of its tested checkpoint)."""
        return self.path / HARDWARE_FILE

    @property
    def hardware_dir(self) -> Path:
        """The ``rtl/`` folder of the run's Verilog project."""
        return self.path / HARDWARE_DIR

    @property
    def warnings(self) -> Path:
        """The run's ``warnings.txt``."""
        return self.path / WARNINGS_FILE

    @property
    def log(self) -> Path:
        """A run job's ``run.log``."""
        return self.path / LOG_FILE


def last_checkpoints(experiment_dir: str | Path) -> list[Path]:
    """Every ``version_N/checkpoints/last.ckpt`` under an experiment folder."""
    pattern = f"{VERSION_PREFIX}*/{CHECKPOINTS_DIR}/{LAST_CHECKPOINT}"
    return list(Path(experiment_dir).glob(pattern))
