"""Screenshots of TensorBoard's TIME SERIES and HPARAMS pages, taken by a real browser.

Starts ``tensorboard --logdir LOGDIR`` on localhost, opens both pages in headless Chromium
(Debian's ``chromium`` package) and saves one PNG each. docs/tensorboard.md shows them.

    python docs/scripts/tensorboard_screenshots.py --logdir sweeps/lr_demo_synthetic \\
        --out docs/img
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=15000",
]
PAGES = {
    "timeseries": "tensorboard_timeseries.png",
    "scalars": "tensorboard_scalars.png",
    "hparams": "tensorboard_hparams.png",
}


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    """Wait until ``url`` answers."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not answer at {url}")


def main() -> None:
    """Start TensorBoard, take both screenshots, stop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", required=True, type=Path)
    parser.add_argument("--out", default=Path("docs/img"), type=Path)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    opts = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    tensorboard = Path(sys.executable).with_name("tensorboard")
    cmd = [str(tensorboard), "--logdir", str(opts.logdir), "--host", "127.0.0.1"]
    server = subprocess.Popen([*cmd, "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_for(base + "data/runs")
        time.sleep(3)  # let it load the event files
        opts.out.mkdir(parents=True, exist_ok=True)
        for page, name in PAGES.items():
            with tempfile.TemporaryDirectory() as profile:
                shot = opts.out / name
                subprocess.run(
                    [
                        opts.chromium,
                        *CHROMIUM_FLAGS,
                        f"--user-data-dir={profile}",
                        f"--screenshot={shot}",
                        f"{base}#{page}",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
            print(f"wrote {shot}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
