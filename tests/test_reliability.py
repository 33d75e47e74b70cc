"""Reliability (issue #7): resume after a crash or kill -9, atomic checkpoints, divergence,
collapse, one-line errors for bad input, untrusted checkpoints, concurrent runs.

docs/reliability.md lists every case with the test that backs it.
"""

import errno
import gzip
import multiprocessing
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import machlite.atomic as atomic_module
import machlite.datasets.jsc as jsc_module
from machlite.callbacks.guards import collapse_message
from machlite.checkpoint import AtomicCheckpointIO, find_last_checkpoint, load_checkpoint_file
from machlite.datasets import JSCDataModule
from machlite.datasets.jsc_format import FEATURES, JSC_DATASET, LABELS
from machlite.datasets.jsc_synthetic import write_synthetic_jsc
from machlite.datasets.mnist import MNIST_FILES
from machlite.download import download
from machlite.errors import DataError
from machlite.explain import one_line_parse_error
from machlite.loggers import allocate_version

from .conftest import CONFIGS, REPO, run, synthetic
from .conftest import curves as scalars

TINY = str(CONFIGS / "jsc_tiny.yaml")
WILL = str(CONFIGS / "jsc_will.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


# -- helpers -----------------------------------------------------------------------------------
class SimulatedCrash(RuntimeError):
    """Raised by CrashAt: an in-process stand-in for a crash (the kill -9 test is real)."""


class CrashAt(pl.Callback):
    """Raise SimulatedCrash at the first train batch end at or after optimizer step ``step``.

    Lightning runs checkpoint callbacks after the others, so a checkpoint due at that batch
    is not written: the run loses the work since its previous checkpoint.
    """

    def __init__(self, step: int = 100) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise SimulatedCrash(f"simulated crash at step {trainer.global_step}")


class SlowDown(pl.Callback):
    """Sleep after every Lightning training step, so a subprocess can be killed mid-run."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        time.sleep(self.seconds)


class LrSpike(pl.Callback):
    """Multiply the learning rate by ``factor`` from optimizer step ``step`` on (a blow-up)."""

    def __init__(self, step: int = 40, factor: float = 1e30) -> None:
        self.step, self.factor, self.done = step, factor, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if not self.done and trainer.global_step >= self.step:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= self.factor
            self.done = True


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a failed command (no usage, no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: ") and "Traceback" not in err[0]
    return err[0]


def resume_args(jsc_data_dir: Path, runs: Path, experiment: str, config: str = WILL) -> list[str]:
    """JSC-Will (dropout: the RNG matters) on synthetic data, 2 epochs of 67 steps."""
    return [
        "fit",
        "--config",
        config,
        *synthetic(jsc_data_dir),
        "--data.batch_size",
        "32",
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--checkpoint_every_n_steps",
        "20",
        "--runs_dir",
        str(runs),
        "--experiment",
        experiment,
        *QUIET,
    ]


@pytest.fixture(scope="module")
def reference_runs(
    jsc_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], Path]:
    """Uninterrupted 2-epoch runs, the yardsticks of the resumed ones, by steps per call.

    A resumed run is compared with a reference of the same ``steps_per_call``: the weights
    are bit-identical either way, but the epoch-mean loss is summed per call of K steps, so
    its last float bits depend on K (tests/test_steps_per_call.py compares across K).
    """
    cache: dict[int, Path] = {}

    def get(steps_per_call: int) -> Path:
        if steps_per_call not in cache:
            runs = tmp_path_factory.mktemp(f"reference_k{steps_per_call}") / "runs"
            args = [*resume_args(jsc_data_dir, runs, "ref")]
            assert run([*args, "--model.steps_per_call", str(steps_per_call)]) == 0
            cache[steps_per_call] = runs / "ref_synthetic" / "version_0"
        return cache[steps_per_call]

    return get


@pytest.fixture(scope="module")
def reference_run(reference_runs: Callable[[int], Path]) -> Path:
    """The reference with the JSC configs' 32 steps per call."""
    return reference_runs(32)


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Same epochs, steps, weights and curves (no step missing or duplicated) as the reference."""
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"]) == (1, 134)
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    ref, got = scalars(reference), scalars(resumed)
    assert set(got) == set(ref)
    assert [s for s, _ in ref["train/loss"]] == list(range(134))
    for tag, points in ref.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # no dup, none missing
        assert got[tag] == points, tag  # and the same values: an exact continuation


# -- resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps_per_call", "crash_at"),
    [(32, 120), pytest.param(1, 110, marks=pytest.mark.slow)],  # 32: the JSC configs' default
)
def test_resume_after_a_crash_continues_the_same_run_exactly(
    steps_per_call: int,
    crash_at: int,
    jsc_data_dir: Path,
    reference_runs: Callable[[int], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs"
    args = [
        *resume_args(jsc_data_dir, runs, "crash"),
        "--model.steps_per_call",
        str(steps_per_call),
    ]
    crash = ["--trainer.callbacks+=tests.test_reliability.CrashAt", "--trainer.callbacks.step"]
    with pytest.raises(SimulatedCrash):
        run([*args, *crash, str(crash_at)])
    run_dir = runs / "crash_synthetic" / "version_0"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 67 < saved["global_step"] < crash_at  # a mid-epoch checkpoint of epoch 1
    capsys.readouterr()
    assert run([*args, "--ckpt_path", "last"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {run_dir} from last.ckpt (epoch 1, step {saved['global_step']})" in out
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    assert_same_run(run_dir, reference_runs(steps_per_call))


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_last(
    jsc_data_dir: Path, reference_run: Path, tmp_path: Path
) -> None:
    """A real `machlite fit` subprocess killed with SIGKILL after a mid-run checkpoint."""
    runs = tmp_path / "runs"
    args = resume_args(jsc_data_dir, runs, "killed")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    slow = [
        "--trainer.callbacks+=tests.test_reliability.SlowDown",
        "--trainer.callbacks.seconds",
        "0.5",
    ]
    cmd = [sys.executable, "-m", "machlite", *args]
    last = runs / "killed_synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([*cmd, *slow], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists() and proc.poll() is None, "no checkpoint while the run was alive"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = torch.load(last, weights_only=True)
    step = saved["global_step"]
    assert 0 < step < 134  # killed mid-run
    resumed = subprocess.run(
        [*cmd, "--ckpt_path", "last"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from last.ckpt (epoch {saved['epoch']}, step {step})" in resumed.stdout
    assert_same_run(last.parent.parent, reference_run)


def test_ckpt_path_last_with_nothing_to_resume(
    jsc_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fit starts a new run (the same command works before the first checkpoint); test fails."""
    args = ["--config", TINY, *synthetic(jsc_data_dir), "--experiment", "new", *QUIET]
    fast = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    assert run(["fit", *args, *fast, "--ckpt_path", "last"]) == 0
    assert "no last.ckpt under runs/new_synthetic; starting a new run" in capsys.readouterr().out
    assert (Path("runs/new_synthetic/version_0/checkpoints/last.ckpt")).is_file()
    assert run(["test", *args, "--experiment", "other", "--ckpt_path", "last"]) == 2
    assert "--ckpt_path last: no checkpoint found under runs/other_synthetic" in one_error_line(
        capsys
    )
    # test --ckpt_path last tests the latest run's last.ckpt
    assert run(["test", *args, "--ckpt_path", "last"]) == 0
    out = capsys.readouterr().out
    assert "machlite: --ckpt_path last is runs/new_synthetic/version_0/checkpoints/last.ckpt" in out


def test_find_last_checkpoint_picks_the_latest_written(tmp_path: Path) -> None:
    assert find_last_checkpoint(tmp_path / "none") is None
    for version, age in ((0, 30), (1, 10), (2, 20)):
        path = tmp_path / f"version_{version}" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))
    (tmp_path / "version_3" / "checkpoints").mkdir(parents=True)  # killed before its first one
    (tmp_path / "version_3" / "checkpoints" / ".last.ckpt.123.abcd.tmp").write_bytes(b"partial")
    assert find_last_checkpoint(tmp_path) == tmp_path / "version_1" / "checkpoints" / "last.ckpt"


