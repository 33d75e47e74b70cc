"""machlite's QONNX read by hls4ml's own QONNX frontend (issue #24): bit-exact with machlite.

hls4ml reads QONNX after qonnx's cleanup transforms (``hls4ml_from_qonnx``). Two things in
machlite's QONNX make that exact: the graph's output is its last node's own (a trailing
``Identity`` gave hls4ml a C++ model without an output), and each bias is the value machlite
adds, behind a ``Quant`` at the accumulator's scale (Brevitas's convention). The round trips
compile C++ (g++, about 5 to 10 s each) and are marked slow.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from machlite.agreement import compare
from machlite.models import JSCTiny, JSCToy
from machlite.quant import FixedPoint, LayerQuant, load_quant_config, quantize_network
from machlite.runs.load import split_inputs

from .conftest import CONFIGS
from .test_export import trained_like

#: (8, 4) everywhere, the BatchNorms included (input, folded scale and shift, output): their
#: shifts, too, sit at the accumulator's scale
ALL_INT8 = """
by_type:
  linear: {data_in: &q {width: 8, frac_width: 4}, weight: *q, bias: *q}
  batchnorm1d: {data_in: *q, weight: *q, bias: *q, data_out: *q}
  relu: {data_in: *q}
"""


def _quantized(net: type, quant: str) -> nn.Module:
    path = CONFIGS / "quant" / quant
    if quant == "all_int8":
        path = Path("all_int8.yaml")  # in the test's tmp_path (conftest's chdir)
        path.write_text(ALL_INT8)
    return quantize_network(trained_like(net(), (16,)), load_quant_config(path))


def _test_split(jsc_data_dir: Path) -> np.ndarray:
    from machlite.datasets import JSCDataModule

    data = JSCDataModule(data_dir=str(jsc_data_dir), source="synthetic", synthetic_jets=3000)
    return split_inputs(data)


def test_qonnx_output_is_the_last_node_and_biases_sit_at_the_accumulator_scale() -> None:
    onnx = pytest.importorskip("onnx")
    from machlite.export.to_qonnx import qonnx_model

    network = _quantized(JSCTiny, "int8_4.yaml")
    model = qonnx_model(network, (16,))
    onnx.checker.check_model(model)
    assert "Identity" not in [n.op_type for n in model.graph.node]
    assert list(model.graph.node[-1].output) == ["y"]  # the last ReLU's own output
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    (add,) = [n for n in model.graph.node if n.op_type == "Add" and n.input[1] not in inits]
    (bias_quant,) = [n for n in model.graph.node if n.output[0] == add.input[1]]
    value, scale, zeropt, bits = (inits[name] for name in bias_quant.input)
    # (8, 4) input x (8, 4) weight: the accumulator's step is 2^-8; the (8, 4) bias, exact
    # there, needs 8 + 4 = 12 bits
    assert (float(scale), float(zeropt), float(bits)) == (2.0**-8, 0.0, 12.0)
    linear = network.seq_blocks[2]
    want = torch.fake_quantize_per_tensor_affine(linear.bias.detach(), 1 / 16, 0, -128, 127)
    np.testing.assert_array_equal(value, want.numpy())  # the value machlite adds


def test_a_bias_finer_than_the_accumulator_is_one_line() -> None:
    pytest.importorskip("onnx")
    from machlite.errors import ConfigError
    from machlite.export.to_qonnx import accumulator_format

    fine = LayerQuant(FixedPoint(8, 2), FixedPoint(8, 2), FixedPoint(8, 6))
    with pytest.raises(ConfigError, match=r"seq_blocks\.2's bias format \(8,6\) is finer") as err:
        accumulator_format("seq_blocks.2", fine)
    assert "\n" not in str(err.value) and "frac_width to at most 4" in str(err.value)
    coarse = LayerQuant(FixedPoint(8, 2), FixedPoint(8, 2), FixedPoint(6, 1))
    assert accumulator_format("fc", coarse) == FixedPoint(9, 4)  # 6 + 4 - 1 bits
    assert accumulator_format("fc", LayerQuant(None, FixedPoint(8, 2), FixedPoint(8, 2))) is None


def _round_trip(network: nn.Module, x: np.ndarray, out: Path) -> dict[str, float]:
    from machlite.export.to_hls4ml import hls4ml_from_qonnx, run_hls4ml
    from machlite.export.to_qonnx import qonnx_model

    hls_model = hls4ml_from_qonnx(qonnx_model(network, (16,)), out)
    with torch.no_grad():
        want = network(torch.from_numpy(x)).numpy()
    return compare(run_hls4ml(hls_model, x), want)


@pytest.mark.slow
@pytest.mark.parametrize(
    "net,quant",
    [
        (JSCTiny, "int8_4.yaml"),
        (JSCTiny, "int16_8.yaml"),
        (JSCToy, "int8_4.yaml"),
        (JSCToy, "all_int8"),
    ],
    ids=["jsc_tiny_int8", "jsc_tiny_int16", "jsc_toy_int8", "jsc_toy_int8_batchnorm"],
)
def test_hls4ml_qonnx_frontend_computes_exactly_what_machlite_does(
    net: type, quant: str, jsc_data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("hls4ml")
    pytest.importorskip("qonnx")
    x = _test_split(jsc_data_dir)
    result = _round_trip(_quantized(net, quant), x, tmp_path / "hls")
    assert result["samples"] == len(x) > 100
    assert result["max_abs_diff"] == 0.0 and result["identical"] == 1.0
    assert result["class_agreement"] == 1.0


@pytest.mark.slow
def test_the_round_trip_check_can_fail(
    jsc_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the old convention (each bias as a float initializer behind a Quant at its own format):
    # hls4ml cannot move that Quant through the Add and adds the float bias
    pytest.importorskip("hls4ml")
    pytest.importorskip("qonnx")
    import machlite.export.to_qonnx as to_qonnx

    monkeypatch.setattr(to_qonnx, "accumulator_format", lambda layer, q: None)
    x = _test_split(jsc_data_dir)
    result = _round_trip(_quantized(JSCToy, "int8_4.yaml"), x, tmp_path / "hls")
    assert result["max_abs_diff"] > 0 and result["identical"] < 0.9
