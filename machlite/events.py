"""Read runs back from their TensorBoard event files (for ``machlite sweep`` and ``plot``).

Everything here reads what a run wrote: the event files through tensorboard's own
``EventAccumulator``, and the run's ``config.yaml``. A run folder is a folder holding
``events.out.tfevents.*`` files; ``machlite sweep`` puts each run's test results in a
``test/`` folder inside it.
"""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The tags the plots and summaries use (see machlite.module.Classifier).
TRAIN_LOSS = "train/loss"
TRAIN_LOSS_EPOCH = "train/loss_epoch"
VAL_ACC = "val/acc"
TEST_ACC = "test/acc"
#: The tag of the HPARAMS entry's settings (TensorBoard's hparams plugin).
HPARAMS_SESSION = "_hparams_/session_start_info"
#: The network's cost in the HPARAMS entry (machlite.callbacks.HParamsLogger): model size in
#: bits and bit operations (BOPs) per sample, at the run's quantized formats.
MODEL_BITS = "model.bits"
MODEL_BOPS = "model.bops"
#: The network's cost as a sweep summary or a search objective names it, and its tag.
COST = {"bits": MODEL_BITS, "bops": MODEL_BOPS}
_SEED_DIR = re.compile(r"seed_(-?\d+)$")


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
        match = _SEED_DIR.match(self.path.name)
        return int(match.group(1)) if match else None


def has_events(folder: Path) -> bool:
    """True when ``folder`` directly holds TensorBoard event files."""
    return folder.is_dir() and any(folder.glob("events.out.tfevents.*"))


def load_events(run_dir: str | Path, scalars_only: bool = False) -> Any:
    """The one event reader: tensorboard's own ``EventAccumulator`` over ``run_dir``, loaded.

    Nothing is sampled away (every scalar, image, tensor and hparams entry is kept), so what
    it returns is what TensorBoard shows. Everything in machlite, its benchmarks and its
    tests that reads event files goes through here.

    Args:
        run_dir: A run folder.
        scalars_only: Keep every scalar but skip images and histograms (faster, for curves).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    other = 1 if scalars_only else 0  # 0 keeps every entry; 1 only the last of each tag
    keep = {"scalars": 0, "tensors": 0, "images": other, "histograms": other}
    return EventAccumulator(str(run_dir), size_guidance=keep).Reload()


def session_hparams(acc: Any) -> dict[str, Any]:
    """The settings of a loaded accumulator's HPARAMS entry (the last one), else ``{}``.

    Args:
        acc: What :func:`load_events` returned.
    """
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        content = acc.PluginTagToContent("hparams")[HPARAMS_SESSION]
    except KeyError:  # no HPARAMS entry
        return {}
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    out: dict[str, Any] = {}
    for name, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind in ("number_value", "string_value", "bool_value"):
            out[name] = getattr(value, kind)
    return out


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


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's saved ``config.yaml`` as a dict (empty when missing or unreadable)."""
    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def is_synthetic_config(config: dict[str, Any]) -> bool:
    """True when a machlite config (as a dict) trains on synthetic data.

    The one answer to "is this data synthetic?" for configs: the ``data`` block's ``source``,
    given directly or under ``init_args``. (A running datamodule says it with ``run_tag``.)
    """
    data = config.get("data") or {}
    args = data.get("init_args", data) if isinstance(data, dict) else {}
    return isinstance(args, dict) and args.get("source") == "synthetic"


def is_synthetic(run_dir: Path) -> bool:
    """True when the run's saved ``config.yaml`` says its data source was synthetic."""
    return is_synthetic_config(run_config(run_dir))


def count_network_parameters(run_dir: Path) -> int | None:
    """The parameter count of the run's network, rebuilt from its ``config.yaml``."""
    import importlib

    from machlite.models import count_parameters

    network = (run_config(run_dir).get("model") or {}).get("network")
    if not isinstance(network, dict) or "class_path" not in network:
        return None
    module_name, _, class_name = network["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        return count_parameters(cls(**(network.get("init_args") or {})))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


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
    test_dir = run.path / "test"
    test = read_run(test_dir) if has_events(test_dir) else run
    if test.values(TEST_ACC):
        out["test_acc"] = test.values(TEST_ACC)[-1]
    return {k: (None if v is not None and math.isnan(v) else v) for k, v in out.items()}


def setting_of(run: RunData) -> str:
    """The setting a run belongs to: its name without a final ``seed_N`` part."""
    parent, _, last = run.name.rpartition("/")
    if _SEED_DIR.match(last):
        return parent or "."
    return run.name


def parse_setting(name: str) -> dict[str, str]:
    """``"batch_size=32,lr=0.001"`` -> ``{"batch_size": "32", "lr": "0.001"}``; else ``{}``."""
    parts = [p for p in name.split(",") if p]
    if not parts or not all("=" in p for p in parts):
        return {}
    return dict(p.split("=", 1) for p in parts)
