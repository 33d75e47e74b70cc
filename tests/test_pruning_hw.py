"""Pruned networks in the exports and the hardware (issue #25): QONNX and hls4ml keep exactly
the zeros and compute what machlite does; alkaid drops zero weights, so the RTL costs less.

They need the ``hw`` extra and skip without it; the hls4ml one compiles C++ and the yosys one
synthesizes, both marked slow.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from machlite.export import export
from machlite.models import JSCToy
from machlite.quant import load_quant_config, quantize_network
from machlite.sparsity import PruneConfig, is_pruned, prune_to, sparsity_of

from .conftest import CONFIGS, run, synthetic

INT8 = CONFIGS / "quant" / "int8_4.yaml"
HW8 = CONFIGS / "quant" / "hw_int8_4.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def pruned_toy(quant: Path, sparsity: float) -> nn.Module:
    """JSC-Toy with BatchNorm statistics that are not the initial ones, quantized by
    ``quant``, its Linear weights pruned to ``sparsity`` in each layer."""
    torch.manual_seed(0)
    net = JSCToy().train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(64, 16) * 2 + 0.5)
    net = quantize_network(net, load_quant_config(quant))
    prune_to(net, PruneConfig(sparsity, scope="layer"), sparsity)
    return net.eval()


def inputs(n: int) -> np.ndarray:
    return (np.random.default_rng(0).normal(size=(n, 16)) * 2).astype(np.float32)


def test_qonnx_keeps_exactly_the_zeros_and_computes_what_machlite_does(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("qonnx")
    network = pruned_toy(INT8, 0.75)
    masks = {n: m.weight_mask for n, m in network.named_modules() if is_pruned(m)}
    result = export(network, (16,), "qonnx", tmp_path, inputs(200))
    assert result["max_abs_diff"] == 0.0 and result["identical"] == 1.0
    assert is_pruned(network.seq_blocks[2])  # the export used a copy: the masks are kept
    model = onnx.load(result["file"])
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) == 2]
    assert sorted(w.size for w in weights) == sorted(m.numel() for m in masks.values())
    for mask in masks.values():  # each weight matrix, as stored (possibly transposed)
        match = [w for w in weights if w.size == mask.numel()]
        assert any(
            np.array_equal(w == 0, (mask == 0).numpy())
            or np.array_equal(w.T == 0, (mask == 0).numpy())
            for w in match
        )


def test_a_pruned_checkpoint_exports_through_the_command(jsc_data_dir: Path) -> None:
    """load_run gives export the checkpoint's zeros as plain weights."""
    pytest.importorskip("qonnx")
    config = str(CONFIGS / "prune" / "jsc_toy_qat_pruned.yaml")
    args = ["fit", "--config", config, *synthetic(jsc_data_dir), *QUIET]
    extra = ["--trainer.max_epochs", "1", "--model.pruning.end_epoch", "0"]
    assert run([*args, *extra, "--experiment", "pq"]) == 0
    ckpt = next(Path("runs/pq_synthetic").glob("version_*")) / "checkpoints" / "last.ckpt"
    base = ["export", "--ckpt_path", str(ckpt), "--out", "out", *synthetic(jsc_data_dir)]
    assert run([*base, "--format", "qonnx", "--samples", "100"]) == 0
    result = json.loads(Path("out/export_qonnx.json").read_text())
    assert result["max_abs_diff"] == 0.0 and result["identical"] == 1.0

    from machlite.runs.load import load_run

    loaded = load_run(ckpt.parent.parent / "config.yaml", ckpt, synthetic(jsc_data_dir))
    assert not any(is_pruned(m) for m in loaded.model.network.modules())
    assert sparsity_of(loaded.model.network) == pytest.approx(0.75, abs=0.01)


def test_alkaid_drops_the_zero_weights(tmp_path: Path) -> None:
    """JSC-Toy at hw_int8_4: alkaid's own cost estimate of the design at 75% zeros is well
    below the unpruned one's; at 50% (no output left without weights) the pruned design
    computes exactly what machlite does."""
    pytest.importorskip("alkaid")
    options = {"rtl_sim": False, "synth": False}
    x = inputs(500)
    dense = export(pruned_toy(HW8, 0.0), (16,), "verilog", tmp_path / "dense", x, None, options)
    half = export(pruned_toy(HW8, 0.5), (16,), "verilog", tmp_path / "half", x, None, options)
    sparse = export(pruned_toy(HW8, 0.75), (16,), "verilog", tmp_path / "sparse", x, None, options)
    for result in (dense, half):
        assert result["max_abs_diff"] == 0.0 and result["identical"] == 1.0
    costs = [r["alkaid_estimate"]["cost"] for r in (dense, half, sparse)]
    assert costs[2] < costs[1] < costs[0] and costs[2] < 0.6 * costs[0], costs


def test_a_design_with_an_output_that_no_weight_reaches_is_exact(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    network = pruned_toy(HW8, 0.75)  # seq_blocks.5 and .8 each have an all-zero row
    rows = [int((m.weight_mask.sum(1) == 0).sum()) for m in network.modules() if is_pruned(m)]
    assert rows[1] > 0
    options = {"rtl_sim": False, "synth": False}
    result = export(network, (16,), "verilog", tmp_path, inputs(500), None, options)
    assert result["max_abs_diff"] == 0.0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys is not installed")
def test_yosys_counts_fewer_luts_at_75_percent_zeros(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    options = {"rtl_sim": False, "synth": True}
    x = inputs(200)
    dense = export(pruned_toy(HW8, 0.0), (16,), "verilog", tmp_path / "dense", x, None, options)
    sparse = export(pruned_toy(HW8, 0.75), (16,), "verilog", tmp_path / "sparse", x, None, options)
    luts = [r["synthesis"]["luts"] for r in (dense, sparse)]
    assert luts[1] < 0.6 * luts[0], luts


@pytest.mark.slow
def test_hls4ml_computes_what_machlite_does_on_a_pruned_network(tmp_path: Path) -> None:
    pytest.importorskip("hls4ml")
    network = pruned_toy(INT8, 0.5)
    result = export(network, (16,), "hls4ml", tmp_path / "hls", inputs(300))
    # float BatchNorms are ap_fixed<48,16> in hls4ml: one step of (8, 4) at most
    assert result["max_abs_diff"] <= 2.0**-4
    assert result["class_agreement"] >= 0.99 and result["identical"] >= 0.99
