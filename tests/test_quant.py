"""Fixed-point quantization (issue #15): the quantizer, the config, the transform, the cost,
``machlite quantize`` (PTQ) and quantization-aware training (``model.quantization``).

Accuracies here are on SYNTHETIC JSC data: they test the pipeline, not the networks.
"""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from machlite.cli import run_lightning
from machlite.errors import ConfigError
from machlite.models import MNISTMLP, JSCTiny, JSCToy, MNISTNet
from machlite.module import Classifier
from machlite.quant import (
    LAYER_TYPES,
    LAYERS,
    FixedPoint,
    LayerQuant,
    QuantConfig,
    dequantize,
    fake_quant,
    from_dict,
    is_quantized,
    layer_formats,
    layer_type,
    load_quant_config,
    network_cost,
    quantize_network,
    quantized_layers,
)
from machlite.quant.layers import QuantBatchNorm1d, QuantConv2d, QuantLinear, QuantReLU

from .conftest import CONFIGS, fit_synthetic, run, synthetic

QUANT_CONFIGS = sorted((CONFIGS / "quant").glob("*.yaml"))
TINY = str(CONFIGS / "jsc_tiny.yaml")
QAT = str(CONFIGS / "quant" / "jsc_tiny_qat.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
#: The classes of JSC-Toy's modules, float.
FLOAT_TOY = (JSCToy, nn.Sequential, nn.BatchNorm1d, nn.ReLU, nn.Linear)


def fmt(width: int, frac: int) -> FixedPoint:
    return FixedPoint(width=width, frac_width=frac)


def hand_quant(x: float, width: int, frac: int) -> float:
    """The definition, in plain Python: round half to even (``round``), then saturate."""
    code = round(x * 2**frac)
    return min(max(code, -(2 ** (width - 1))), 2 ** (width - 1) - 1) / 2**frac


# -- the quantizer -------------------------------------------------------------------------------
@pytest.mark.parametrize("width,frac", [(4, 2), (8, 4), (16, 8), (8, 0), (6, 7), (8, -2)])
def test_fake_quant_is_the_hand_computation(width: int, frac: int) -> None:
    step = 2.0**-frac
    ties = [(k + 0.5) * step for k in range(-6, 6)]  # exactly half-way: to the even code
    big = [2**width * step, -(2**width) * step, 1e6, -1e6]  # saturate
    inside = [0.3 * step, -1.7 * step, 2.49 * step, -2.51 * step, 0.0]
    values = ties + big + inside
    got = fake_quant(torch.tensor(values, dtype=torch.float32), fmt(width, frac)).tolist()
    want = [hand_quant(v, width, frac) for v in values]
    assert got == want
    assert hand_quant(2.5 * step, width, frac) == 2 * step or width < 3  # ties go to even
    assert fake_quant(torch.tensor([1e6]), fmt(width, frac)).item() == (2 ** (width - 1) - 1) * step


def test_fake_quant_of_none_is_the_identity() -> None:
    x = torch.randn(10)
    assert fake_quant(x, None) is x


def test_straight_through_gradient_is_masked_at_the_clamp_bounds() -> None:
    f = fmt(4, 2)  # codes -8..7, values -2.0..1.75, step 0.25
    x = torch.tensor(
        [0.1, -0.6, 1.75, -2.0, 1.8, 1.875, 1.9, -2.1, -2.125, -2.2, 5.0, -5.0],
        requires_grad=True,
    )
    fake_quant(x, f).mul(torch.arange(1.0, 13.0)).sum().backward()
    # the gradient passes where the rounded code is inside [-8, 7], else it is zero; 1.875 is
    # code 7.5, rounded to 8 (even): outside, so zero, as is -2.125 (-8.5 -> -8: inside)
    codes = [round(v * 4) for v in x.tolist()]
    mask = [1.0 if -8 <= c <= 7 else 0.0 for c in codes]
    assert mask == [1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    assert x.grad.tolist() == [m * k for m, k in zip(mask, range(1, 13), strict=True)]


def test_fixed_point_rejects_bad_widths() -> None:
    for width in (1, 33, 8.5):
        with pytest.raises(ConfigError, match="width"):
            FixedPoint(width=width, frac_width=0)
    assert fmt(8, 4).int_width == 4 and fmt(8, 4).scale == 1 / 16


# -- the config and the transform ----------------------------------------------------------------
def test_config_by_type_and_by_name() -> None:
    config = from_dict(
        {
            "by_type": {
                "linear": {"weight": [8, 4], "data_in": [8, 4]},
                "relu": {"data_in": [6, 3]},
            },
            "by_name": {
                "seq_blocks.5": {"weight": {"width": 4, "frac_width": 2}},
                "seq_blocks.4": {},
            },
        }
    )
    net = JSCToy()
    quant = quantize_network(net, config)
    kinds = {name: type(m) for name, m in quant.named_modules() if name}
    assert kinds["seq_blocks.0"] is nn.BatchNorm1d  # no batchnorm1d entry, default None: float
    assert kinds["seq_blocks.1"] is QuantReLU and quant.seq_blocks[1].quant.data_in == fmt(6, 3)
    assert kinds["seq_blocks.2"] is QuantLinear
    assert quant.seq_blocks[2].quant == LayerQuant(data_in=fmt(8, 4), weight=fmt(8, 4))
    assert kinds["seq_blocks.4"] is nn.ReLU  # named with {}: float
    assert quant.seq_blocks[5].quant == LayerQuant(weight=fmt(4, 2))  # the name's entry, whole
    assert kinds["seq_blocks.8"] is QuantLinear
    # the original is untouched, the copy has the same parameters and state_dict keys
    assert all(type(m) in FLOAT_TOY for m in net.modules())
    assert net.state_dict().keys() == quant.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(value, quant.state_dict()[key])
    # a default covers the supported layers named nowhere else
    with_default = quantize_network(net, QuantConfig(default=LayerQuant(data_in=fmt(8, 4))))
    assert type(with_default.seq_blocks[0]) is QuantBatchNorm1d
    # re-quantizing replaces the formats; an empty config gives the float classes back
    requantized = quantize_network(quant, QuantConfig())
    assert all(type(m) in FLOAT_TOY for m in requantized.modules())
    assert all("quant" not in vars(m) for m in requantized.modules())


@pytest.mark.parametrize(
    "data,match",
    [
        ({"by_type": {"lstm": {}}}, "unknown layer type 'lstm'"),
        ({"by_type": {"linear": {"weights": [8, 4]}}}, "unknown field"),
        ({"by_type": {"linear": {"weight": [8]}}}, "expected"),
        ({"by_type": {"linear": {"weight": [40, 4]}}}, "width must be 2 to 32"),
        ({"by_types": {}}, "unknown key 'by_types'"),
    ],
)
def test_bad_configs_are_one_line_errors(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(data)


def test_a_name_the_network_lacks_is_an_error() -> None:
    with pytest.raises(ConfigError, match="has no module 'seq_blocks.9'"):
        quantize_network(JSCTiny(), {"by_name": {"seq_blocks.9": {"weight": [8, 4]}}})


# -- the quantized-network API: the table and its accessors ---------------------------------------
def test_the_layer_table_is_the_one_list_of_supported_types() -> None:
    assert (
        LAYER_TYPES == tuple(LAYERS) == ("linear", "conv2d", "batchnorm1d", "batchnorm2d", "relu")
    )
    for key, row in LAYERS.items():
        assert row.key == key == row.torch_class.__name__.lower()
        assert (
            issubclass(row.quant_class, row.torch_class) and row.quant_class is not row.torch_class
        )
    assert LAYERS["linear"].quant_class is QuantLinear and LAYERS["relu"].quant_class is QuantReLU
    # a config accepts exactly the table's keys
    from_dict({"by_type": {key: {} for key in LAYERS}})
    with pytest.raises(ConfigError, match="choose from linear, conv2d, batchnorm1d"):
        from_dict({"by_type": {"dropout": {}}})


def test_layer_type_finds_torch_and_quantized_classes_only() -> None:
    class MyLinear(nn.Linear):  # may compute something else: not supported
        pass

    quant = quantize_network(
        nn.Sequential(nn.Linear(2, 2)), {"by_type": {"linear": {"weight": [8, 4]}}}
    )
    assert layer_type(nn.Linear(2, 2)) is LAYERS["linear"]
    assert layer_type(quant[0]) is LAYERS["linear"]
    assert layer_type(nn.Conv2d(1, 1, 1)) is LAYERS["conv2d"]
    assert layer_type(nn.BatchNorm2d(3)) is LAYERS["batchnorm2d"]
    assert layer_type(nn.Dropout()) is None and layer_type(MyLinear(2, 2)) is None
    assert layer_type(nn.Sequential()) is None


def test_is_quantized_and_layer_formats_read_a_network() -> None:
    config = load_quant_config(CONFIGS / "quant" / "mixed_jsc_tiny.yaml")
    net = JSCTiny()
    quant = quantize_network(net, config)
    formats = layer_formats(quant)
    assert formats == quantized_layers(net, config) and formats  # name -> the layer's formats
    assert all(isinstance(spec, LayerQuant) for spec in formats.values())
    assert formats["seq_blocks.2"] == quant.seq_blocks[2].quant
    assert {name for name, m in quant.named_modules() if is_quantized(m)} == set(formats)
    assert not any(is_quantized(m) for m in net.modules()) and layer_formats(net) == {}
    assert not is_quantized(quant) and not is_quantized(nn.Dropout())


def test_dequantize_gives_torch_layers_with_the_same_weights() -> None:
    torch.manual_seed(0)
    net = JSCToy().eval()
    quant = quantize_network(net, load_quant_config(CONFIGS / "quant" / "int4_2.yaml")).eval()
    plain = dequantize(quant)
    assert plain is not quant and all(type(m) in FLOAT_TOY for m in plain.modules())
    assert layer_formats(plain) == {}
    assert all("quant" not in vars(m) for m in plain.modules())
    assert plain.state_dict().keys() == quant.state_dict().keys()
    for key, value in quant.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key])
    x = torch.randn(32, 16) * 3
    assert torch.equal(plain(x), net(x)) and not torch.equal(quant(x), net(x))
    assert layer_formats(quant)  # the quantized network is left as it was
    assert type(dequantize(net).seq_blocks[2]) is nn.Linear  # a float network: an equal copy


def test_quantized_linear_and_relu_compute_the_definition() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 3), nn.ReLU())
    spec = LayerQuant(data_in=fmt(6, 3), weight=fmt(5, 3), bias=fmt(4, 2), data_out=fmt(8, 2))
    quant = quantize_network(net, {"by_type": {"linear": spec, "relu": {"data_out": [3, 1]}}})
    x = torch.randn(4, 6) * 3
    q = lambda t, w, f: t.detach().apply_(lambda v: hand_quant(v, w, f))  # noqa: E731
    xq, wq, bq = q(x.clone(), 6, 3), q(net[0].weight.clone(), 5, 3), q(net[0].bias.clone(), 4, 2)
    lin = q(xq @ wq.T + bq, 8, 2)
    assert torch.equal(quant[0](x), lin)
    assert torch.equal(quant(x), q(torch.relu(lin), 3, 1))


