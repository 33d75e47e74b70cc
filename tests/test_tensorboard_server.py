"""The real ``tensorboard`` server over a small sweep: runs and scalars through its HTTP API."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from machlite.events import load_events

from .conftest import CONFIGS, run, synthetic

TENSORBOARD = Path(sys.executable).parent / "tensorboard"
RUNS = ["batch_size=64/seed_0", "batch_size=128/seed_0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for_tags(server: subprocess.Popen, port: int, log: Path) -> dict[str, Any]:
    """Poll the scalars plugin until every run of the sweep is loaded (or give up)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited with {server.returncode}: {log.read_text()}")
        try:
            tags = get(port, "/data/plugin/scalars/tags")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            tags = {}
        if all(
            "val/acc" in tags.get(r, {}) and "test/acc" in tags.get(r + "/test", {}) for r in RUNS
        ):
            return tags
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not serve the sweep's runs: {log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not TENSORBOARD.is_file(), reason=f"no tensorboard binary at {TENSORBOARD}")
def test_tensorboard_serves_the_sweep_runs_and_scalars(tmp_path: Path, jsc_data_dir: Path) -> None:
    args = [
        "sweep",
        "--config",
        str(CONFIGS / "jsc_tiny.yaml"),
        "--grid",
        "data.batch_size=64,128",
        "--seeds",
        "0",
        "--jobs",
        "2",
        "--sweep_dir",
        "tb_sweep",
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
    ]
    assert run(args) == 0
    sweep_dir = tmp_path / "tb_sweep"
    port = free_port()
    log = tmp_path / "tensorboard.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(TENSORBOARD), "--logdir", str(sweep_dir), "--host", "127.0.0.1"]
            + ["--port", str(port), "--reload_interval", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            tags = wait_for_tags(server, port, log)
            runs = get(port, "/data/runs")
            assert set(runs) == {*RUNS, *(r + "/test" for r in RUNS)}
            for name in RUNS:
                assert {"train/loss", "train/lr", "val/loss", "val/acc"} <= set(tags[name])
                # the server's points are the event files' points
                expected = load_events(sweep_dir / name)
                for tag in ("val/acc", "train/loss"):
                    served = get(port, "/data/plugin/scalars/scalars", run=name, tag=tag)
                    want = expected.Scalars(tag)
                    assert [step for _, step, _ in served] == [e.step for e in want]
                    assert [v for _, _, v in served] == pytest.approx([e.value for e in want])
                assert len(get(port, "/data/plugin/scalars/scalars", run=name, tag="val/acc")) == 2
                test = get(port, "/data/plugin/scalars/scalars", run=name + "/test", tag="test/acc")
                done = json.loads((sweep_dir / name / "done.json").read_text())
                assert test[-1][2] == pytest.approx(done["metrics"]["test_acc"])
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