def test_checkpoint_every_n_steps_with_k_steps_per_call(
    jsc_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last.ckpt is refreshed whenever a multiple of N is passed, even when K jumps over it."""
    saved: list[int] = []
    real = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None) -> None:  # noqa: ANN001
        if Path(path).name == "last.ckpt":
            saved.append(checkpoint["global_step"])
        real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    args = resume_args(jsc_data_dir, tmp_path / "runs", "steps", config=TINY)
    assert run([*args, "--checkpoint_every_n_steps", "50"]) == 0
    # 67 steps per epoch in calls of 32: 32, 64, 67 | 99, 131, 134. Multiples of 50 are
    # passed at 64 and 131 (100 at 131 too); 67 and 134 are the epoch-end saves.
    assert saved == [64, 67, 131, 134]
    saved.clear()
    assert run([*args, "--checkpoint_every_n_steps", "0", "--experiment", "epochs"]) == 0
    assert saved == [67, 134]


def test_last_ckpt_is_the_latest_epoch_and_a_finished_run_can_train_longer(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """val/acc falls in epoch 1 here: Lightning 2.6 alone would keep epoch 0 as last.ckpt."""
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), "--experiment", "ext", *QUIET]
    assert run([*args, "--trainer.max_epochs", "2"]) == 0
    folder = Path("runs/ext_synthetic/version_0/checkpoints")
    assert [p.name for p in folder.glob("best-*")] == ["best-epoch00-val_acc0.2766.ckpt"]
    last = load_checkpoint_file(folder / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 18)  # 9 steps per epoch
    assert run([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    assert "from last.ckpt (epoch 1, step 18)" in capsys.readouterr().out
    assert [s for s, _ in scalars(folder.parent)["val/acc"]] == [9, 18, 27]
    assert load_checkpoint_file(folder / "last.ckpt")["global_step"] == 27


# -- atomic writes -----------------------------------------------------------------------------
_HANG_WRITER = r"""
import sys, time
from pathlib import Path
import torch
import machlite.atomic as ck
from machlite.checkpoint import AtomicCheckpointIO

path, where = Path(sys.argv[1]), sys.argv[2]

def hang(*args, **kwargs):
    print("HANGING", flush=True)
    time.sleep(120)

real_open = open

class HalfWriter:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
    def write(self, data):
        data = bytes(data)
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        hang()
    def __getattr__(self, name):
        return getattr(self.f, name)

if where == "mid-write":
    ck.open = lambda *a, **k: HalfWriter(real_open(*a, **k))
else:  # written and fsynced, not yet renamed
    ck.os.replace = hang
AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((4096,), 2.0)}}, path)
"""


@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_a_kill_during_a_checkpoint_write_leaves_the_old_checkpoint(
    where: str, tmp_path: Path
) -> None:
    path = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4096)}}, path)
    old = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG_WRITER, str(path), where],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "HANGING"
        partial = [p for p in path.parent.iterdir() if p.name != "last.ckpt"]
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # the new one, half done
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.read_bytes() == old
    loaded = load_checkpoint_file(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(4096))
    assert find_last_checkpoint(tmp_path) == path  # the leftover temp file is never picked


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
    jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            files["n"] += 1
            if files["n"] > 2:  # epoch 0's best and last are written; then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic_module.os, "fsync", fsync)
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), "--experiment", "full", *QUIET]
    assert run([*args, "--trainer.max_epochs", "3"]) == 1
    err = one_error_line(capsys)
    assert "the disk is full (No space left on device) while writing checkpoint" in err
    assert "--ckpt_path last" in err
    folder = Path("runs/full_synthetic/version_0/checkpoints")
    names = {p.name for p in folder.iterdir()}
    assert "last.ckpt" in names and not [n for n in names if n.endswith(".tmp")]
    assert load_checkpoint_file(folder / "last.ckpt")["epoch"] == 0


def test_disk_full_while_writing_the_data_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def savez(file: str, **arrays: np.ndarray) -> None:
        Path(file).write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsc_module.np, "savez", savez)
    data = tmp_path / "data"
    write_synthetic_jsc(data / "jsc" / "jsc_synthetic_500.h5", 500)
    args = ["fit", "--config", TINY, "--data.source", "synthetic", "--data.data_dir", str(data)]
    assert run([*args, "--data.synthetic_jets", "500"]) == 1
    err = one_error_line(capsys)
    assert "the disk is full" in err and "the JSC cache" in err and "--data.data_dir" in err
    assert list((data / "jsc" / "cache").iterdir()) == []  # no half-written cache left


# -- divergence and collapse -------------------------------------------------------------------
def _diverge(jsc_data_dir: Path, log_every: int, capsys: pytest.CaptureFixture[str]) -> tuple:
    args = [
        "fit",
        "--config",
        TINY,
        *synthetic(jsc_data_dir),
        "--data.batch_size",
        "64",
        "--trainer.max_epochs",
        "4",
        "--trainer.log_every_n_steps",
        str(log_every),
        "--trainer.callbacks+=tests.test_reliability.LrSpike",
        "--trainer.callbacks.step",
        "45",
        "--experiment",
        f"div{log_every}",
        *QUIET,
    ]
    assert run(args) == 1
    err = one_error_line(capsys)
    found = re.search(
        r"training diverged: the loss became (nan|inf) at step (\d+) \(epoch (\d+), learning "
        r"rate ([-+.e\d]+)\); the inputs were finite: lower the learning rate \(--optimizer.lr\) "
        r"or clip gradients",
        err,
    )
    assert found, err
    return err, int(found.group(2)), int(found.group(3)), float(found.group(4))


def test_divergence_stops_naming_step_epoch_and_lr_and_keeps_the_last_good_checkpoint(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, step, epoch, lr = _diverge(jsc_data_dir, 1, capsys)
    run_dir = Path("runs/div1_synthetic/version_0")
    curves = scalars(run_dir)
    losses = dict(curves["train/loss"])
    first_bad = min(s for s, v in losses.items() if not np.isfinite(v))
    assert step == first_bad and all(np.isfinite(losses[s]) for s in range(first_bad))
    assert epoch == first_bad // 34  # 34 steps per epoch at batch 64
    assert lr == pytest.approx(dict(curves["train/lr"])[first_bad], rel=1e-2) and lr > 1e20
    # the last good checkpoint (end of epoch 0) is kept, and is finite
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in err and f"curves are in {run_dir}" in err
    saved = load_checkpoint_file(last)
    assert saved["global_step"] <= first_bad
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    # no validation ran on the diverged weights
    assert max(s for s, _ in curves["val/acc"]) <= saved["global_step"]


@pytest.mark.slow
def test_divergence_check_is_deferred_but_names_the_exact_step(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one check per 25 steps (no per-step sync) the message is the same step."""
    _, step_every, epoch_every, lr_every = _diverge(jsc_data_dir, 1, capsys)
    _, step, epoch, lr = _diverge(jsc_data_dir, 25, capsys)
    assert (step, epoch, lr) == (step_every, epoch_every, lr_every)
    saved = load_checkpoint_file(Path("runs/div25_synthetic/version_0/checkpoints/last.ckpt"))
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_collapse_to_chance_level_is_a_warning(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SGD at lr 20 kills JSC-Tiny's final ReLUs: it predicts one class for good."""
    args = [
        "fit",
        "--config",
        TINY,
        *synthetic(jsc_data_dir),
        "--data.batch_size",
        "64",
        "--trainer.max_epochs",
        "3",
        "--optimizer",
        "torch.optim.SGD",
        "--optimizer.lr",
        "20",
        "--experiment",
        "collapse",
        *QUIET,
    ]
    assert run(args) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("machlite:")]
    assert len(err) == 1 and err[0].startswith("machlite: warning: val/acc has stayed at chance")
    assert "(epochs 0-2)" in err[0] and "lower the learning rate" in err[0]


