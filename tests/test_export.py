"""``machlite export`` (issue #15): ONNX, QONNX and hls4ml agree with machlite.

The export tests need the ``hw`` extra (``pip install -e '.[hw]'``) and skip without it;
the hls4ml ones compile C++ (g++, about 30 s each) and are marked slow.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from machlite.agreement import compare
from machlite.errors import ConfigError, MachliteError
from machlite.export import export
from machlite.models import JSCToy, MNISTNet
from machlite.quant import load_quant_config, quantize_network

from .conftest import CONFIGS, run, synthetic

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
INT8 = CONFIGS / "quant" / "int8_4.yaml"


def trained_like(net: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``net`` with BatchNorm statistics that are not the initial ones (a few training passes)."""
    torch.manual_seed(0)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(64, *shape) * 2 + 0.5)
    return net.eval()


@pytest.mark.parametrize("fmt", ["onnx", "qonnx", "hls4ml"])
def test_missing_extra_is_one_line(
    fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("onnx", "onnxruntime", "qonnx", "hls4ml"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    assert run(["export", "--ckpt_path", "x.ckpt", "--format", fmt, "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"machlite: error: machlite export --format {fmt} needs ")
    assert "pip install -e '.[hw]'" in err[0]


def test_compare_counts_agreement() -> None:
    got = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.1]])
    want = np.array([[1.0, 0.5], [1.0, 0.0], [0.2, 0.1]])
    result = compare(got, want)
    assert result == {
        "samples": 3,
        "max_abs_diff": 1.0,
        "class_agreement": pytest.approx(2 / 3),
        "identical": pytest.approx(1 / 3),
    }


def test_onnx_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    net = trained_like(JSCToy(), (16,))
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    result = export(net, (16,), "onnx", tmp_path, x)
    assert Path(result["file"]).is_file()
    assert result["max_abs_diff"] < 1e-5 and result["class_agreement"] == 1.0


@pytest.mark.parametrize(
    "net,shape,quant",
    [
        (JSCToy, (16,), "int8_4.yaml"),
        (JSCToy, (16,), "int4_2.yaml"),
        (MNISTNet, (1, 28, 28), "int8_4.yaml"),
    ],
    ids=["jsc_toy_int8", "jsc_toy_int4", "mnist_int8"],
)
def test_qonnx_computes_exactly_what_machlite_does(
    net: type, shape: tuple[int, ...], quant: str, tmp_path: Path
) -> None:
    pytest.importorskip("qonnx")
    network = trained_like(net(), shape)
    x = np.random.default_rng(0).normal(size=(40, *shape)).astype(np.float32) * 2
    config = load_quant_config(CONFIGS / "quant" / quant)
    result = export(network, shape, "qonnx", tmp_path, x, config)
    assert result["max_abs_diff"] == 0.0 and result["class_agreement"] == 1.0
    # and the quantization is real: the float network's output differs
    with torch.no_grad():
        float_out = network(torch.from_numpy(x)).numpy()
        quant_out = quantize_network(network, config)(torch.from_numpy(x)).numpy()
    assert np.abs(float_out - quant_out).max() > 1e-3


def test_qonnx_quant_nodes_carry_the_formats(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("qonnx")
    from machlite.export.to_qonnx import QONNX_DOMAIN, qonnx_model

    network = quantize_network(trained_like(JSCToy(), (16,)), load_quant_config(INT8))
    model = qonnx_model(network, (16,))
    onnx.checker.check_model(model)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    quants = [n for n in model.graph.node if n.op_type == "Quant"]
    assert len(quants) == 3 * 3 + 4  # 3 Linear x (input, weight, bias), 4 ReLU inputs
    formats = []
    for node in quants:
        assert node.domain == QONNX_DOMAIN
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"signed": 1, "narrow": 0, "rounding_mode": b"ROUND"}
        formats.append(tuple(float(inits[name]) for name in node.input[1:]))
    # the biases at the accumulator's scale, (8, 4) x (8, 4): 2^-8, 12 bits (Brevitas's way)
    assert sorted(formats) == [(1 / 256, 0.0, 12.0)] * 3 + [(1 / 16, 0.0, 8.0)] * 10


def test_hls4ml_config_maps_the_formats() -> None:
    pytest.importorskip("hls4ml")
    from machlite.export.to_hls4ml import ACCUM, WIDE, ap_fixed, hls_config

    config = load_quant_config(CONFIGS / "quant" / "mixed_jsc_tiny.yaml")
    layers = hls_config(quantize_network(JSCTinyNet(), config), (16,))["LayerName"]
    a8 = "ap_fixed<8,4,AP_RND_CONV,AP_SAT>"
    assert ap_fixed(None) == WIDE
    assert layers["x"]["Precision"]["result"] == WIDE  # BatchNorm1d first, float
    assert layers["seq_blocks_0"]["Precision"]["result"] == a8  # read by the ReLU at (8, 4)
    assert layers["seq_blocks_1"]["Precision"]["result"] == a8  # read by the Linear at (8, 4)
    dense = layers["seq_blocks_2"]["Precision"]
    assert dense["weight"] == "ap_fixed<4,2,AP_RND_CONV,AP_SAT>" and dense["bias"] == a8
    assert dense["accum"] == ACCUM and dense["result"] == WIDE  # the last ReLU is float
    assert layers["seq_blocks_3"]["Precision"]["result"] == WIDE


def JSCTinyNet() -> nn.Module:  # noqa: N802 (a network factory)
    from machlite.models import JSCTiny

    return trained_like(JSCTiny(), (16,))


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int8_4.yaml", "int16_8.yaml"])
def test_hls4ml_predicts_what_machlite_computes(quant: str, tmp_path: Path) -> None:
    pytest.importorskip("hls4ml")
    network = trained_like(JSCToy(), (16,))
    x = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32) * 2
    result = export(
        network, (16,), "hls4ml", tmp_path / "hls", x, load_quant_config(CONFIGS / "quant" / quant)
    )
    assert (tmp_path / "hls" / "firmware").is_dir()
    # the float BatchNorms are ap_fixed<48,16> in hls4ml, not float32: a value at a rounding
    # boundary of the next format may round the other way, one step (2^-frac) apart
    frac = load_quant_config(CONFIGS / "quant" / quant).by_type["linear"].data_in.frac_width
    assert result["max_abs_diff"] <= 2.0**-frac
    assert result["class_agreement"] >= 0.99 and result["identical"] >= 0.99


