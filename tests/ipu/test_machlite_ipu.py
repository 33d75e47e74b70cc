"""machlite itself on the IPU path (lightning 2.0.9's IPUStrategy) against the poptorch emulator.

Runs only on the Python 3.10 IPU-era stack (lightning 2.0.x) with ``tests/ipu/emulator`` on
PYTHONPATH (`.ci/run` does this); skipped elsewhere. The emulator is a test double, not an IPU:
these tests check machlite's IPU code path and its numerics, not IPU hardware.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import CONFIGS
from .conftest import EMULATOR_DIR, is_lightning_2_0

pytestmark = pytest.mark.ipu

if not is_lightning_2_0():
    pytest.skip("the IPU path needs lightning 2.0.x (in-tree IPUStrategy)", allow_module_level=True)
poptorch = pytest.importorskip("poptorch", reason="needs PYTHONPATH=tests/ipu/emulator")
if not getattr(poptorch, "IS_EMULATOR", False):
    pytest.skip(
        "a real poptorch is importable; these tests target the emulator", allow_module_level=True
    )

from machlite.commands import main  # noqa: E402
from machlite.models import JSCTiny  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def machlite(args: list[str], cwd: Path) -> str:
    """Run ``python -m machlite ARGS`` with the emulator on PYTHONPATH; return its output."""
    env = {**os.environ, "PYTHONPATH": f"{EMULATOR_DIR}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "machlite", *args, "--trainer.enable_progress_bar", "false"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def _test_acc(output: str) -> float:
    match = re.search(r"test accuracy ([\d.]+)% on 10,000 samples", output)
    assert match, output[-3000:]
    return float(match.group(1)) / 100


def test_mnist_graphcore_on_ipu_matches_cpu(mnist_dir: Path, tmp_path: Path) -> None:
    """The tutorial config on a slice of real MNIST: IPU (emulated) and CPU agree within 1 pp.

    ``mnist_dir`` (tests/conftest.py) skips with a reason when ../shared/data/mnist is absent.
    """
    config = ["--config", str(CONFIGS / "mnist_graphcore.yaml"), "--data.data_dir", str(mnist_dir)]
    # a slice: the first 6,000 training images of epoch 0 (750 batches of 8), 1,000 val images
    fit = [*config, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "750"]
    fit += ["--trainer.limit_val_batches", "12"]
    # Dropout off: an IPU draws its dropout masks from its own RNG, so with dropout the two
    # runs would differ by mask luck (several points this early in training), not by machlite.
    fit += ["--model.network.init_args.dropout", "0.0"]
    accs = {}
    for accel in ("ipu", "cpu"):
        name = f"slice_{accel}"
        out = machlite(
            ["fit", *fit, "--trainer.accelerator", accel, "--experiment", name], tmp_path
        )
        if accel == "ipu":
            assert "IPU available: True, using: 1 IPUs" in out
            assert "machlite: accelerator ipu (poptorch" in out
            assert "machlite: run runs/slice_ipu/version_0 on ipu x1" in out
        ckpt = tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
        test = [*config, "--trainer.accelerator", accel, "--experiment", name]
        accs[accel] = _test_acc(machlite(["test", *test, "--ckpt_path", str(ckpt)], tmp_path))
    assert accs["cpu"] > 0.6, accs  # the slice really trained (chance: 0.1)
    assert abs(accs["ipu"] - accs["cpu"]) <= 0.01, accs

    ckpt = tmp_path / "runs" / "slice_ipu" / "version_0" / "checkpoints" / "last.ckpt"
    predict = [*config, "--trainer.accelerator", "ipu", "--experiment", "slice_ipu"]
    out = machlite(["predict", *predict, "--ckpt_path", str(ckpt)], tmp_path)
    assert "10000 predictions written" in out
    rows = (tmp_path / "runs" / "slice_ipu" / "version_2" / "predictions.csv").read_text()
    assert len(rows.splitlines()) == 10_001


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu")["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("network.")}


def _fit_jsc(jsc_dir: Path, name: str, extra: list[str]) -> dict[str, torch.Tensor]:
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), "--data.source", "synthetic"]
    args += ["--data.data_dir", str(jsc_dir), "--data.synthetic_jets", "3000"]
    args += ["--model.steps_per_call", "1", "--trainer.max_epochs", "2", "--experiment", name]
    args += ["--trainer.enable_progress_bar", "false", "--optimizer.lr", "0.01", *extra]
    args += ["--data.batch_size", "16", "--data.eval_batch_size", "64"]
    main(args)
    return _weights(Path("runs") / f"{name}_synthetic" / "version_0" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize(("iterations", "accumulate"), [(4, 1), (1, 3), (2, 2)])
def test_device_iterations_and_accumulation_give_the_cpu_weights(
    jsc_data_dir: Path, iterations: int, accumulate: int
) -> None:
    """N host calls of D device iterations x G accumulation = N*D*G CPU batches, same weights."""
    calls = 20
    ipu = _fit_jsc(
        jsc_data_dir,
        "ipu",
        [
            "--trainer.accelerator", "ipu",
            "--trainer.devices", "1",  # a string on the command line: lightning 2.0.9 quirk
            "--ipu.device_iterations", str(iterations),
            "--trainer.accumulate_grad_batches", str(accumulate),
            "--trainer.limit_train_batches", str(calls),
        ],
    )  # fmt: skip
    cpu = _fit_jsc(
        jsc_data_dir,
        "cpu",
        [
            "--trainer.accelerator", "cpu",
            "--trainer.accumulate_grad_batches", str(accumulate),
            "--trainer.limit_train_batches", str(calls * iterations * accumulate),
        ],
    )  # fmt: skip
    torch.manual_seed(0)  # seed_everything's seed: the network's initial weights
    start = {f"network.{k}": v for k, v in JSCTiny().state_dict().items()}
    assert any(not torch.allclose(cpu[k], start[k]) for k in start)  # it trained
    for key in cpu:
        assert torch.allclose(ipu[key], cpu[key], atol=1e-5), key


def test_steps_per_call_becomes_one_on_ipu(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), "--data.source", "synthetic"]
    args += ["--data.data_dir", str(jsc_data_dir), "--data.synthetic_jets", "3000"]
    args += ["--trainer.accelerator", "ipu", "--trainer.fast_dev_run", "2"]
    main(args)
    out = capsys.readouterr().out
    assert "model.steps_per_call 32 -> 1 on the IPU" in out