def test_collapse_rule() -> None:
    chance = 0.2
    assert collapse_message([0.2, 0.21, 0.19], chance) is not None  # at chance throughout
    assert collapse_message([0.21, 0.19], chance) is None  # not for long enough
    assert collapse_message([0.5, 0.6, 0.21, 0.2, 0.22], chance).startswith(
        "val/acc has stayed at chance level (0.220"
    )
    # the MNIST report's run: 98% then 21% (chance 11%): a collapse, not chance level
    msg = collapse_message([0.97, 0.98, 0.3, 0.22, 0.21], 0.11)
    assert msg.startswith("val/acc has collapsed from its best 0.980 to 0.210 for 3 epochs")
    assert collapse_message([0.97, 0.98, 0.3, 0.6, 0.21], 0.11) is None  # it recovered once
    assert collapse_message([0.5, 0.55, 0.6, 0.62], chance) is None


# -- bad input: one line, nonzero exit, no traceback -------------------------------------------
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--data.batch_sise", "64"], "data.batch_sise: machlite.datasets.JSCDataModule has no"),
        (["--trainer.max_epohcs", "3"], "unrecognized arguments: --trainer.max_epohcs 3"),
        (["--data.batch_size", "0"], "data.batch_size: Not of type PositiveInt: 0"),
        (["--data.batch_size", "-3"], "data.batch_size: Not of type PositiveInt: -3"),
        (["--data.batch_size", "many"], "data.batch_size: Not of type PositiveInt: invalid"),
        (["--data.val_fraction", "1.5"], "data.val_fraction: Not of type Fraction: 1.5"),
        (["--data.val_fraction", "-0.1"], "data.val_fraction: Not of type Fraction: -0.1"),
        (["--optimizer.lr", "fast"], "optimizer.lr: expected a value of type float, got 'fast'"),
        (["--trainer.max_epochs", "x"], "trainer.max_epochs: expected a value of type int, got"),
        (["--model.network", "machlite.models.JSCTinny"], "unknown class 'machlite.models.JSC"),
        (["--checkpoint_every_n_steps", "-1"], "checkpoint_every_n_steps: Not of type NonNeg"),
    ],
)
def test_bad_flags_are_one_line(
    flags: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["fit", "--config", TINY, *flags]) == 2
    err = one_error_line(capsys)
    assert expected in err and err.endswith("(see: machlite fit --help)")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("max_epochs: 10", "max_epoch: 10"), "does not accept option 'trainer.max_epoch'"),
        (("batch_size: 256", "batch_sise: 256"), "data.batch_sise: machlite.datasets.JSCData"),
        (("lr: 0.001", "lr: fast"), "optimizer.lr: expected a value of type float, got 'fast'"),
        (("batch_size: 256", "batch_size: -1"), "data.batch_size: Not of type PositiveInt: -1"),
        (("JSCTiny", "JSCTinny"), "model.network: unknown class 'machlite.models.JSCTinny'"),
        (("model:", "modle:"), "does not accept option 'modle"),
        (("trainer:", "trainer: [oops"), "bad.yaml, line 10, column 13: expected ',' or ']'"),
    ],
)
def test_bad_config_files_are_one_line(
    edit: tuple[str, str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = Path(TINY).read_text()
    assert edit[0] in text
    config = tmp_path / "bad.yaml"
    config.write_text(text.replace(edit[0], edit[1], 1))
    assert run(["fit", "--config", str(config)]) == 2
    assert expected in one_error_line(capsys)


def test_missing_config_file_and_bad_runtime_values_are_one_line(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["fit", "--config", "nope.yaml"]) == 2
    err = one_error_line(capsys)
    assert "config: File does not exist: '" in err and "nope.yaml'" in err
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), *QUIET]
    assert run([*args, "--optimizer.lr", "-1"]) == 2  # the optimizer rejects it
    assert "optimizer: Invalid learning rate: -1.0" in one_error_line(capsys)
    assert run([*args, "--optimizer.lr", "1e39"]) == 2  # overflows float32
    assert "optimizer: value cannot be converted" in one_error_line(capsys)
    assert run([*args, "--trainer.accelerator", "gpuu"]) == 2
    assert "trainer: You selected an invalid accelerator name" in one_error_line(capsys)


