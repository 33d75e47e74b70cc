"""Magnitude pruning (issue #25): the config, torch's pruning, the schedule, the costs, and
``model.pruning`` in a fit (checkpoints, resume, QAT, one-line errors).

Accuracies here are on SYNTHETIC JSC data: they test the pipeline, not the networks.
"""

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from machlite.callbacks.summary import format_summary
from machlite.cli import run_lightning
from machlite.errors import ConfigError
from machlite.events import MODEL_BITS, MODEL_BOPS, MODEL_SPARSITY, load_events, session_hparams
from machlite.models import JSCTiny, JSCToy
from machlite.module import Classifier
from machlite.quant import load_quant_config, network_cost, quantize_network
from machlite.quant.layers import QuantLinear
from machlite.sparsity import (
    PruneConfig,
    adapt_state_dict,
    attach,
    is_pruned,
    layer_sparsity,
    load_prune_config,
    make_permanent,
    prune_config,
    prune_to,
    sparsity_of,
    weight_of,
)

from .conftest import CONFIGS, fit_synthetic, run, synthetic

PRUNE_FILES = sorted((CONFIGS / "prune").glob("*.yaml"))
#: The block files of configs/prune/ (used as ``--model.pruning FILE``).
BLOCKS = [p for p in PRUNE_FILES if "model" not in yaml.safe_load(p.read_text())]
TOY = str(CONFIGS / "jsc_toy.yaml")
INT8 = CONFIGS / "quant" / "int8_4.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


# -- the config and the schedule ------------------------------------------------------------------
@pytest.mark.parametrize(
    "data,match",
    [
        ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\).*got 1.0"),
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"sparsity": "half"}, r"sparsity must be a number"),
        ({"scope": "global"}, r"sparsity is required"),
        ({"sparsity": 0.5, "amount": 3}, r"unknown key 'amount'"),
        ({"sparsity": 0.5, "scope": "row"}, r"scope must be global or layer"),
        ({"sparsity": 0.5, "layers": []}, r"names no layer"),
        ({"sparsity": 0.5, "start_epoch": 3, "end_epoch": 1}, r"start_epoch <= end_epoch"),
        ([0.5], r"expected a mapping"),
    ],
)
def test_bad_configs_are_one_line_errors(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        prune_config(data)
    assert "\n" not in str(err.value)


def test_layers_naming_nothing_prunable_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"'conv9' is neither a layer type") as err:
        attach(JSCToy(), PruneConfig(0.5, layers=["conv9"]))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'seq_blocks.0' is a BatchNorm1d"):
        attach(JSCToy(), PruneConfig(0.5, layers=["seq_blocks.0"]))
    with pytest.raises(ConfigError, match=r"names no layer of JSCToy"):
        attach(JSCToy(), PruneConfig(0.5, layers=["conv2d"]))


def test_schedule_is_the_cubic_ramp() -> None:
    once = PruneConfig(0.5)
    assert [once.target_at(e) for e in range(3)] == [0.5, 0.5, 0.5]
    later = PruneConfig(0.5, start_epoch=2, end_epoch=2)
    assert [later.target_at(e) for e in range(4)] == [0.0, 0.0, 0.5, 0.5]
    ramp = PruneConfig(0.8, start_epoch=1, end_epoch=5)
    want = [0.0, 0.0] + [0.8 * (1 - (1 - t / 4) ** 3) for t in (1, 2, 3)] + [0.8, 0.8]
    assert [ramp.target_at(e) for e in range(7)] == pytest.approx(want)


def test_every_block_file_loads(tmp_path: Path) -> None:
    assert {"jsc_toy_50.yaml", "jsc_toy_75.yaml"} <= {p.name for p in BLOCKS}
    for path in PRUNE_FILES:
        assert 0 < load_prune_config(path).sparsity < 1
    with pytest.raises(ConfigError, match="does not exist"):
        load_prune_config(tmp_path / "none.yaml")


