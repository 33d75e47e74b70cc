import pytest
import torch
from torch import nn

from machlite.commands import main
from machlite.models import NETWORKS, JSCTiny, JSCToy, JSCWill, MNISTNet, count_parameters


@pytest.mark.parametrize(
    ("cls", "expected"), [(JSCTiny, 117), (JSCToy, 327), (JSCWill, 3231), (MNISTNet, 225_034)]
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
    ]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert count in line
    assert set(NETWORKS) == {"JSCTiny", "JSCToy", "JSCWill", "MNISTNet"}