def test_parse_error_condensing() -> None:
    nested = """Parser key "optimizer":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'torch.optim.optimizer.Optimizer'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'torch.optim.Adam':
        Parser key "lr":

          - Expected a path but fast either not accessible or invalid
          - Does not validate against any of the Union subtypes
          Subtypes: [<class 'float'>, <class 'torch.Tensor'>]
          Errors:
            - Expected a <class 'float'>
            - Expected a dot import path string: fast
          Given value type: <class 'str'>
          Given value: fast
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='lr', val='fast')"""
    assert (
        one_line_parse_error(nested) == "optimizer.lr: expected a value of type float, got 'fast'"
    )
    assert one_line_parse_error("unrecognized arguments: --foo 3") == (
        "unrecognized arguments: --foo 3"
    )


def _jsc_file_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    good = write_synthetic_jsc(folder / "good.h5", 500)
    empty = folder / "empty.h5"
    empty.touch()
    truncated = folder / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    html = folder / "html.h5"
    html.write_bytes(b"<html>Sign in to CERNBox</html>")
    partial = folder / "partial.h5"
    names = [c for c in FEATURES + LABELS if c != "j_z"]
    with h5py.File(partial, "w") as f:
        f.create_dataset(JSC_DATASET, data=np.zeros(10, dtype=[(c, np.float32) for c in names]))
    return {
        "empty": (empty, "is empty"),
        "truncated": (truncated, "is not a readable HDF5 file (Unable to synchronously open"),
        "not HDF5": (html, "is not a readable HDF5 file"),
        "missing fields": (partial, "lacks the field(s) j_z"),
    }


