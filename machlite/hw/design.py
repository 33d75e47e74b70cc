"""A quantized network as a checked, costed Verilog design: the hardware flow as a library.

The network (machlite's fake-quantized layers) is traced by alkaid (:mod:`machlite.hw.alkaid`)
into a fully unrolled adder-graph design: every constant multiplication becomes shifts and
adds, no DSPs. The design is written as a Verilog project (combinational, or pipelined with
``latency_cutoff``) with alkaid's Vivado/Quartus scripts, and checked against machlite's
fake-quantized eval forward: by alkaid's C++ model of the design (always), and by the emitted
Verilog compiled with Verilator (``rtl_sim``). yosys then synthesizes it for a Xilinx
7-series part (``synth``): LUTs, FFs, CARRY4, DSPs, BRAM (yosys's counts, not Vivado's).
``machlite export --format verilog`` and hardware search objectives both stand on
:func:`verilog_design`. docs/hardware.md.

Only exact designs are written: every Linear and BatchNorm needs fixed-point weight and bias
formats, and the first layer a ``data_in`` format (the design's input format). A network may
begin with ``nn.Flatten`` (the MNIST MLP): the design's input is then the flattened sample.
Each refusal is one line naming the layer and the config key. machlite's fake quantization
is float32, exact while every sum stays within 2^24 steps of its grid: past that on the
compared samples the design is refused (no design could agree with an inexact reference);
past it only for some input of the format, the result says so (``float32``) and a note is
printed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from machlite.agreement import compare
from machlite.errors import ConfigError
from machlite.quant import FixedPoint, fake_quant, is_quantized, layer_type
from machlite.quant.layers import fold_batchnorm

#: Modules a design may hold besides machlite's quantized layers: exact without a format.
PASS_THROUGH = (nn.ReLU, nn.Dropout, nn.Identity)
#: The quantized layer types the RTL implements (``by_type`` keys).
SUPPORTED = ("linear", "batchnorm1d", "relu")


def _keys(name: str, kind: str, field: str) -> str:
    """The config keys that set ``field`` of layer ``name`` (by name, or by type)."""
    return (
        f"model.quantization.by_name.{name}.{field} (or by_type.{kind}.{field}; in a --quant "
        "file the same keys without model.quantization.)"
    )


def input_format(network: nn.Module) -> FixedPoint:
    """The format of the design's input, after checking that every layer is exact in RTL.

    Raises:
        ConfigError: A layer is float, of a type the RTL does not implement, or the first
            layer has no ``data_in`` format; one line naming the layer and the config key.
    """
    leaves = [(n, m) for n, m in network.named_modules() if not list(m.children())]
    while leaves and isinstance(leaves[0][1], nn.Flatten):  # the design's input is flat
        leaves.pop(0)
    first: FixedPoint | None = None
    for index, (name, module) in enumerate(leaves):
        kind = layer_type(module)
        label = f"layer {name} ({(kind.torch_class if kind else type(module)).__name__})"
        if is_quantized(module) and kind is not None and kind.key in SUPPORTED:
            q = module.quant
            params = ["weight", "bias"] if kind.key != "relu" else []
            if kind.key == "linear" and module.bias is None:
                params = ["weight"]
            for field in params:
                if getattr(q, field) is None:
                    raise ConfigError(
                        f"--format verilog: {label} has a float {field}; the RTL computes in "
                        f"fixed point only: set {_keys(name, kind.key, field)}"
                    )
            if index == 0:
                first = q.data_in
        elif kind is not None and kind.key in SUPPORTED and kind.key != "relu":
            raise ConfigError(
                f"--format verilog: {label} is float; the RTL computes in fixed point only: "
                f"set {_keys(name, kind.key, 'weight')} and .bias"
            )
        elif not isinstance(module, PASS_THROUGH):
            raise ConfigError(
                f"--format verilog: {label} has no fully unrolled RTL in machlite (networks "
                "on vectors only, as JSC and MNISTMLP: a leading Flatten, then Linear, "
                "BatchNorm1d, ReLU, Dropout; the MNIST CNN's Linear(1600,128) alone would be "
                "about 205k constant multiplications)"
            )
        if index == 0 and first is None:
            kind_key = kind.key if kind is not None else "relu"
            raise ConfigError(
                f"--format verilog: the network's input is float; the design's inputs are "
                f"fixed point: set {_keys(name, kind_key, 'data_in')}"
            )
    if first is None:
        raise ConfigError("--format verilog: the network has no layers")
    return first


def check_tools(rtl_sim: bool = True, synth: bool = True, **_: Any) -> None:
    """Stop with one line (naming the package) when a tool the options need is missing.

    Raises:
        ConfigError: Verilator (``rtl_sim``) or yosys (``synth``) is not installed.
    """
    from machlite.hw import tools

    if rtl_sim:
        tools.require_verilator()
    if synth:
        tools.require_yosys()


#: float32 holds every integer up to 2^24 exactly: machlite's fake-quantized forward is exact
#: while every sum it forms stays within this many steps of its grid.
FLOAT32_EXACT_STEPS = 2.0**24


def sample_sums(network: nn.Module, x: np.ndarray, grid: dict[str, float]) -> dict[str, float]:
    """The most steps of its grid each Linear/BatchNorm's sums reach on the inputs ``x``.

    Each partial sum is bounded by the sum of its terms' magnitudes, computed in float64
    from the layer's rounded input and parameters (machlite's own fake quantization).

    Args:
        network: The quantized network.
        x: The inputs.
        grid: The step of each layer's sums, by name (from the trace).
    """
    found: dict[str, float] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
            q = module.quant
            xq = fake_quant(inputs[0], q.data_in).double().abs()
            if layer_type(module).key == "linear":
                w = fake_quant(module.weight, q.weight).double().abs()
                bound = xq @ w.T
                if module.bias is not None:
                    bound = bound + fake_quant(module.bias, q.bias).double().abs()
            else:
                scale, shift = fold_batchnorm(module)
                bound = xq * fake_quant(scale, q.weight).double().abs()
                bound = bound + fake_quant(shift, q.bias).double().abs()
            found[name] = float(bound.max()) / grid[name]

        return record

    for name, module in network.named_modules():
        if name in grid:
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            network(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return found


def float32_exactness(
    network: nn.Module, x: np.ndarray, sums: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Whether machlite's float32 forward is exact: for any input, or on the inputs ``x``.

    Args:
        network: The quantized network.
        x: The inputs compared on.
        sums: The trace's sums per layer (``step``, and ``steps`` for any input).

    Raises:
        ConfigError: On ``x``, a layer's sums leave float32's exact range: machlite's own
            forward is not exact, so no design can agree with it bit for bit.
    """
    on_x = sample_sums(network, x, {name: s["step"] for name, s in sums.items()})
    worst = max(on_x, key=on_x.__getitem__)
    if on_x[worst] > FLOAT32_EXACT_STEPS:
        kind = layer_type(network.get_submodule(worst)).torch_class.__name__
        raise ConfigError(
            f"--format verilog: layer {worst} ({kind}) sums up to 2^{np.log2(on_x[worst]):.1f} "
            "steps of its grid on these inputs, beyond float32's exact 2^24, so machlite's "
            "fake-quantized forward is not exact there and no design can match it bit for "
            f"bit: narrow model.quantization.by_name.{worst} (data_in, weight, bias)"
        )
    any_input = max(s["steps"] for s in sums.values())
    return {
        "exact_for_every_input": any_input <= FLOAT32_EXACT_STEPS,
        "log2_steps_any_input": round(float(np.log2(any_input)), 2),
        "log2_steps_on_samples": round(float(np.log2(on_x[worst])), 2),
    }


