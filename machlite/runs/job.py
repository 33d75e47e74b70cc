"""One run, in its own process: fit, test the best checkpoint, write ``done.json``.

The launcher (:mod:`machlite.runs.launcher`) starts ``python -m machlite.runs.job JSON`` for
every run; the JSON is :func:`run_job`'s ``job``. When the job asks for ``hardware``, the
tested checkpoint then goes through the RTL flow (:mod:`machlite.runs.hardware`,
``hardware.json``) before ``done.json``. Both steps run in-process through
:func:`machlite.cli.run_lightning`. ``done.json`` is written last, atomically, so a run folder
without one is unfinished. A user-fixable error ends the process with ``machlite: error:
...`` on stderr and the error's exit code.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machlite.atomic import atomic_write_json
from machlite.errors import BadArguments, MachliteError
from machlite.runs.layout import TEST_DIR, RunFolder


def best_checkpoint(trainer: Any, run_dir: Path) -> Path:
    """The fit's best checkpoint, as its checkpoint callback recorded it, else ``last.ckpt``.

    A fit whose pruning ramps over epochs (``model.pruning.end_epoch`` > 0) is tested at
    ``last.ckpt``: its best val/acc may come from an epoch before the masks reached the
    target, whose accuracy and hardware would not be those of the sparsity asked for.

    Args:
        trainer: The finished fit's Trainer.
        run_dir: The run folder (its ``checkpoints/last.ckpt`` is the fallback).

    Raises:
        MachliteError: The run saved no checkpoint.
    """
    callback = getattr(trainer, "checkpoint_callback", None)
    best = getattr(callback, "best_model_path", "") or ""
    pruning = getattr(getattr(trainer, "lightning_module", None), "pruning", None)
    ramps = pruning is not None and pruning.end_epoch > 0
    if best and Path(best).is_file() and not ramps:
        return Path(best)
    last = Path(getattr(callback, "last_model_path", "") or RunFolder(run_dir).last_checkpoint)
    if last.is_file():
        return last
    raise MachliteError(f"the run saved no checkpoint in {last.parent}: cannot test it")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fit, test the best checkpoint, measure its hardware if asked, then write
    ``done.json``: one run.

    Args:
        job: ``args`` (the full ``machlite fit`` arguments), ``extra`` (added to the fit),
            ``signature`` (kept in ``done.json``), ``run_dir``, ``runs_dir``, ``run_name``
            and ``hardware`` (options, or None).

    Returns:
        The record written to ``done.json``.

    Raises:
        BadArguments: The arguments do not parse.
        MachliteError: A user-fixable problem in the fit or the test.
    """
    from machlite.cli import run_lightning
    from machlite.models import count_parameters
    from machlite.runs.records import read_run, run_metrics

    folder = RunFolder(job["run_dir"])
    started = time.time()
    fit = run_lightning([*job["args"], *job["extra"]])
    fitted = time.time()
    ckpt = best_checkpoint(fit.trainer, folder.path)
    run_lightning(
        [
            "test",
            "--config",
            str(folder.config),
            "--ckpt_path",
            str(ckpt),
            "--runs_dir",
            job["runs_dir"],
            "--run_name",
            f"{job['run_name']}/{TEST_DIR}",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    finished = time.time()
    hardware = None
    if job.get("hardware") is not None:  # after the test: its checkpoint through the RTL flow
        from machlite.runs.hardware import HardwareOptions, run_hardware

        hardware = run_hardware(folder.path, ckpt, HardwareOptions(**job["hardware"]))
    record = {
        "run": job["run_name"],
        "signature": job["signature"],
        "metrics": run_metrics(read_run(folder.path, job["run_name"])),
        "params": count_parameters(fit.model.network),
        "tested_checkpoint": ckpt.name,
        "fit_seconds": round(fitted - started, 3),
        "test_seconds": round(finished - fitted, 3),
        "hardware_seconds": None if hardware is None else hardware["seconds"],
        "started": started,
        "finished": finished,
    }
    atomic_write_json(folder.done, record)
    return record


def main(argv: Sequence[str]) -> None:
    """``python -m machlite.runs.job JSON``: run one job; errors as one line and exit code."""
    if len(argv) != 1:
        raise SystemExit("usage: python -m machlite.runs.job JSON (machlite sweep runs this)")
    try:
        run_job(json.loads(argv[0]))
    except BadArguments as err:
        print(f"machlite: error: {err.message}", file=sys.stderr)
        raise SystemExit(err.code) from None
    except MachliteError as err:
        print(f"machlite: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main(sys.argv[1:])