@pytest.mark.parametrize("case", ["empty", "truncated", "not HDF5", "missing fields"])
def test_bad_jsc_files_are_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, expected = _jsc_file_cases(tmp_path)[case]
    data = tmp_path / "data"
    target = data / "jsc" / "jsc_synthetic_500.h5"  # where --data.source synthetic looks
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    args = ["fit", "--config", TINY, "--data.source", "synthetic", "--data.synthetic_jets", "500"]
    assert run([*args, "--data.data_dir", str(data)]) == 1
    err = one_error_line(capsys)
    assert f"JSC file {target} {expected}" in err and "delete it and run again" in err


def test_mnist_file_failing_its_checksum_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, _, _ in MNIST_FILES:
        (raw / name).write_bytes(gzip.compress(b"not MNIST"))
    args = ["fit", "--config", str(CONFIGS / "mnist.yaml"), "--data.data_dir", str(raw.parents[1])]
    assert run(args) == 1
    err = one_error_line(capsys)
    assert re.search(r"MNIST file .*train-images-idx3-ubyte.gz is corrupt \(md5 [0-9a-f]{32}", err)
    assert "delete it and run again" in err


def test_bad_checkpoints_are_one_line(
    jsc_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", TINY, *synthetic(jsc_data_dir), "--experiment", "ck", *QUIET]
    one_epoch = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    assert run(["fit", *args, *one_epoch]) == 0
    good = Path("runs/ck_synthetic/version_0/checkpoints/last.ckpt")
    capsys.readouterr()
    # a checkpoint of another network
    assert (
        run(["test", *args, "--model.network", "machlite.models.JSCToy", "--ckpt_path", str(good)])
        == 2
    )
    err = one_error_line(capsys)
    assert f"checkpoint {good} does not match the network JSCToy" in err
    assert "use the config (and --model.network) the checkpoint was trained with" in err
    # missing, truncated, not a checkpoint
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:3000])
    for path, expected in [
        (tmp_path / "nope.ckpt", "does not exist"),
        (truncated, "is not a readable checkpoint (PytorchStreamReader failed"),
        (Path(TINY), "is not a readable checkpoint (not a PyTorch file, or corrupt)"),
    ]:
        assert run(["test", *args, "--ckpt_path", str(path)]) == 1
        assert f"checkpoint {path} {expected}" in one_error_line(capsys)


