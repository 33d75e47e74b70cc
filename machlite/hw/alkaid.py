"""alkaid, wrapped: machlite's quantized layers traced into an adder-graph design, and its RTL.

The one module of machlite that imports alkaid (the ``rtl`` extra; pinned in setup.cfg).
alkaid's torch.fx tracer replays each module of a network on symbolic fixed-point arrays;
a module class needs a handler (a subclass of alkaid's ``ReplayModuleBase`` whose
``handles`` names the class). The handlers here cover machlite's ``Quant*`` layers: each
rounds exactly where machlite's fake quantization rounds, with machlite's rounding (half to
even: alkaid's ``RND_CONV``) and overflow (saturation: ``SAT``). alkaid finds them through
its plugin entry point (group ``alkaid_torch``, name ``machlite``, in setup.cfg), which
calls :func:`register`.

- :func:`trace_network`: the network as alkaid's ``CombLogic`` (a combinational design).
- :func:`predict`: the design's outputs on fixed-point inputs, by alkaid's C++ interpreter.
- :func:`write_rtl`: the Verilog project (alkaid's ``RTLModel``: sources, Vivado/Quartus
  scripts, the Verilator emulator's harness); :func:`rtl_simulate` compiles the emitted
  Verilog with Verilator and runs it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from alkaid.codegen import RTLModel
from alkaid.converter import trace_model
from alkaid.converter.builtin.torch.layers.modules import ReplayModuleBase
from alkaid.trace import FVArray, HWConfig, trace
from alkaid.types import CombLogic

from machlite.quant.formats import FixedPoint
from machlite.quant.layers import (
    QuantBatchNorm1d,
    QuantLinear,
    QuantReLU,
    fake_quant,
    fold_batchnorm,
)

#: machlite's rounding (half to even) and overflow (saturate) in alkaid's words.
ROUND_MODE = "RND_CONV"
OVERFLOW_MODE = "SAT"
#: What a handler uses; :func:`rounding` changes it (the sensitivity test).
_MODES = {"round": ROUND_MODE, "overflow": OVERFLOW_MODE}
#: The traced network's modules by id, for errors that name a layer.
_NAMES: dict[int, str] = {}
#: The last trace's sums per Linear/BatchNorm, by layer name: their grid's ``step`` and the
#: most ``steps`` of it any input of the design's format can reach (float32 is exact to 2^24).
SUMS: dict[str, dict[str, float]] = {}


def register() -> None:
    """alkaid's plugin hook: importing this module has registered the handlers."""


def kif(fmt: FixedPoint) -> tuple[int, int, int]:
    """A machlite format as alkaid's (sign bit, integer bits without the sign, frac bits)."""
    return 1, fmt.width - fmt.frac_width - 1, fmt.frac_width


def _round(x: FVArray, fmt: FixedPoint | None) -> FVArray:
    """``x`` rounded to ``fmt`` as :func:`machlite.quant.fake_quant` rounds (None: as is)."""
    if fmt is None:
        return x
    k, i, f = kif(fmt)
    if _MODES["round"] == ROUND_MODE:
        x = _on_grid_constants(x, 2.0**-f)
    return x.quantize(k, i, f, overflow_mode=_MODES["overflow"], round_mode=_MODES["round"])


def _on_grid_constants(x: FVArray, step: float) -> FVArray:
    """``x`` with its constant elements moved to their half-to-even rounding on ``step``.

    Works around alkaid 0.8.2, whose ``RND_CONV`` rounds a constant wrongly (5.625 steps
    became 4, 6.5 became 7; ``RND`` and ``TRN`` are right). A constant appears where every
    weight into an output is zero (pruning): the output is its bias. Once on the grid, the
    quantization leaves the value as is (saturation still applies). Non-constant elements
    get 0 added, which alkaid folds away.
    """
    low = np.array([v.low for v in np.ravel(x)], dtype=np.float64)
    high = np.array([v.high for v in np.ravel(x)], dtype=np.float64)
    const = low == high
    if not const.any():
        return x
    delta = np.where(const, np.round(low / step) * step - low, 0.0)  # np.round: half to even
    if not delta.any():
        return x
    return x + delta.reshape(x.shape)


