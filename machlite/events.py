"""TensorBoard event files: the tags machlite logs, and the one event reader.

Everything that reads event files (runs read back in :mod:`machlite.runs.records`, the
benchmarks, the tests) goes through :func:`load_events`, which is tensorboard's own
``EventAccumulator``, so what machlite reads is what TensorBoard shows.
"""

from pathlib import Path
from typing import Any

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
#: The fraction of the Linear and Conv2d weights that are zero (``model.pruning``; 0 else).
MODEL_SPARSITY = "model.sparsity"
#: The network's cost as a sweep summary or a search objective names it, and its tag.
COST = {"bits": MODEL_BITS, "bops": MODEL_BOPS, "sparsity": MODEL_SPARSITY}


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