def test_quantized_batchnorm_is_batchnorm_when_float_and_folds_when_quantized() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    qbn = quantize_network(nn.Sequential(bn), {"by_type": {"batchnorm1d": {}}})[0]
    qbn.__class__, qbn.quant = QuantBatchNorm1d, LayerQuant()  # every format float
    for _ in range(3):  # training: the same output and running statistics
        x = torch.randn(16, 5) * 4 + 1
        assert torch.allclose(bn(x), qbn(x), atol=1e-5)
    assert torch.allclose(bn.running_mean, qbn.running_mean)
    assert torch.allclose(bn.running_var, qbn.running_var)
    assert bn.num_batches_tracked == qbn.num_batches_tracked == 3
    bn.eval(), qbn.eval()
    x = torch.randn(8, 5)
    assert torch.allclose(bn(x), qbn(x), atol=1e-5)
    # quantized: x * round(gamma / sqrt(var + eps)) + round(beta - mean * scale), rounded
    qbn.quant = LayerQuant(data_in=fmt(8, 4), weight=fmt(6, 4), bias=fmt(6, 3), data_out=fmt(8, 3))
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    want = fake_quant(
        fake_quant(x, fmt(8, 4)) * fake_quant(scale, fmt(6, 4)) + fake_quant(shift, fmt(6, 3)),
        fmt(8, 3),
    )
    assert torch.equal(qbn(x), want)