def _float_run(jsc_data_dir: Path) -> Path:
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir), *QUIET]
    assert run([*args, "--trainer.max_epochs", "1", "--experiment", "exp"]) == 0
    return next(Path("runs/exp_synthetic").glob("version_*")) / "checkpoints" / "last.ckpt"


def test_export_command_onnx_and_qonnx(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("qonnx")
    ckpt = _float_run(jsc_data_dir)
    base = ["export", "--ckpt_path", str(ckpt), "--out", "out", *synthetic(jsc_data_dir)]
    assert run([*base, "--format", "onnx"]) == 0  # the config: the run's config.yaml
    assert "onnx written to out/model.onnx; against PyTorch (float)" in capsys.readouterr().out
    onnx_result = json.loads(Path("out/export_onnx.json").read_text())
    assert onnx_result["max_abs_diff"] < 1e-5 and onnx_result["samples"] > 100
    assert run([*base, "--format", "qonnx"]) == 2  # a float checkpoint needs --quant
    assert "no --quant file was given" in capsys.readouterr().err
    assert run([*base, "--format", "qonnx", "--quant", str(INT8), "--samples", "50"]) == 0
    result = json.loads(Path("out/export_qonnx.json").read_text())
    assert result["samples"] == 50 and result["max_abs_diff"] == 0.0
    assert result["class_agreement"] == 1.0


@pytest.mark.slow
def test_export_command_hls4ml(jsc_data_dir: Path) -> None:
    pytest.importorskip("hls4ml")
    ckpt = _float_run(jsc_data_dir)
    args = ["export", "--ckpt_path", str(ckpt), "--out", "hls", "--format", "hls4ml"]
    assert run([*args, "--quant", str(INT8), *synthetic(jsc_data_dir)]) == 0
    result = json.loads(Path("hls/export_hls4ml.json").read_text())
    assert result["class_agreement"] >= 0.99 and result["identical"] >= 0.99
    assert result["max_abs_diff"] <= 2.0**-4  # one step of (8, 4) at most


class _Cumsum(nn.Module):
    """A Linear, then a call hls4ml's PyTorch frontend has no handler for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), dim=1)


def test_a_network_hls4ml_cannot_convert_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("hls4ml")
    from machlite.errors import MachliteError
    from machlite.export.to_hls4ml import build_hls4ml

    network = quantize_network(_Cumsum(), load_quant_config(INT8))
    with pytest.raises(MachliteError, match=r"^hls4ml \S+ cannot convert _Cumsum \(") as err:
        build_hls4ml(network, (16,), tmp_path / "hls")
    assert "\n" not in str(err.value) and "qonnx formats still work" in str(err.value)
    assert not list(tmp_path.glob("hls/firmware/*.cpp"))  # nothing compiled


def test_hls4ml_config_rounds_before_a_flatten() -> None:
    # hls4ml passes values through the MNIST CNN's flatten unrounded, so the layer before it
    # must round to what the Linear after it reads (layer3's data_in, (8, 3))
    pytest.importorskip("hls4ml")
    from machlite.export.to_hls4ml import hls_config
    from machlite.models import MNISTNet

    config = load_quant_config(CONFIGS / "quant" / "mnist_int8.yaml")
    layers = hls_config(quantize_network(MNISTNet(), config), (1, 28, 28))["LayerName"]
    assert layers["layer2_relu"]["Precision"]["result"] == "ap_fixed<8,5,AP_RND_CONV,AP_SAT>"
    assert layers["layer1_relu"]["Precision"]["result"] == "ap_fixed<8,4,AP_RND_CONV,AP_SAT>"
    assert layers["x"]["Precision"]["result"] == "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"


def test_out_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    (tmp_path / "out.txt").write_text("a file")
    args = ["export", "--ckpt_path", "x.ckpt", "--format", "onnx", "--out", "out.txt"]
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: --out out.txt is a file") and "give a new" in err[0]
    assert (tmp_path / "out.txt").read_text() == "a file"
    with pytest.raises(ConfigError, match="is a file"):  # the library call says the same
        export(JSCToy(), (16,), "onnx", tmp_path / "out.txt", np.zeros((2, 16), np.float32))


def test_no_cpp_compiler_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("hls4ml")
    from machlite.export.to_hls4ml import build_hls4ml

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no g++ on it
    args = ["export", "--ckpt_path", "x.ckpt", "--format", "hls4ml", "--out", "hls"]
    assert run(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: hls4ml's compile needs the C++ compiler g++")
    assert "apt-get install g++" in err[0]
    assert not Path("hls").exists()  # stopped before any work
    network = quantize_network(trained_like(JSCToy(), (16,)), load_quant_config(INT8))
    with pytest.raises(MachliteError, match="not on PATH"):
        build_hls4ml(network, (16,), tmp_path / "lib")


@pytest.mark.slow
def test_a_failed_compile_is_one_line_and_leaves_no_marker(
    jsc_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # export_hls4ml.json is written last: a stale one goes first, so a folder whose compile
    # failed half way does not look like a finished export
    pytest.importorskip("hls4ml")
    ckpt = _float_run(jsc_data_dir)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "g++").write_text("#!/bin/sh\necho 'g++: fatal error: no space left' >&2\nexit 1\n")
    (fake / "g++").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    Path("hls").mkdir()
    Path("hls/export_hls4ml.json").write_text("{}")  # a finished export from before
    args = ["export", "--ckpt_path", str(ckpt), "--out", "hls", "--format", "hls4ml"]
    capsys.readouterr()
    assert run([*args, "--quant", str(INT8), "--samples", "20", *synthetic(jsc_data_dir)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("machlite: error: hls4ml's compile of hls failed (")
    assert "hls/build_lib.log" in err[0]
    assert "no space left" in Path("hls/build_lib.log").read_text()
    assert "no space left" not in captured.out  # g++'s output goes to the log only
    assert not Path("hls/export_hls4ml.json").exists()