def test_data_dir_that_is_not_writable_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = ["fit", "--config", TINY, "--data.source", "synthetic", "--data.synthetic_jets", "500"]
    assert run([*args, "--data.data_dir", str(blocker / "data")]) == 1
    err = one_error_line(capsys)
    assert "cannot write the synthetic JSC file" in err and "(Not a directory)" in err
    assert "pass a writable --data.data_dir" in err
    assert run([*args, "--runs_dir", str(blocker / "runs")]) == 1  # the same for runs_dir
    err = one_error_line(capsys)
    assert "cannot write the run folder under" in err and "--runs_dir" in err
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs a normal user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert run([*args, "--data.data_dir", str(locked)]) == 1
        assert "(Permission denied)" in one_error_line(capsys)


# -- untrusted files ---------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs code: it creates the folder named in its argument."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (self.marker, 0o777, True))


def test_checkpoint_needing_code_is_refused_unless_trusted(
    jsc_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", TINY, *synthetic(jsc_data_dir), "--experiment", "tr", *QUIET]
    assert (
        run(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]) == 0
    )
    good = torch.load("runs/tr_synthetic/version_0/checkpoints/last.ckpt", weights_only=True)
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({**good, "payload": _Payload(str(marker))}, evil)
    capsys.readouterr()
    for sub in ("test", "fit"):
        assert run([sub, *args, "--ckpt_path", str(evil)]) == 2
        err = one_error_line(capsys)
        assert f"checkpoint {evil} needs arbitrary code to load (os.makedirs)" in err
        assert err.endswith("with --weights_only false")
        assert not marker.exists()  # refused before any code ran
    # trusted explicitly: it loads (and, as warned, runs the code)
    assert run(["test", *args, "--ckpt_path", str(evil), "--weights_only", "false"]) == 0
    assert marker.exists()