def _maxabs(x: FVArray) -> np.ndarray:
    """The largest magnitude each element of ``x`` can take."""
    return np.array([max(abs(v.low), abs(v.high)) for v in np.ravel(x)]).reshape(x.shape)


def _record_sums(module: torch.nn.Module, bound: np.ndarray, out: FVArray) -> None:
    """Record how far the sums of ``module`` can go, in steps of their grid.

    ``bound`` bounds every partial sum (the sum of the terms' magnitudes) for any input of
    the design's format; ``out`` is the sum before rounding, whose grid is the finest step.
    """
    step = float(min(v.step for v in np.ravel(out)))
    SUMS[_NAMES.get(id(module), "?")] = {"step": step, "steps": float(bound.max()) / step}


def _const(t: torch.Tensor, fmt: FixedPoint | None) -> np.ndarray:
    """A parameter rounded by machlite's own fake quantization, as float64 (exact)."""
    return fake_quant(t.detach().cpu().float(), fmt).double().numpy()


class MachliteLinear(ReplayModuleBase):
    """:class:`~machlite.quant.layers.QuantLinear`: ``round(round(x) @ round(W).T + round(b))``."""

    handles = (QuantLinear,)

    def call(self, input: FVArray) -> FVArray:
        q = self.module.quant
        x, w = _round(input, q.data_in), _const(self.module.weight, q.weight)
        out, bound = x @ w.T, _maxabs(x) @ np.abs(w).T
        if self.module.bias is not None:
            b = _const(self.module.bias, q.bias)
            out, bound = out + b, bound + np.abs(b)
        _record_sums(self.module, bound, out)
        return _round(out, q.data_out)


class MachliteBatchNorm(ReplayModuleBase):
    """:class:`~machlite.quant.layers.QuantBatchNorm1d` in eval: ``round(x) * scale + shift``.

    The folded scale and shift are computed in float32 exactly as machlite's forward
    computes them, then rounded to their formats.
    """

    handles = (QuantBatchNorm1d,)

    def call(self, input: FVArray) -> FVArray:
        m, q = self.module, self.module.quant
        scale, shift = fold_batchnorm(m)
        x, s, b = _round(input, q.data_in), _const(scale, q.weight), _const(shift, q.bias)
        out = x * s + b
        _record_sums(self.module, _maxabs(x) * np.abs(s) + np.abs(b), out)
        return _round(out, q.data_out)


class MachliteReLU(ReplayModuleBase):
    """:class:`~machlite.quant.layers.QuantReLU`: ``round(relu(round(x)))``."""

    handles = (QuantReLU,)

    def call(self, input: FVArray) -> FVArray:
        q = self.module.quant
        return _round(np.maximum(_round(input, q.data_in), 0), q.data_out)


