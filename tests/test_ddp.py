"""Two-process CPU DDP (gloo): ``machlite fit/test/predict --trainer.strategy ddp``.

The runs are real ``python -m machlite`` subprocesses; Lightning starts the second rank.
``RankProbe`` (added with ``--trainer.callbacks``) records, in each rank, the training samples
it drew, its weights, and every write of the JSC data files, for the tests to compare. The
data are SYNTHETIC JSC jets: the accuracies compared here say nothing about real jets.
"""

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from .conftest import CONFIGS, REPO, curves, run

# pytest -n (xdist, --dist loadgroup): the tests share the module's one DDP fit, so they run in
# one worker, which makes it once
pytestmark = pytest.mark.xdist_group("ddp")

PROBE_ENV = "MACHLITE_TEST_PROBE_DIR"
JETS = 3000
DDP = [
    "--trainer.strategy",
    "ddp",
    "--trainer.devices",
    "2",
    "--trainer.accelerator",
    "cpu",
    "--trainer.enable_progress_bar",
    "false",
]


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


class RankProbe(Callback):
    """Test instrumentation, run inside each DDP rank; writes into ``$MACHLITE_TEST_PROBE_DIR``.

    It also wraps the JSC module's writers (synthetic file, preprocessed cache) so that each
    write appends a line ``<rank> <what>`` to ``writes.txt``.
    """

    _wrapped = False

    def __init__(self) -> None:
        self.out = Path(os.environ[PROBE_ENV])
        self.rows: list[torch.Tensor] = []
        if not RankProbe._wrapped:
            RankProbe._wrapped = True
            self._wrap_writers()

    def _wrap_writers(self) -> None:
        from machlite.datasets import jsc

        def note(what: str) -> None:
            with open(self.out / "writes.txt", "a") as f:
                f.write(f"{_rank()} {what}\n")

        write_cache, write_file = jsc.JSCDataModule._write_cache, jsc.write_synthetic_jsc

        def counted_cache(module: Any, arrays: Any) -> None:
            note("cache")
            write_cache(module, arrays)

        def counted_file(*args: Any, **kwargs: Any) -> Any:
            note("synthetic_file")
            return write_file(*args, **kwargs)

        jsc.JSCDataModule._write_cache = counted_cache
        jsc.write_synthetic_jsc = counted_file

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 0:
            self.rows += [x.cpu() for x, _ in (batch if isinstance(batch, list) else [batch])]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank, epoch = trainer.global_rank, trainer.current_epoch
        if epoch == 0:
            torch.save(torch.cat(self.rows), self.out / f"rows_rank{rank}.pt")
        params = {k: p.detach().cpu().clone() for k, p in pl_module.named_parameters()}
        torch.save(params, self.out / f"params_rank{rank}_epoch{epoch}.pt")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out / f"state_rank{trainer.global_rank}.pt")


def _start(command: list[str], cwd: Path, probe: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, MACHLITE_OFFLINE="1", PYTHONPATH=str(REPO))
    for name in ("LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "NODE_RANK", "WORLD_SIZE"):
        env.pop(name, None)
    if probe is not None:
        env[PROBE_ENV] = str(probe)
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a hang can be ended with the ranks it started
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} did not finish:\n{out[-3000:]}")
    return proc.returncode, out


def _machlite(args: list[str], cwd: Path, probe: Path | None = None) -> tuple[int, str]:
    """Run ``python -m machlite ARGS`` (DDP: it starts the other rank); return rc, output."""
    return _finish(_start([sys.executable, "-m", "machlite", *args], cwd, probe))


def _data(data_dir: Path) -> list[str]:
    return [
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--data.source",
        "synthetic",
        "--data.synthetic_jets",
        str(JETS),
        "--data.data_dir",
        str(data_dir),
        "--data.batch_size",
        "64",
    ]