def test_failed_download_verification_deletes_the_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MACHLITE_OFFLINE")
    served = tmp_path / "served.bin"
    served.write_bytes(b"x" * 100_000)
    dest = tmp_path / "dl" / "file.bin"

    def reject(path: Path) -> None:
        assert path.name.endswith(".part") and path.stat().st_size == 100_000
        raise DataError("bad checksum")

    with pytest.raises(DataError, match="bad checksum"):
        download(served.as_uri(), dest, verify=reject)
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(DataError, match="refusing to download over an insecure URL"):
        download("http://example.com/file.bin", dest)
    assert list(dest.parent.iterdir()) == []


def test_printed_tensorboard_command_binds_to_localhost(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", TINY, *synthetic(jsc_data_dir), "--experiment", "tb", *QUIET]
    assert run([*args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "tensorboard --logdir" in ln]
    assert lines == [
        "machlite: view the curves with: tensorboard --logdir runs/tb_synthetic --host 127.0.0.1"
    ]


# -- concurrency -------------------------------------------------------------------------------
def _claim(root: str, start: multiprocessing.Event, out: multiprocessing.Queue) -> None:
    start.wait()
    out.put(allocate_version(root))


def test_runs_started_at_once_get_distinct_version_folders(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    (tmp_path / "exp" / "version_0").mkdir(parents=True)
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / "exp"), start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
    versions = sorted(out.get(timeout=10) for _ in procs)
    assert versions == list(range(1, 9))
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [
        f"version_{i}" for i in range(9)
    ]


@pytest.mark.slow
def test_two_real_runs_started_at_once_never_share_a_folder(
    jsc_data_dir: Path, tmp_path: Path
) -> None:
    args = [
        sys.executable,
        "-m",
        "machlite",
        "fit",
        "--config",
        TINY,
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "1",
        "--experiment",
        "twin",
        *QUIET,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    dirs = sorted(re.search(r"machlite: run (\S+) on", out).group(1) for out in outs)
    assert dirs == ["runs/twin_synthetic/version_0", "runs/twin_synthetic/version_1"]
    for folder in dirs:
        assert len(list((tmp_path / folder).glob("events.out.tfevents.*"))) == 1
        assert (tmp_path / folder / "checkpoints" / "last.ckpt").is_file()


def test_a_half_written_data_cache_is_never_read(
    jsc_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = jsc_data_dir / "jsc" / "jsc_synthetic_3000.h5"
    data = tmp_path / "data"
    (data / "jsc").mkdir(parents=True)
    (data / "jsc" / src.name).write_bytes(src.read_bytes())
    dm = JSCDataModule(data_dir=str(data), source="synthetic", synthetic_jets=3000)
    dm.prepare_data()
    whole = dm.cache_path.read_bytes()
    reference = dm._load_cache()
    # a crash in the middle of np.savez: the temp file is removed, the cache name never seen
    cache = dm.cache_path
    cache.unlink()

    def crash(file: str, **arrays: np.ndarray) -> None:
        Path(file).write_bytes(whole[: len(whole) // 2])
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(jsc_module.np, "savez", crash)
        with pytest.raises(KeyboardInterrupt):
            JSCDataModule(
                data_dir=str(data), source="synthetic", synthetic_jets=3000
            ).prepare_data()
    assert list(cache.parent.iterdir()) == []
    # a half or inconsistent file at the cache's name (from an older, non-atomic writer) is
    # detected on load and rebuilt, never used
    for bad in (whole[: len(whole) // 2], whole[:100]):
        cache.write_bytes(bad)
        assert dm._load_cache() is None
        dm.prepare_data()
        rebuilt = dm._load_cache()
        assert all(np.array_equal(rebuilt[k], reference[k]) for k in reference)
    arrays = dict(reference)
    arrays["y_val"] = arrays["y_val"][:-1]
    np.savez(cache, **arrays)
    assert dm._load_cache() is None
    dm.setup()
    assert len(dm.splits["val"][0]) == len(dm.splits["val"][1]) == len(reference["y_val"])
