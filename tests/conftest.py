"""Shared fixtures. Tests never touch the network: downloads are disabled for every test."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Under pytest-xdist (pytest -n 2), two workers, each with torch's default threads, share the
# cores: OpenMP threads that sleep when idle, instead of spinning, leave the cores to the other
# worker (measured: the fast suite in about 20% less time and CPU on 2 cores). It must be set
# before torch is first imported (by the imports below); the machlite subprocesses inherit it.
# The thread count, and so every result, is unchanged.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from machlite.commands import main  # noqa: E402
from machlite.datasets.jsc_synthetic import write_synthetic_jsc  # noqa: E402
from machlite.events import load_events  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
CONFIGS = REPO / "configs"
MNIST_GZ = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(autouse=True)
def _offline_and_isolated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, torch_compile_cache: Path
) -> Iterator[None]:
    """No downloads, no writes to the user's cache, and runs/ inside tmp_path.

    A compile goes to the tests' own torch compile cache (machlite's default is in the
    user's cache folder). CUDA_VISIBLE_DEVICES, which a CPU run may set
    (machlite.accelerator.stop_gpu_probe), is put back as it was.
    """
    monkeypatch.setenv("MACHLITE_OFFLINE", "1")
    monkeypatch.setenv("MACHLITE_DATA_DIR", str(tmp_path / "default_data"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(torch_compile_cache))
    monkeypatch.chdir(tmp_path)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding the real MNIST files in torchvision's layout (skips if absent)."""
    if not all((SHARED_MNIST / name).is_file() for name in MNIST_GZ):
        pytest.skip(f"real MNIST copy not found in {SHARED_MNIST} (needs ../shared/data/mnist)")
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_GZ:
        shutil.copy(SHARED_MNIST / name, raw / name)
    return root


@pytest.fixture(scope="session")
def jsc_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with a small synthetic JSC file where JSCDataModule(source=synthetic) looks."""
    root = tmp_path_factory.mktemp("jsc")
    write_synthetic_jsc(root / "jsc" / "jsc_synthetic_3000.h5", 3000)
    return root


@pytest.fixture(scope="session")
def torch_compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torch compile cache for every test that compiles (never the user's own).

    Under pytest-xdist it is one for the whole run, shared by the workers as in a serial run
    (torch's cache is safe for concurrent processes), so a graph one worker compiled loads
    in the other.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder; each worker's basetemp is a folder in it
    path = root / "torch_compile"
    path.mkdir(exist_ok=True)
    return path


def run(args: list[str]) -> int:
    """Call the entrypoint in-process; return its exit code (0 when it returns)."""
    try:
        main(args)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def fit_synthetic(jsc_data_dir: Path, config: str, name: str, *extra: str, epochs: int = 2) -> Path:
    """``machlite fit`` of ``config`` on the small synthetic JSC file, batch 64, logging every
    step, quiet, as experiment ``name``; returns its run folder (``extra`` flags go last)."""
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    args = ["fit", "--config", config, *synthetic(jsc_data_dir), *quiet]
    args += ["--trainer.max_epochs", str(epochs), "--data.batch_size", "64"]
    args += ["--trainer.log_every_n_steps", "1", "--experiment", name, *extra]
    assert run(args) == 0
    return next(Path(f"runs/{name}_synthetic").glob("version_*"))


def synthetic(jsc_data_dir: Path) -> list[str]:
    """The flags that train on the small synthetic JSC file of ``jsc_data_dir``."""
    return [
        "--data.source",
        "synthetic",
        "--data.data_dir",
        str(jsc_data_dir),
        "--data.synthetic_jets",
        "3000",
    ]


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a run as ``tag -> [(step, value), ...]``, read by TensorBoard."""
    acc = load_events(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def write_run(
    run_dir: Path, val: list[float], test: float, seed: int, hparams: dict | None = None
) -> None:
    """A run folder as machlite sweep leaves it: event files (10 s per epoch), config, done;
    ``hparams`` (e.g. ``model.bops``) as an HPARAMS entry, written as HParamsLogger does."""
    import json

    import yaml
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    writer = SummaryWriter(str(run_dir))
    for summary in hparams_summaries(hparams, {"val/acc": 0.0}) if hparams else []:
        writer.file_writer.add_summary(summary)
    t0 = 1_000_000.0
    for epoch, acc in enumerate(val):
        for step in range(epoch * 10, epoch * 10 + 10, 5):
            writer.add_scalar("train/loss", 1.5 - 0.01 * step - 0.1 * seed, step, walltime=t0)
        writer.add_scalar("val/acc", acc, epoch * 10 + 9, walltime=t0 + 10.0 * (epoch + 1))
    writer.close()
    test_writer = SummaryWriter(str(run_dir / "test"))
    test_writer.add_scalar("test/acc", test + 0.01 * seed, 0)
    test_writer.close()
    config = {
        "data": {
            "class_path": "machlite.datasets.JSCDataModule",
            "init_args": {"source": "synthetic"},
        },
        "model": {"network": {"class_path": "machlite.models.JSCToy", "init_args": {}}},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "done.json").write_text(json.dumps({"params": 327}))