def _scalars(run_dir: Path, tag: str) -> list[float]:
    return [value for _, value in curves(run_dir)[tag]]


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-process fit of JSC-Tiny (4 optimizer steps per call) on fresh synthetic data."""
    root = tmp_path_factory.mktemp("ddp")
    probe = root / "probe"
    probe.mkdir()
    args = [
        "fit",
        *_data(root / "data"),
        *DDP,
        "--model.steps_per_call",
        "4",
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.callbacks+=tests.test_ddp.RankProbe",
        "--runs_dir",
        str(root / "runs"),
        "--experiment",
        "ddp",
    ]
    rc, out = _machlite(args, root, probe)
    assert rc == 0, out[-3000:]
    return {"root": root, "probe": probe, "out": out, "data": root / "data"}


def _run_dir(ddp_fit: dict[str, Any]) -> Path:
    runs = sorted((ddp_fit["root"] / "runs" / "ddp_synthetic").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # rank 1 made no run folder of its own
    return runs[0]


@pytest.mark.slow
def test_ddp_fit_finishes_and_only_rank_zero_writes(ddp_fit: dict[str, Any]) -> None:
    out, run_dir = ddp_fit["out"], _run_dir(ddp_fit)
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out
    assert out.count("machlite: run finished") == 1  # the report is printed by rank 0 only
    assert "Traceback" not in out and "sync_dist" not in out
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts
    # The data files were written once, by rank 0; rank 1 waited and read them.
    writes = (ddp_fit["probe"] / "writes.txt").read_text().splitlines()
    assert sorted(writes) == ["0 cache", "0 synthetic_file"]
    cache = list((ddp_fit["data"] / "jsc").rglob("*.npz"))
    assert len(cache) == 1 and not list((ddp_fit["data"] / "jsc").rglob("*.tmp*"))


@pytest.mark.slow
def test_ddp_ranks_draw_disjoint_shards_and_keep_identical_weights(
    ddp_fit: dict[str, Any],
) -> None:
    probe = ddp_fit["probe"]
    rows = [torch.load(probe / f"rows_rank{r}.pt") for r in (0, 1)]
    assert abs(len(rows[0]) - len(rows[1])) <= 1
    with np.load(next((ddp_fit["data"] / "jsc").rglob("*.npz"))) as cache:
        x_train = torch.from_numpy(cache["x_train"])

    def as_set(x: torch.Tensor) -> set[tuple[float, ...]]:
        return {tuple(r) for r in x.tolist()}

    assert len(as_set(x_train)) == len(x_train)  # rows identify samples
    assert not as_set(rows[0]) & as_set(rows[1])  # disjoint
    assert len(rows[0]) + len(rows[1]) == len(x_train)  # nothing repeated ...
    assert as_set(torch.cat(rows)) == as_set(x_train)  # ... and nothing left out
    # Gradients are averaged over the ranks at every optimizer step (also with several steps
    # per call), so both ranks hold the same weights after each epoch.
    for epoch in (0, 1):
        p0, p1 = (torch.load(probe / f"params_rank{r}_epoch{epoch}.pt") for r in (0, 1))
        assert p0.keys() == p1.keys() and p0
        for name in p0:
            assert torch.equal(p0[name], p1[name]), (epoch, name)
    s0, s1 = (torch.load(probe / f"state_rank{r}.pt") for r in (0, 1))
    for name in s0:  # BatchNorm statistics too, once validation has synced them
        assert torch.equal(s0[name], s1[name]), name
    # The epoch-0 weights moved: the run trained.
    name = "network.seq_blocks.2.weight"
    assert not torch.equal(
        torch.load(probe / "params_rank0_epoch0.pt")[name],
        torch.load(probe / "params_rank0_epoch1.pt")[name],
    )
    ckpt = torch.load(_run_dir(ddp_fit) / "checkpoints" / "last.ckpt", weights_only=False)
    for name, value in ckpt["state_dict"].items():
        assert torch.equal(value, s0[name]), name


@pytest.mark.slow
def test_ddp_val_acc_equals_single_process_validation(
    ddp_fit: dict[str, Any], tmp_path: Path
) -> None:
    run_dir = _run_dir(ddp_fit)
    ddp_acc, ddp_loss = _scalars(run_dir, "val/acc")[-1], _scalars(run_dir, "val/loss")[-1]
    args = [
        "validate",
        *_data(ddp_fit["data"]),
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--experiment",
        "single",
    ]
    assert run(args) == 0
    single_dir = tmp_path / "runs" / "single_synthetic" / "version_0"
    assert _scalars(single_dir, "val/acc") == [ddp_acc]
    assert _scalars(single_dir, "val/loss") == [pytest.approx(ddp_loss, rel=1e-6)]


@pytest.mark.slow
def test_ddp_test_and_predict_equal_single_process(ddp_fit: dict[str, Any], tmp_path: Path) -> None:
    ckpt = str(_run_dir(ddp_fit) / "checkpoints" / "last.ckpt")
    results = {}
    for mode in ("single", "ddp"):
        for sub in ("test", "predict"):
            args = [sub, *_data(ddp_fit["data"]), "--ckpt_path", ckpt, "--experiment", mode]
            if mode == "ddp":
                rc, out = _machlite([*args, *DDP, "--runs_dir", str(tmp_path / "runs")], tmp_path)
                assert rc == 0, out[-3000:]
            else:
                assert run([*args, "--trainer.accelerator", "cpu"]) == 0
        runs = sorted((tmp_path / "runs" / f"{mode}_synthetic").iterdir())
        # one folder for test, one for predict: rank 1 made none
        assert [r.name for r in runs] == ["version_0", "version_1"]
        test_dir, predict_dir = runs
        with open(predict_dir / "predictions.csv") as f:
            rows = list(csv.reader(f))
        results[mode] = (_scalars(test_dir, "test/acc"), _scalars(test_dir, "test/loss"), rows)
    (s_acc, s_loss, s_rows), (d_acc, d_loss, d_rows) = results["single"], results["ddp"]
    assert len(s_acc) == 1 and d_acc == s_acc  # the same correct count over the same jets
    assert d_loss == [pytest.approx(s_loss[0], rel=1e-6)]
    n_test = round(JETS * 0.2)  # about: de-duplication removes a few synthetic jets
    assert n_test * 0.9 < len(d_rows) - 1 == len(s_rows) - 1 <= n_test
    assert [r[:2] for r in d_rows] == [r[:2] for r in s_rows]  # same index and class per row
    for d, s in zip(d_rows[1:], s_rows[1:], strict=True):
        assert [float(v) for v in d[2:]] == pytest.approx([float(v) for v in s[2:]], abs=1e-5)


@pytest.mark.slow
def test_ddp_missing_data_stops_both_ranks_with_one_line(tmp_path: Path) -> None:
    """Rank 0's prepare_data fails offline; the run ends (no hang) with machlite's one line."""
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), "--data.data_dir", "d", *DDP]
    rc, out = _machlite(args, tmp_path)
    assert rc == 1
    errors = [line for line in out.splitlines() if line.startswith("machlite: error:")]
    assert len(errors) == 1 and "JSC file" in errors[0] and "--data.source synthetic" in errors[0]
    assert "Traceback" not in out


@pytest.mark.slow
def test_two_torchrun_nodes_train_as_one_job(ddp_fit: dict[str, Any], tmp_path: Path) -> None:
    """docs/distributed.md's torchrun command, as two 'nodes' of one process on localhost."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    fit = [
        "fit",
        *_data(ddp_fit["data"]),
        *["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "1"],
        *["--trainer.num_nodes", "2", "--trainer.max_epochs", "1"],
        *["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"],
    ]
    nodes = [
        _start(
            [
                *torchrun,
                *["--nproc_per_node", "1", "--node_rank", str(rank)],
                *["--master_addr", "127.0.0.1", "--master_port", str(port)],
                *["-m", "machlite", *fit],
            ],
            tmp_path,
        )
        for rank in (0, 1)
    ]
    (rc0, out0), (rc1, out1) = (_finish(node) for node in nodes)
    assert rc0 == 0 and rc1 == 0, (out0[-2000:], out1[-2000:])
    assert "MEMBER: 2/2" in out0 + out1
    assert "on cpu x1 on each of 2 nodes" in out0 and "machlite: run" not in out1
    runs = list((tmp_path / "runs" / "jsc_tiny_synthetic").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert len(_scalars(runs[0], "val/acc")) == 1