def test_quantized_conv_computes_the_definition() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    qconv = quantize_network(
        nn.Sequential(conv), {"by_type": {"conv2d": {"data_in": [8, 4], "weight": [6, 5]}}}
    )[0]
    assert type(qconv) is QuantConv2d
    x = torch.randn(2, 2, 5, 5)
    want = nn.functional.conv2d(
        fake_quant(x, fmt(8, 4)), fake_quant(conv.weight, fmt(6, 5)), conv.bias, padding=1
    )
    assert torch.equal(qconv(x), want)


# -- the cost ------------------------------------------------------------------------------------
def test_cost_of_jsc_tiny_by_hand() -> None:
    config = load_quant_config(CONFIGS / "quant" / "int8_4.yaml")
    cost = network_cost(JSCTiny(), config, (16,))
    layers = {layer.name: layer for layer in cost.layers}
    assert set(layers) == {"seq_blocks.0", "seq_blocks.2"}  # the layers with parameters
    assert layers["seq_blocks.0"].bits == 32 * 32 and layers["seq_blocks.0"].bops == 0  # float BN
    assert layers["seq_blocks.2"].bits == 80 * 8 + 5 * 8
    # m * n * (b_a * b_w + b_a + b_w + log2(n)), n = 16 inputs, m = 5 outputs
    assert layers["seq_blocks.2"].bops == 5 * 16 * (8 * 8 + 8 + 8 + 4)
    assert cost.bits == 1024 + 680 and cost.bops == 6720
    float_cost = network_cost(JSCTiny(), None, (16,))
    assert float_cost.bits == 117 * 32 and float_cost.bops == 80 * (32 * 32 + 64 + 4)
    # a quantized network carries its formats: config None reads them
    assert network_cost(quantize_network(JSCTiny(), config), None, (16,)) == cost