class rounding:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Trace with other rounding/overflow modes (a design that must disagree: tests)."""

    def __init__(self, round_mode: str = ROUND_MODE, overflow_mode: str = OVERFLOW_MODE) -> None:
        self.modes = {"round": round_mode, "overflow": overflow_mode}

    def __enter__(self) -> None:
        self.saved = dict(_MODES)
        _MODES.update(self.modes)

    def __exit__(self, *exc: object) -> None:
        _MODES.update(self.saved)


def trace_network(
    network: torch.nn.Module, input_shape: tuple[int, ...], fmt: FixedPoint
) -> CombLogic:
    """The eval forward of ``network`` on inputs of format ``fmt``, as alkaid's design.

    Args:
        network: A quantized network on vectors (every arithmetic layer with fixed-point
            formats), or one that begins with ``nn.Flatten`` (alkaid replays it).
        input_shape: One sample's shape; the design's inputs are its elements, flattened.
        fmt: The input's format (the first layer's ``data_in``).
    """
    network = network.cpu().eval()
    _NAMES.clear()
    SUMS.clear()
    _NAMES.update({id(m): name for name, m in network.named_modules()})
    k, i, f = kif(fmt)
    shape = (1, *input_shape)
    hwconf = HWConfig(1, 1, -1)  # alkaid's default (adder size, carry size, no cutoff)
    x = FVArray.from_kif(np.full(shape, k), np.full(shape, i), np.full(shape, f), hwconf)
    with torch.no_grad():
        inputs, outputs = trace_model(network, hwconf, framework="torch", inputs=(x,))
    return trace(inputs, outputs)


def predict(comb: CombLogic, x: np.ndarray) -> np.ndarray:
    """The design's outputs for inputs ``x`` (already on the input format's grid)."""
    return np.asarray(comb.predict(np.ascontiguousarray(x, dtype=np.float64), n_threads=1))


@dataclass
class RTL:
    """A written Verilog project: its folder, top module, pipeline stages and latency."""

    path: Path
    top: str
    stages: int
    latency_cycles: int
    model: Any  # alkaid's RTLModel

    @property
    def estimate(self) -> dict[str, float]:
        """alkaid's own estimates: its LUT-like cost, the register bits, and the critical path.

        ``critical_path_ns`` is the longest combinational delay of one stage by alkaid's delay
        model (about 1.1 ns per adder plus 0.025 ns per carry bit; logic only, no routing),
        and ``fmax_mhz`` its inverse: estimates, not a timing analysis. Each stage's
        latencies in alkaid count from the design's input, so a stage's delay is its latest
        output's minus the stage before's.
        """
        logic = list(self.model.fsm.logic.values())
        ends = [float(c.latency[1]) for c in logic]
        delays = [end - before for end, before in zip(ends, [0.0, *ends[:-1]], strict=True)]
        path = max(delays, default=0.0)
        return {
            "cost": round(float(sum(c.cost for c in logic)), 1),
            "reg_bits": int(self.model.reg_bits),
            "critical_path_ns": round(path, 2),
            "fmax_mhz": round(1000.0 / path, 1) if path > 0 else None,
        }

    @property
    def sources(self) -> list[Path]:
        """The Verilog files of the design (top wrapper included)."""
        return sorted((self.path / "src").rglob("*.v"))


def write_rtl(
    comb: CombLogic,
    path: Path,
    latency_cutoff: float = -1,
    part: str = "xc7a100tcsg324-1",
    clock_period: float = 5.0,
    ternary_fuse: bool = False,
) -> RTL:
    """Write ``comb`` as a Verilog project into ``path``.

    Args:
        comb: The traced design.
        path: The project folder (``src/`` Verilog, ``sim/`` the emulator's harness,
            ``model/`` the design as JSON, alkaid's Vivado and Quartus scripts).
        latency_cutoff: The longest combinational delay per pipeline stage in ns, by alkaid's
            delay model; <= 0: one combinational design.
        part: The FPGA part in alkaid's Vivado script.
        clock_period: The clock in ns in alkaid's timing constraints.
        ternary_fuse: alkaid's ternary-adder fusion (it targets UltraScale+; off for xc7).
    """
    shutil.rmtree(Path(path) / "src", ignore_errors=True)  # no stage of an earlier design
    model = RTLModel(
        comb,
        path,
        "machlite_net",
        flavor="verilog",
        latency_cutoff=latency_cutoff,
        part_name=part,
        clock_period=clock_period,
        ternary_fuse=ternary_fuse,
    )
    model.write()
    stages = len(model.fsm.logic)
    latency = model.latency
    cycles = int(latency) if latency is not None and latency_cutoff > 0 else 0
    return RTL(Path(path), "machlite_net_wrapper", stages, cycles, model)


def rtl_simulate(rtl: RTL, x: np.ndarray, env: dict[str, str] | None = None) -> np.ndarray:
    """The emitted Verilog compiled by Verilator (``env``: its PATH and fixes) and run on ``x``."""
    rtl.model.compile(openmp=False, nproc=2, _env=env)  # writes the same files again, builds
    return np.asarray(rtl.model.predict(np.ascontiguousarray(x, dtype=np.float64), n_threads=1))