# -- torch's pruning ------------------------------------------------------------------------------
def test_layer_scope_prunes_the_smallest_weights_of_each_layer() -> None:
    net = JSCToy()
    config = PruneConfig(0.75, scope="layer")
    before = {name: m.weight.detach().clone() for name, m in net.named_modules() if is_linear(m)}
    prune_to(net, config, 0.75)
    for name, module in net.named_modules():
        if not is_linear(module):
            continue
        assert is_pruned(module)
        w, mask = before[name], module.weight_mask
        assert int((mask == 0).sum()) == round(0.75 * w.numel())
        # every pruned weight is no larger than every kept one
        assert w[mask == 0].abs().max() <= w[mask == 1].abs().min()
        assert torch.equal(module.weight, w * mask)  # torch set the masked weight at once
    assert all(s == pytest.approx(0.75, abs=0.01) for s in layer_sparsity(net).values())


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def test_global_scope_ranks_all_layers_together_and_pruning_is_idempotent() -> None:
    net = JSCToy()
    weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if is_linear(m)])
    config = PruneConfig(0.5)
    prune_to(net, config, 0.5)
    assert sparsity_of(net) == round(0.5 * weights.numel()) / weights.numel()
    threshold = weights.abs().sort().values[round(0.5 * weights.numel()) - 1]
    for module in net.modules():
        if is_linear(module):
            kept = module.weight_orig[module.weight_mask == 1]
            assert kept.abs().min() >= threshold
    masks = [m.weight_mask.clone() for m in net.modules() if is_linear(m)]
    prune_to(net, config, 0.5)  # a resumed fit prunes again at its epoch's start: no change
    assert all(torch.equal(a, m.weight_mask) for a, m in zip(masks, _linears(net), strict=True))


def _linears(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if is_linear(m)]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruning_ranks_the_current_weights_not_the_last_forwards(scope: str) -> None:
    """After an optimizer step, ``module.weight`` still holds the last forward's weights;
    the ranking must use ``weight_orig``, the current ones."""
    net = JSCToy()
    config = PruneConfig(0.8, scope=scope, end_epoch=3)
    prune_to(net, config, config.target_at(1))  # attached; module.weight set from weight_orig
    with torch.no_grad():  # a step moves weight_orig; no forward runs before the next prune
        for m in _linears(net):
            m.weight_orig.copy_(torch.randn_like(m.weight_orig) * m.weight_mask)
    prune_to(net, config, config.target_at(3))
    for m in _linears(net):
        w, mask = m.weight_orig.detach(), m.weight_mask
        if scope == "layer":
            assert w[mask == 0].abs().max() <= w[mask == 1].abs().min()
    kept = torch.cat([m.weight_orig[m.weight_mask == 1].abs() for m in _linears(net)])
    newly = torch.cat(
        [m.weight_orig[(m.weight_mask == 0) & (m.weight_orig != 0)].abs() for m in _linears(net)]
    )
    if scope == "global":
        assert newly.max() <= kept.min()


def test_a_pruned_weight_stays_pruned_as_the_target_grows() -> None:
    net = JSCToy()
    config = PruneConfig(0.8, scope="layer", end_epoch=3)
    prune_to(net, config, config.target_at(1))
    first = [m.weight_mask.clone() for m in _linears(net)]
    with torch.no_grad():  # training moves the kept weights; the pruned ones stay pruned
        for m in _linears(net):
            m.weight_orig.mul_(torch.rand_like(m.weight_orig))
    prune_to(net, config, config.target_at(3))
    for old, m in zip(first, _linears(net), strict=True):
        assert torch.all(m.weight_mask <= old)
    assert sparsity_of(net) == pytest.approx(0.8, abs=0.01)


def test_a_loaded_checkpoint_is_seen_masked_before_any_forward() -> None:
    """torch's pruning recomputes ``module.weight`` in a forward pre-hook; after a load
    :func:`attach`'s hook does it, so costs, exports and summaries see the loaded zeros."""
    source = JSCToy()
    config = PruneConfig(0.5)
    prune_to(source, config, 0.5)
    target = JSCToy()
    attach(target, config)
    assert target.state_dict().keys() == source.state_dict().keys()
    target.load_state_dict(source.state_dict())
    for a, b in zip(_linears(source), _linears(target), strict=True):
        assert torch.equal(b.weight, weight_of(a)) and torch.equal(b.weight_mask, a.weight_mask)
    assert sparsity_of(target) == sparsity_of(source)


def test_make_permanent_is_a_plain_copy_with_exact_zeros() -> None:
    net = JSCToy()
    prune_to(net, PruneConfig(0.5), 0.5)
    net.train()
    net(torch.randn(8, 16)).sum().backward()  # module.weight now has autograd history
    plain = make_permanent(net)
    assert not any(is_pruned(m) for m in plain.modules())
    assert all(not m._forward_pre_hooks for m in plain.modules())
    assert sparsity_of(plain) == sparsity_of(net) == 0.5
    assert "seq_blocks.2.weight" in plain.state_dict() and is_pruned(net.seq_blocks[2])
    x = torch.randn(16, 16)
    net.eval(), plain.eval()
    assert torch.equal(net(x), plain(x))


