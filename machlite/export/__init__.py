"""``machlite export``: a checkpoint as ONNX, QONNX or an hls4ml project, checked against machlite.

    machlite export --ckpt_path CK --format onnx --out export/
    machlite export --ckpt_path CK --format qonnx --quant configs/quant/int8_4.yaml --out export/
    machlite export --ckpt_path CK --format hls4ml --out export/hls
    machlite export --ckpt_path CK --format verilog --quant configs/quant/hw_int8_4.yaml --out rtl/

Each export is run on the test split and compared with machlite's own output: ONNX (the
float network) with onnxruntime against PyTorch; QONNX and hls4ml (the quantized network:
the checkpoint's own formats after QAT, or ``--quant``) against machlite's fake-quantized
network. The comparison (max abs diff, class agreement) is printed and written as
``export_FORMAT.json`` into ``--out``, last: a folder without it is not a finished export.
Needs the ``hw`` extra (hls4ml, onnx, onnxruntime, qonnx). docs/export.md. Verilog (alkaid,
checked by its C++ model and by Verilator, costed by yosys): :mod:`machlite.hw.design`,
docs/hardware.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from machlite.agreement import compare
from machlite.atomic import atomic_write_json
from machlite.errors import ConfigError, PlainArgumentParser, write_error
from machlite.export.extra import require
from machlite.export.to_verilog import add_arguments as add_verilog_arguments
from machlite.quant import (
    QuantConfig,
    dequantize,
    is_quantized,
    load_quant_config,
    quantize_network,
)
from machlite.sparsity import make_permanent

FORMATS = ("onnx", "qonnx", "hls4ml", "verilog")


def parser() -> PlainArgumentParser:
    """The ``machlite export`` command line; unknown ``--KEY VALUE`` go to the config."""
    p = PlainArgumentParser(
        prog="machlite export",
        description="Export a checkpoint as ONNX (float), QONNX, an hls4ml project or Verilog "
        "(quantized) and check it against machlite on the test split. Other --KEY VALUE flags "
        "(e.g. --data.source synthetic) override the config.",
    )
    p.add_argument("--ckpt_path", required=True, help="The checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS, help="What to write")
    p.add_argument("--out", required=True, help="The output folder")
    p.add_argument(
        "--config", default=None, help="The run's config (default: config.yaml of its run folder)"
    )
    p.add_argument(
        "--quant",
        default=None,
        help="Quantization YAML for a float checkpoint (qonnx, hls4ml; default: the "
        "checkpoint's own formats)",
    )
    p.add_argument(
        "--samples", type=int, default=0, help="Compare on the first N test samples (0: all)"
    )
    add_verilog_arguments(p)
    return p


def check_out(out: Path) -> None:
    """Check that ``--out`` can be the output folder: a folder, or nothing yet.

    Raises:
        ConfigError: ``out`` is a file (or something else that is not a folder).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file, but machlite export writes a folder there: give a new "
            "folder or an existing one (e.g. --out export)"
        )


def make_out(out: Path) -> None:
    """Create the output folder ``out`` (and its parents).

    Raises:
        ConfigError: ``out`` is a file.
        MachliteError: The folder cannot be created (a parent is a file, no permission).
    """
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, f"the export folder {out}") from err