def _timed(seconds: dict[str, float], step: str, start: float) -> None:
    seconds[step] = round(time.monotonic() - start, 2)


def verilog_design(
    network: nn.Module,
    input_shape: tuple[int, ...],
    out: Path,
    x: np.ndarray,
    latency_cutoff: float = 0.0,
    rtl_sim: bool = True,
    synth: bool = True,
    synth_timeout: float = 1800.0,
) -> dict[str, Any]:
    """Write the Verilog project of quantized ``network`` into ``out`` and check it on ``x``.

    Args:
        network: The quantized network (eval).
        input_shape: One sample's shape: a vector ``(in_features,)``, or any shape when the
            network begins with ``nn.Flatten()`` (the design's input is then flat).
        out: The project folder.
        x: The inputs to compare on (float; rounded to the input format on the way in).
        latency_cutoff: ns per pipeline stage (alkaid's delay model); <= 0: combinational.
        rtl_sim: Also simulate the emitted Verilog with Verilator.
        synth: Also synthesize with yosys (xc7).
        synth_timeout: Seconds for yosys.

    Returns:
        The C++ model's comparison at the top level (as the other formats), and
        ``rtl_sim``, ``synthesis``, ``stages``, ``latency_cycles``, ``seconds``.

    Raises:
        ConfigError: The network has no exact fixed-point design, or a tool is missing.
    """
    from machlite.hw import tools

    fmt = input_format(network)
    first = next((m for m in network.modules() if not list(m.children())), None)
    flat = isinstance(first, nn.Flatten) and (first.start_dim, first.end_dim) == (1, -1)
    if len(input_shape) != 1 and not flat:
        raise ConfigError(
            f"--format verilog takes networks on vectors, not {tuple(input_shape)}: a network "
            "on images must begin with nn.Flatten() (as MNISTMLP does)"
        )
    network = network.cpu().eval()
    check_tools(rtl_sim=rtl_sim, synth=synth)  # a missing tool stops before any work
    env = tools.verilator_env(out / "sim") if rtl_sim else {}
    from machlite.hw import alkaid as hw

    seconds: dict[str, float] = {}
    with torch.no_grad():
        want = network(torch.from_numpy(x)).numpy()
        xq = fake_quant(torch.from_numpy(x), fmt).double().numpy().reshape(len(x), -1)
    start = time.monotonic()
    comb = hw.trace_network(network, tuple(input_shape), fmt)
    _timed(seconds, "trace", start)
    exactness = float32_exactness(network, x, hw.SUMS)  # refuses an inexact reference
    start = time.monotonic()
    result: dict[str, Any] = {
        "file": str(out),
        "against": "machlite fake-quantized (alkaid's C++ model of the design)",
        **compare(hw.predict(comb, xq), want),
        "float32": exactness,
    }
    _timed(seconds, "cpp_model", start)
    start = time.monotonic()
    rtl = hw.write_rtl(comb, out, latency_cutoff=latency_cutoff)
    _timed(seconds, "write_rtl", start)
    result.update(
        {
            "input_format": {"width": fmt.width, "frac_width": fmt.frac_width},
            "top_module": rtl.top,
            "stages": rtl.stages,
            "latency_cycles": rtl.latency_cycles,
            "alkaid_estimate": rtl.estimate,
        }
    )
    # yosys runs in its own process while Verilator builds and simulates (two cores)
    yosys = (
        tools.YosysRun(rtl.sources, rtl.top, out / "yosys.log", synth_timeout) if synth else None
    )
    try:
        if rtl_sim:
            start = time.monotonic()
            with tools.environment(env):
                try:
                    got = hw.rtl_simulate(rtl, xq)
                except RuntimeError as err:  # alkaid's make of the Verilator model failed
                    raise ConfigError(
                        f"RTL simulation: Verilator could not build the design ({err}); run "
                        f"'make -f build_fsm_binder.mk' in {out / 'sim'} to see why, or skip "
                        "it with --rtl_sim false"
                    ) from err
            result["rtl_sim"] = {"tool": "Verilator", **compare(got, want)}
            _timed(seconds, "rtl_sim", start)
        if yosys is not None:
            report = yosys.result()
            result["synthesis"] = report.to_dict()
            seconds["synthesis"] = report.seconds
    finally:
        if yosys is not None:
            yosys.stop()
    result["seconds"] = seconds
    return result


