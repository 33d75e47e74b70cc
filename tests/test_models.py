import pytest
import torch
from torch import nn

from machlite.commands import main
from machlite.models import (
    MNISTMLP,
    NETWORKS,
    JSCTiny,
    JSCToy,
    JSCWill,
    MNISTNet,
    count_parameters,
)


@pytest.mark.parametrize(
    ("cls", "expected"),
    [(JSCTiny, 117), (JSCToy, 327), (JSCWill, 3231), (MNISTNet, 225_034), (MNISTMLP, 7818)],
)
def test_parameter_counts(cls: type[nn.Module], expected: int) -> None:
    assert count_parameters(cls()) == expected


def test_jsc_will_layers_in_order() -> None:
    kinds = [type(m).__name__ for m in JSCWill().seq_blocks]
    assert kinds == (
        ["BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU"]
        + ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU"]
    )
    assert [type(m).__name__ for m in JSCTiny().seq_blocks] == [
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "ReLU",
    ]


def test_jsc_output_shape() -> None:
    for cls in (JSCTiny, JSCToy, JSCWill):
        assert cls().eval()(torch.randn(4, 16)).shape == (4, 5)


def test_mnist_logits_by_default_and_softmax_option() -> None:
    x = torch.randn(3, 1, 28, 28)
    logits = MNISTNet().eval()(x)
    probs = MNISTNet(softmax_output=True).eval()(x)
    assert logits.shape == probs.shape == (3, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))
    assert not torch.allclose(logits.sum(dim=1), torch.ones(3))


def test_models_command_lists_counts(capsys: pytest.CaptureFixture[str]) -> None:
    main(["models"])
    out = capsys.readouterr().out
    for name, count in [
        ("JSCTiny", "117"),
        ("JSCToy", "327"),
        ("JSCWill", "3,231"),
        ("MNISTNet", "225,034"),
        ("MNISTMLP", "7,818"),
    ]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert count in line
    assert set(NETWORKS) == {"JSCTiny", "JSCToy", "JSCWill", "MNISTNet", "MNISTMLP"}


def test_mnist_mlp_layers_and_shapes() -> None:
    net = MNISTMLP()  # 14x14 inputs: Flatten, 196-32-32-10
    kinds = [type(m).__name__ for m in net.layers]
    assert kinds == ["Flatten"] + ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert net.eval()(torch.randn(4, 1, 14, 14)).shape == (4, 10)
    tfc = MNISTMLP(in_features=784, hidden=(64, 64, 64), dropout=0.2)  # FINN's TFC widths
    assert count_parameters(tfc) == 784 * 64 + 2 * 64 * 64 + 64 * 10 + 3 * (64 + 128) + 10
    assert sum(isinstance(m, nn.Dropout) for m in tfc.layers) == 3
    assert tfc.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="hidden width"):
        MNISTMLP(hidden=(32, 0))
