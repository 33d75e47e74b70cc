"""MNISTMLP through the Verilog flow (issue #25): a leading Flatten, images as flat inputs.

The fast tests run alkaid's C++ model of the design against machlite's fake-quantized
forward, with the formats of configs/quant/mnist_mlp_hw_*.yaml; they skip without alkaid.
The slow one also compiles the Verilog with Verilator and synthesizes it with yosys.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from machlite.errors import ConfigError
from machlite.export import export
from machlite.models import MNISTMLP, MNISTNet
from machlite.quant import QuantConfig, quantize_network
from machlite.quant.config import from_dict

from .conftest import CONFIGS, run

HW_CONFIGS = sorted((CONFIGS / "quant").glob("mnist_mlp_hw_*.yaml"))
C_MODEL_ONLY = {"rtl_sim": False, "synth": False}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def quant_of(config: Path) -> QuantConfig:
    """The ``model.quantization`` block of a whole machlite config."""
    return from_dict(yaml.safe_load(config.read_text())["model"]["quantization"])


def images(n: int = 1000, side: int = 14) -> np.ndarray:
    """Normalised MNIST-like images: random pixels in [0, 1], mostly background."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(size=(n, 1, side, side)) * (rng.uniform(size=(n, 1, side, side)) < 0.3)
    return ((pixels - 0.1307) / 0.3081).astype(np.float32)


def small_mlp(hidden: tuple[int, ...] = (8, 8)) -> nn.Module:
    """A random MNISTMLP on 14x14 images, with BatchNorm statistics of a few batches."""
    torch.manual_seed(0)
    net = MNISTMLP(in_features=196, hidden=hidden).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.from_numpy(images(256)))
    return net.eval()


def test_the_hw_configs_are_the_three_widths() -> None:
    assert [p.name for p in HW_CONFIGS] == [
        "mnist_mlp_hw_w2a2.yaml",
        "mnist_mlp_hw_w4a4.yaml",
        "mnist_mlp_hw_w6a6.yaml",
    ]


@pytest.mark.parametrize("config", HW_CONFIGS, ids=lambda p: p.stem)
def test_the_mlp_design_computes_exactly_what_machlite_does(config: Path, tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    network, x = small_mlp(), images()
    result = export(network, (1, 14, 14), "verilog", tmp_path, x, quant_of(config), C_MODEL_ONLY)
    assert result["samples"] == 1000
    assert result["max_abs_diff"] == 0.0 and result["identical"] == 1.0
    assert result["float32"]["exact_for_every_input"]
    first = yaml.safe_load(config.read_text())["model"]["quantization"]["by_name"]["layers.1"]
    assert result["input_format"] == first["data_in"]  # the design's input: the flat image
    with torch.no_grad():  # and the quantization is real
        quantized = quantize_network(network, quant_of(config))(torch.from_numpy(x))
        assert (network(torch.from_numpy(x)) - quantized).abs().max() > 1e-3


def test_images_need_a_leading_flatten(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    network = nn.Sequential(nn.Linear(14, 10)).eval()  # applied to the last axis of an image
    config = from_dict({"by_type": {"linear": quant_of(HW_CONFIGS[0]).by_name["layers.1"]}})
    with pytest.raises(ConfigError) as err:
        export(network, (1, 14, 14), "verilog", tmp_path, images(10), config, C_MODEL_ONLY)
    message = str(err.value)
    assert "takes networks on vectors, not (1, 14, 14)" in message and "\n" not in message


def test_the_mnist_cnn_is_still_refused_at_its_conv(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")  # without it, export names the hw extra first
    x, config = images(10, side=28), quant_of(CONFIGS / "quant" / "mnist_qat.yaml")
    with pytest.raises(ConfigError) as err:
        export(MNISTNet().eval(), (1, 28, 28), "verilog", tmp_path, x, config)
    message = str(err.value)
    assert "layer layer1.conv (Conv2d) has no fully unrolled RTL in machlite" in message
    assert "\n" not in message


def test_fit_then_export_on_real_mnist(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI path: QAT on the pooled real images, then the design checked on the test split."""
    pytest.importorskip("alkaid")
    config = CONFIGS / "quant" / "mnist_mlp_hw_w2a2.yaml"
    fit = ["fit", "--config", str(config), "--data.data_dir", str(mnist_dir), *QUIET]
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "32"]
    assert run([*fit, *short, "--trainer.limit_val_batches", "1"]) == 0
    ckpt = Path("runs/mnist_mlp_hw_w2a2/version_0/checkpoints/last.ckpt")
    assert ckpt.is_file()
    export_args = ["export", "--ckpt_path", str(ckpt), "--format", "verilog", "--out", "rtl"]
    options = ["--rtl_sim", "false", "--synth", "false", "--samples", "500"]
    assert run([*export_args, *options, "--data.data_dir", str(mnist_dir)]) == 0
    assert "identical outputs 100.00%" in capsys.readouterr().out
    result = json.loads(Path("rtl/export_verilog.json").read_text())
    assert result["samples"] == 500 and result["max_abs_diff"] == 0.0
    assert result["input_format"] == {"width": 2, "frac_width": 1}


needs_yosys = pytest.mark.skipif(
    shutil.which("yosys") is None, reason="yosys is not installed (apt-get install -y yosys)"
)


@pytest.mark.slow
@needs_yosys
def test_rtl_simulation_and_synthesis_of_a_small_mlp(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    from machlite.hw import tools

    try:
        tools.require_verilator()
    except ConfigError as err:
        pytest.skip(str(err))
    config = quant_of(CONFIGS / "quant" / "mnist_mlp_hw_w2a2.yaml")
    options = {"rtl_sim": True, "synth": True, "latency_cutoff": 3.0}
    result = export(small_mlp((4, 4)), (1, 14, 14), "verilog", tmp_path, images(), config, options)
    assert result["identical"] == 1.0  # the C++ model
    assert result["rtl_sim"]["identical"] == 1.0 and result["rtl_sim"]["max_abs_diff"] == 0.0
    assert result["stages"] > 1
    synth = result["synthesis"]
    assert synth["luts"] > 0 and synth["dsps"] == 0  # an adder graph