def test_weights_move_between_plain_and_pruned_networks() -> None:
    pruned = JSCToy()
    prune_to(pruned, PruneConfig(0.5), 0.5)
    plain = JSCToy()
    plain.load_state_dict(adapt_state_dict(plain, pruned.state_dict()))
    assert sparsity_of(plain) == 0.5
    fresh = JSCToy()
    attach(fresh, PruneConfig(0.5))
    fresh.load_state_dict(adapt_state_dict(fresh, JSCToy().state_dict()))
    assert all(torch.all(m.weight_mask == 1) for m in _linears(fresh))


# -- costs ----------------------------------------------------------------------------------------
def test_cost_counts_the_pruned_fraction_by_hand() -> None:
    """JSC-Tiny's Linear(16, 5) at (8, 4), half its weights zero: f_p = 0.5 in the BOPs,
    and the 40 zero weights store no bits (a fully unrolled design drops them)."""
    net = quantize_network(JSCTiny(), load_quant_config(INT8))
    prune_to(net, PruneConfig(0.5), 0.5)
    linear = {layer.name: layer for layer in network_cost(net, None, (16,)).layers}["seq_blocks.2"]
    assert linear.sparsity == 0.5
    assert linear.bits == 40 * 8 + 5 * 8
    assert linear.bops == pytest.approx(5 * 16 * (0.5 * 8 * 8 + 8 + 8 + math.log2(16)))
    unpruned = network_cost(quantize_network(JSCTiny(), load_quant_config(INT8)), None, (16,))
    assert unpruned.layers[1].bops == 6720 and unpruned.layers[1].sparsity == 0.0


def test_summary_shows_the_zeros_and_the_target() -> None:
    net = JSCToy()
    config = PruneConfig(0.75, scope="layer", end_epoch=4)
    prune_to(net, config, 0.5)
    text = format_summary(net, (16,), config)
    assert "zeros" in text.splitlines()[1]
    row = next(line for line in text.splitlines() if "seq_blocks.2 " in line)
    assert row.split()[-1] == "50.0%"
    assert "sparsity: 50.0% of the Linear and Conv2d weights are zero" in text
    assert "model.pruning: 75.0% (layer) at the start of epoch 4" in text
    assert "zeros" not in format_summary(JSCToy(), (16,))  # unpruned: the table as before


# -- model.pruning in a fit -----------------------------------------------------------------------
def _fit(jsc_data_dir: Path, name: str, *extra: str, config: str = TOY) -> Path:
    return fit_synthetic(jsc_data_dir, config, name, *extra, epochs=3)


def _masks(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith("weight_mask")}


def test_a_pruned_fit_checkpoints_reloads_and_reports_its_sparsity(jsc_data_dir: Path) -> None:
    block = str(CONFIGS / "prune" / "jsc_toy_50.yaml")
    run_dir = _fit(jsc_data_dir, "pruned50", "--model.pruning", block)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["pruning"]["sparsity"] == 0.5
    masks = _masks(ckpt)
    assert len(masks) == 3  # JSC-Toy's three Linear layers
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    assert zeros == round(0.5 * sum(m.numel() for m in masks.values()))
    # HPARAMS: the trained network's cost, its zeros included
    hparams = session_hparams(load_events(run_dir))
    assert hparams[MODEL_SPARSITY] == pytest.approx(0.5, abs=0.01)
    plain = network_cost(JSCToy(), None, (16,))
    assert hparams[MODEL_BITS] < plain.bits and hparams[MODEL_BOPS] < plain.bops
    # a float config with the pruned checkpoint: its hyperparameters make it pruned
    args = ["test", "--config", TOY, *synthetic(jsc_data_dir), *QUIET, "--ckpt_path", str(ckpt)]
    cli = run_lightning(args)
    assert isinstance(cli.model, Classifier) and cli.model.pruning == PruneConfig(
        0.5, layers=["linear"]
    )
    assert sparsity_of(cli.model.network) == pytest.approx(0.5, abs=0.01)


