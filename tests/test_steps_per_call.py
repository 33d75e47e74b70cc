"""Several optimizer steps per Lightning call give exactly the one-step-per-call results."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import CONFIGS
from .test_cli import run, synthetic


def _fit(jsc_data_dir: Path, k: int, config: str) -> tuple[dict, list[tuple[int, float]], int]:
    name = f"k{k}_{config.split('.')[0]}"
    args = [
        "fit",
        "--config",
        str(CONFIGS / config),
        *synthetic(jsc_data_dir),
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--data.batch_size",
        "64",
        "--model.steps_per_call",
        str(k),
        "--experiment",
        name,
    ]
    assert run(args) == 0
    run_dir = next(Path(f"runs/{name}_synthetic").glob("version_*"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    curve = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    return ckpt["state_dict"], curve, ckpt["global_step"]


@pytest.mark.parametrize("config", ["jsc_will.yaml", "jsc_tiny.yaml"])
def test_multi_step_calls_match_single_steps(jsc_data_dir: Path, config: str) -> None:
    one_weights, one_curve, one_steps = _fit(jsc_data_dir, 1, config)
    k_weights, k_curve, k_steps = _fit(jsc_data_dir, 5, config)
    assert one_steps == k_steps > 20
    assert [s for s, _ in one_curve] == [s for s, _ in k_curve] == list(range(one_steps))
    assert [v for _, v in one_curve] == pytest.approx([v for _, v in k_curve], abs=1e-6)
    assert one_weights.keys() == k_weights.keys()
    for name, value in one_weights.items():
        assert torch.allclose(value.float(), k_weights[name].float(), atol=1e-6), name