def test_cost_of_a_convolution_counts_every_output_pixel() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    config = {"by_type": {"conv2d": {"data_in": [8, 4], "weight": [4, 2]}}}
    cost = network_cost(net, config, (3, 7, 7))
    conv, linear = cost.layers
    n = 3 * 3 * 3
    assert conv.bops == pytest.approx(9 * 4 * n * (8 * 4 + 8 + 4 + math.log2(n)))  # 3x3 pixels
    assert conv.bits == 4 * n * 4 + 4 * 32  # 4-bit weights, float biases
    assert linear.bops == pytest.approx(2 * 36 * (32 * 32 + 64 + math.log2(36)))


# -- configs/quant -------------------------------------------------------------------------------
def test_configs_quant_exist() -> None:
    names = {p.name for p in QUANT_CONFIGS}
    assert {"int16_8.yaml", "int8_4.yaml", "int4_2.yaml"} <= names
    # a QAT config per network
    qat = {"jsc_tiny_qat.yaml", "jsc_toy_qat.yaml", "jsc_will_qat.yaml", "mnist_qat.yaml"}
    assert qat <= names


@pytest.mark.parametrize("path", QUANT_CONFIGS, ids=lambda p: p.name)
def test_every_quant_config_loads_and_applies(path: Path) -> None:
    config = load_quant_config(path)
    assert config.by_type or config.by_name
    if path.name.startswith("mnist_mlp"):  # MNISTMLP's files name its layers
        quant = quantize_network(MNISTMLP(), config)
        assert quant(torch.randn(4, 1, 14, 14)).shape == (4, 10)
    elif path.name.startswith("mnist"):  # the MNIST CNN's files name its layers
        quant = quantize_network(MNISTNet(), config)
        assert sum(isinstance(m, QuantConv2d) for m in quant.modules()) == 2
        assert quant(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    else:
        quant = quantize_network(JSCTiny(), config)
        assert quant(torch.randn(4, 16)).shape == (4, 5)
    assert any(isinstance(m, QuantLinear) for m in quant.modules())


@pytest.mark.parametrize(
    "path",
    [p for p in QUANT_CONFIGS if "model" in yaml.safe_load(p.read_text())],
    ids=lambda p: p.name,
)
def test_qat_configs_run(path: Path, request: pytest.FixtureRequest) -> None:
    """Every QAT config fits: JSC ones on synthetic data, MNIST on the real MNIST copy."""
    if path.name.startswith("mnist"):
        data = ["--data.data_dir", str(request.getfixturevalue("mnist_dir"))]
    else:
        data = synthetic(request.getfixturevalue("jsc_data_dir"))
    args = ["fit", "--config", str(path), *data, *QUIET, "--trainer.fast_dev_run", "2"]
    assert run(args) == 0


# -- PTQ -----------------------------------------------------------------------------------------
def _fit_float(jsc_data_dir: Path, name: str) -> Path:
    args = [
        "fit",
        "--config",
        TINY,
        *synthetic(jsc_data_dir),
        *QUIET,
        "--trainer.max_epochs",
        "3",
        "--data.batch_size",
        "32",
        "--optimizer.lr",
        "0.01",
        "--model.steps_per_call",
        "8",
        "--experiment",
        name,
    ]
    assert run(args) == 0
    return next(Path(f"runs/{name}_synthetic").glob("version_*")) / "checkpoints" / "last.ckpt"


def test_ptq_changes_accuracy_less_at_16_bits_than_at_4(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _fit_float(jsc_data_dir, "ptq")
    reports = {}
    for bits in ("16_8", "4_2"):
        quant = str(CONFIGS / "quant" / f"int{bits}.yaml")
        args = ["quantize", "--config", TINY, "--quant", quant, "--ckpt_path", str(ckpt)]
        assert run([*args, *synthetic(jsc_data_dir)]) == 0
        out = capsys.readouterr().out
        assert "| model bits |" in out and "| BOPs per sample |" in out and "SYNTHETIC" in out
        assert "| seq_blocks.2 | linear |" in out
        reports[bits] = json.loads((ckpt.parent.parent / "quantize.json").read_text())
        assert (ckpt.parent.parent / "quantize.md").read_text() in out
    for report in reports.values():
        assert report["float"]["val_acc"] > 0.4  # the float network learned (chance is 0.2)
    change = {
        bits: sum(abs(r["quantized"][k] - r["float"][k]) for k in ("val_acc", "test_acc"))
        for bits, r in reports.items()
    }
    loss_change = {
        bits: abs(r["quantized"]["val_loss"] - r["float"]["val_loss"])
        for bits, r in reports.items()
    }
    assert change["16_8"] < change["4_2"]
    assert loss_change["16_8"] < 1e-3 < loss_change["4_2"]
    assert reports["16_8"]["float"] == reports["4_2"]["float"]  # the same float baseline
    assert reports["4_2"]["cost_quantized"]["bits"] < reports["16_8"]["cost_quantized"]["bits"]
    assert reports["16_8"]["cost_quantized"]["bits"] < reports["16_8"]["cost_float"]["bits"]


def test_ptq_evaluates_each_variant_once_and_reads_the_checkpoint_once(
    jsc_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One validation and one test pass per variant (float, quantized), nothing thrown away."""
    torch.manual_seed(0)
    ckpt = Path("run/checkpoints/tiny.ckpt")
    ckpt.parent.mkdir(parents=True)
    model = Classifier(network=JSCTiny(), num_classes=5, input_shape=(16,))
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": "2.0.9"}, ckpt)
    passes: list[str] = []
    for hook in ("on_validation_epoch_end", "on_test_epoch_end"):
        original = getattr(Classifier, hook)

        def counted(self: Classifier, _original: Any = original, _hook: str = hook) -> None:
            passes.append(_hook)
            _original(self)

        monkeypatch.setattr(Classifier, hook, counted)
    reads: list[str] = []
    torch_load = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(str(getattr(f, "name", f)))
        return torch_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    quant = str(CONFIGS / "quant" / "int8_4.yaml")
    args = ["quantize", "--config", TINY, "--quant", quant, "--ckpt_path", str(ckpt)]
    assert run([*args, *synthetic(jsc_data_dir)]) == 0
    assert passes.count("on_validation_epoch_end") == 2  # float, quantized
    assert passes.count("on_test_epoch_end") == 2
    assert [r for r in reads if r.endswith(".ckpt")] == [str(ckpt)]
    report = json.loads(Path("run/quantize.json").read_text())  # the run folder's
    assert set(report["quantized"]) == {"val_acc", "val_loss", "test_acc", "test_loss"}


def test_ptq_errors_are_one_line(jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quant = str(CONFIGS / "quant" / "int8_4.yaml")
    assert run(["quantize", "--config", TINY, "--quant", quant, "--ckpt_path", "nope.ckpt"]) == 2
    assert "machlite: error: --ckpt_path nope.ckpt does not exist" in capsys.readouterr().err
    Path("bad.yaml").write_text("by_type: {lstm: {}}\n")
    assert run(["quantize", "--config", TINY, "--quant", "bad.yaml", "--ckpt_path", "x"]) == 2
    assert "unknown layer type 'lstm'" in capsys.readouterr().err
    assert run(["quantize", "--config", TINY]) == 2
    assert "required" in capsys.readouterr().err


# -- QAT -----------------------------------------------------------------------------------------
def _qat(jsc_data_dir: Path, name: str, *extra: str) -> Path:
    return fit_synthetic(jsc_data_dir, QAT, name, *extra, epochs=2)


def test_qat_multi_step_calls_match_single_steps(jsc_data_dir: Path) -> None:
    one = _qat(jsc_data_dir, "qat_k1", "--model.steps_per_call", "1")
    five = _qat(jsc_data_dir, "qat_k5", "--model.steps_per_call", "5")
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(five / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] > 20
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert a["hyper_parameters"]["quantization"]["by_type"]["linear"]["weight"] == {
        "width": 8,
        "frac_width": 4,
    }


def test_qat_checkpoint_reloads_quantized_and_init_from_loads_float_weights(
    jsc_data_dir: Path,
) -> None:
    float_ckpt = _fit_float(jsc_data_dir, "float_init")
    # lr 0: the QAT run's Linear weights stay near those it started from, the float network's
    run_dir = _qat(
        jsc_data_dir, "qat_init", "--model.init_from", str(float_ckpt), "--optimizer.lr", "0"
    )
    qat_ckpt = run_dir / "checkpoints" / "last.ckpt"
    start = torch.load(float_ckpt, weights_only=True)["state_dict"]
    end = torch.load(qat_ckpt, weights_only=True)["state_dict"]
    # (the cosine schedule's eta_min 1e-6 still moves them a little)
    key = "network.seq_blocks.2.weight"
    assert torch.allclose(start[key], end[key], atol=1e-3)
    # a float config with the QAT checkpoint: its hyperparameters make the network quantized
    args = [
        "test",
        "--config",
        TINY,
        *synthetic(jsc_data_dir),
        *QUIET,
        "--ckpt_path",
        str(qat_ckpt),
    ]
    cli = run_lightning(args)
    assert isinstance(cli.model.network.seq_blocks[2], QuantLinear)
    assert cli.model.network.seq_blocks[2].quant.weight == fmt(8, 4)
    assert isinstance(cli.model, Classifier) and cli.model.quantization is not None


def test_qat_resume_continues_exactly_without_init_from(jsc_data_dir: Path) -> None:
    float_ckpt = _fit_float(jsc_data_dir, "float_resume")
    init = ["--model.init_from", str(float_ckpt), "--model.steps_per_call", "4"]
    reference = _qat(jsc_data_dir, "qat_ref", *init)
    first = _qat(jsc_data_dir, "qat_resumed", *init, "--trainer.max_epochs", "1")
    float_ckpt.unlink()  # a resumed fit must not need init_from: its weights are the checkpoint's
    resumed = _qat(jsc_data_dir, "qat_resumed", *init, "--ckpt_path", "last")
    assert resumed == first
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_init_from_of_another_network_is_a_one_line_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "toy.ckpt"
    state = {f"network.{k}": v for k, v in JSCToy().state_dict().items()}
    torch.save({"state_dict": state}, ckpt)
    model = Classifier(network=JSCTiny(), quantization=load_quant_config(QUANT_CONFIGS[0]))
    with pytest.raises(ConfigError, match=r"model.init_from .*toy.ckpt: its weights do not fit"):
        model.load_network_weights(str(ckpt))
    tiny = {f"network.{k}": v * 0 + 0.5 for k, v in JSCTiny().state_dict().items()}
    torch.save({"state_dict": tiny}, ckpt)
    model.load_network_weights(str(ckpt))  # a float checkpoint into the quantized network
    assert isinstance(model.network.seq_blocks[2], QuantLinear)
    assert torch.all(model.network.seq_blocks[2].weight == 0.5)