def test_pruned_qat_prunes_the_quantized_layers(jsc_data_dir: Path) -> None:
    path = CONFIGS / "prune" / "jsc_toy_qat_pruned.yaml"
    run_dir = _fit(jsc_data_dir, "pruned_qat", "--model.pruning.end_epoch", "2", config=str(path))
    cli = run_lightning(
        [
            "test",
            "--config",
            str(path),
            *synthetic(jsc_data_dir),
            *QUIET,
            "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt"),
        ]
    )
    linears = [m for m in cli.model.network.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 3 and all(is_pruned(m) for m in linears)
    assert sparsity_of(cli.model.network) == pytest.approx(0.75, abs=0.01)


def test_prune_then_fine_tune_from_a_float_checkpoint(jsc_data_dir: Path) -> None:
    """init_from a float checkpoint, pruned once at the fit's start by its magnitudes."""
    float_dir = _fit(jsc_data_dir, "float_for_prune", "--trainer.max_epochs", "1")
    float_ckpt = float_dir / "checkpoints" / "last.ckpt"
    start = torch.load(float_ckpt, weights_only=True)["state_dict"]["network.seq_blocks.2.weight"]
    run_dir = _fit(
        jsc_data_dir,
        "prune_tune",
        "--model.init_from",
        str(float_ckpt),
        "--model.pruning",
        str(CONFIGS / "prune" / "jsc_toy_50.yaml"),
        "--model.pruning.scope",
        "layer",
        "--trainer.max_epochs",
        "1",
    )
    mask = _masks(run_dir / "checkpoints" / "last.ckpt")["network.seq_blocks.2.weight_mask"]
    # the float checkpoint's smallest half is what was pruned
    assert start[mask == 0].abs().max() <= start[mask == 1].abs().min()


def test_a_resumed_pruned_run_ends_as_an_uninterrupted_one(jsc_data_dir: Path) -> None:
    ramp = [
        "--model.pruning",
        str(CONFIGS / "prune" / "jsc_toy_75.yaml"),
        "--model.pruning.end_epoch",
        "2",
        "--model.steps_per_call",
        "4",
    ]
    reference = _fit(jsc_data_dir, "prune_ref", *ramp)
    # epochs 0, 1, 2 at sparsity 0, 0.75 * (1 - 0.5^3), 0.75; stopped after epoch 1
    first = _fit(jsc_data_dir, "prune_resumed", *ramp, "--trainer.max_epochs", "2")
    partial = sparsity_from(_masks(first / "checkpoints" / "last.ckpt"))
    assert partial == pytest.approx(0.75 * (1 - 0.5**3), abs=0.01)
    resumed = _fit(jsc_data_dir, "prune_resumed", *ramp, "--ckpt_path", "last")
    assert resumed == first
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert sparsity_from(_masks(resumed / "checkpoints" / "last.ckpt")) == pytest.approx(
        0.75, abs=0.01
    )
    assert _hparams_entries(resumed) == 1  # the interrupted process's, not a second one


def _hparams_entries(run_dir: Path) -> int:
    """How many HPARAMS session entries the run folder's event files hold."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(
        value.tag == "_hparams_/session_start_info"
        for path in run_dir.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    )


def sparsity_from(masks: dict[str, torch.Tensor]) -> float:
    return sum(int((m == 0).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def test_compile_falls_back_with_one_line(
    jsc_data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    block = str(CONFIGS / "prune" / "jsc_toy_50.yaml")
    run_dir = _fit(
        jsc_data_dir,
        "prune_compile",
        "--model.pruning",
        block,
        "--model.compile",
        "true",
        "--model.steps_per_call",
        "8",
        "--trainer.max_epochs",
        "1",
    )
    out = capsys.readouterr()
    lines = [
        line
        for line in (out.out + out.err).splitlines()
        if "model.compile: running eager steps" in line
    ]
    assert len(lines) == 1 and "model.pruning" in lines[0]
    assert sparsity_from(_masks(run_dir / "checkpoints" / "last.ckpt")) == 0.5


@pytest.mark.parametrize(
    "flag,value,match",
    [
        ("--model.pruning.sparsity", "1.0", r"sparsity must be in \[0, 1\)"),
        ("--model.pruning.layers", "[seq_blocks.1]", r"'seq_blocks.1' is a ReLU"),
    ],
)
def test_bad_pruning_on_the_command_line_is_one_line(
    jsc_data_dir: Path, flag: str, value: str, match: str, capsys: pytest.CaptureFixture
) -> None:
    block = str(CONFIGS / "prune" / "jsc_toy_50.yaml")
    args = ["fit", "--config", TOY, *synthetic(jsc_data_dir), *QUIET, "--model.pruning", block]
    assert run([*args, flag, value, "--experiment", "bad_prune"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not Path("runs/bad_prune_synthetic").exists()  # nothing written, nothing lost


@pytest.mark.parametrize("path", BLOCKS, ids=lambda p: p.name)
def test_every_block_file_runs_with_the_toy_config(path: Path, jsc_data_dir: Path) -> None:
    args = ["fit", "--config", TOY, *synthetic(jsc_data_dir), *QUIET, "--trainer.fast_dev_run", "2"]
    assert run([*args, "--model.pruning", str(path)]) == 0


def test_a_library_classifier_is_pruned_and_deep_copies() -> None:
    model = Classifier(network=JSCToy(), input_shape=(16,), pruning={"sparsity": 0.5})
    assert all(is_pruned(m) for m in _linears(model.network))
    assert model.hparams["pruning"]["sparsity"] == 0.5
    copy.deepcopy(model.network)  # after check_network's forward