def describe(result: dict[str, Any]) -> list[str]:
    """The lines ``machlite export`` prints about the RTL beyond the C++ model's comparison."""
    lines = [
        f"machlite: verilog: {result['stages']} stage(s), latency {result['latency_cycles']} "
        f"cycle(s), top module {result['top_module']}, inputs at "
        f"({result['input_format']['width']},{result['input_format']['frac_width']})"
    ]
    est = result.get("alkaid_estimate", {})
    if est.get("critical_path_ns"):
        lines.append(
            f"machlite: alkaid's delay model (logic only, no routing; an estimate, not timing "
            f"analysis): critical path {est['critical_path_ns']} ns per stage, Fmax about "
            f"{est['fmax_mhz']:.0f} MHz"
        )
    f32 = result.get("float32", {})
    if f32 and not f32["exact_for_every_input"]:
        lines.append(
            "machlite: note: machlite's float32 forward is exact on these samples (sums up to "
            f"2^{f32['log2_steps_on_samples']} steps) but not for every input of the format "
            f"(up to 2^{f32['log2_steps_any_input']} > 2^24): there the design, which is "
            "exact, may differ from machlite"
        )
    if "rtl_sim" in result:
        r = result["rtl_sim"]
        lines.append(
            f"machlite: RTL simulation (Verilator) on {r['samples']} test samples: max abs diff "
            f"{r['max_abs_diff']:.3g}, class agreement {100 * r['class_agreement']:.2f}%, "
            f"identical outputs {100 * r['identical']:.2f}%"
        )
    if "synthesis" in result:
        s = result["synthesis"]
        lines.append(
            f"machlite: yosys, xc7 (not Vivado): {s['luts']} LUTs, {s['ffs']} FFs, "
            f"{s['carry4']} CARRY4, {s['dsps']} DSPs, {s['bram']} BRAM ({s['seconds']:.1f} s)"
        )
    return lines


__all__ = [
    "FLOAT32_EXACT_STEPS",
    "check_tools",
    "describe",
    "float32_exactness",
    "input_format",
    "verilog_design",
]