def export(
    network: torch.nn.Module,
    input_shape: tuple[int, ...],
    fmt: str,
    out: Path,
    x: np.ndarray,
    quant: QuantConfig | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``network`` as ``fmt`` into ``out`` and compare it with machlite on ``x``.

    Args:
        network: The checkpoint's network (float, or quantized after QAT).
        input_shape: One sample's shape.
        fmt: ``onnx``, ``qonnx`` or ``hls4ml``.
        out: The output folder.
        x: The inputs to compare on.
        quant: Formats for a float network (qonnx, hls4ml, verilog); None: the network's own.
        options: The verilog format's options (``to_verilog.options_of``).

    Raises:
        ConfigError: The extra is missing, or a quantized format has no formats to use.
    """
    require(fmt)
    network = make_permanent(network).cpu().eval()  # pruned: plain layers holding the zeros
    make_out(out)
    if fmt == "onnx":
        from machlite.export.to_onnx import export_onnx, run_onnxruntime

        plain = dequantize(network).eval()  # the float network
        path = export_onnx(plain, input_shape, out / "model.onnx")
        with torch.no_grad():
            want = plain(torch.from_numpy(x)).numpy()
        return {
            "file": str(path),
            "against": "PyTorch (float)",
            **compare(run_onnxruntime(path, x), want),
        }
    if quant is not None:
        network = quantize_network(network, quant).eval()
    if not any(is_quantized(m) for m in network.modules()):
        raise ConfigError(
            f"--format {fmt} exports a quantized network, but the checkpoint is float and "
            "no --quant file was given (e.g. --quant configs/quant/int8_4.yaml)"
        )
    if fmt == "verilog":
        from machlite.hw.design import verilog_design

        return verilog_design(network, input_shape, out, x, **(options or {}))
    with torch.no_grad():
        want = network(torch.from_numpy(x)).numpy()
    against = "machlite fake-quantized"
    if fmt == "qonnx":
        import onnx

        from machlite.atomic import atomic_write
        from machlite.export.to_qonnx import qonnx_model, run_qonnx

        model = qonnx_model(network, input_shape)
        path = out / "model.qonnx.onnx"
        atomic_write(path, model.SerializeToString())
        return {
            "file": str(path),
            "against": against,
            **compare(run_qonnx(onnx.load(path), x), want),
        }
    from machlite.export.to_hls4ml import build_hls4ml, run_hls4ml

    model = build_hls4ml(network, input_shape, out)
    return {"file": str(out), "against": against, **compare(run_hls4ml(model, x), want)}


def main(argv: list[str]) -> dict[str, Any]:
    """Run ``machlite export`` with ``argv`` (the arguments after the subcommand).

    Returns:
        The comparison (also written as ``export_FORMAT.json`` into ``--out``).

    Raises:
        BadArguments: The command line does not parse.
        MachliteError: The extra is missing, or the config, checkpoint or data cannot be used.
    """
    from machlite.runs.layout import RunFolder
    from machlite.runs.load import load_run, split_inputs

    args, overrides = parser().parse_known_args(argv)
    require(args.format)  # before any work
    out = Path(args.out)
    check_out(out)
    if args.format == "hls4ml":
        from machlite.export.to_hls4ml import require_compiler

        require_compiler()
    options = None
    if args.format == "verilog":
        from machlite.export.to_verilog import options_of
        from machlite.hw.design import check_tools

        options = options_of(args)
        check_tools(**options)
    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        raise ConfigError(f"--ckpt_path {ckpt} does not exist: give a checkpoint file")
    config = args.config or RunFolder.of_checkpoint(ckpt).config
    if not Path(config).is_file():
        raise ConfigError(f"no config: {config} does not exist; give the run's --config")
    quant = load_quant_config(args.quant) if args.quant else None
    run = load_run(config, ckpt, overrides)
    input_shape = tuple(run.datamodule.input_shape)
    x = split_inputs(run.datamodule, args.samples)
    network = run.model.network
    # export_FORMAT.json is written last: a folder without it is not a finished export
    marker = out / f"export_{args.format}.json"
    try:
        marker.unlink(missing_ok=True)
    except OSError as err:
        raise write_error(err, f"the export folder {out}") from err
    result = export(network, input_shape, args.format, out, x, quant, options)
    result = {"format": args.format, "checkpoint": str(ckpt), **result}
    print(
        f"machlite: {args.format} written to {result['file']}; against {result['against']} on "
        f"{result['samples']} test samples: max abs diff {result['max_abs_diff']:.3g}, class "
        f"agreement {100 * result['class_agreement']:.2f}%, identical outputs "
        f"{100 * result['identical']:.2f}%",
        flush=True,
    )
    if args.format == "verilog":
        from machlite.hw.design import describe

        print("\n".join(describe(result)), flush=True)
    atomic_write_json(marker, result)
    return result


__all__ = ["FORMATS", "check_out", "export", "main", "make_out"]
