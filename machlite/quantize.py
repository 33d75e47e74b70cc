"""``machlite quantize``: post-training quantization (PTQ) of a float checkpoint.

    machlite quantize --config configs/jsc_tiny.yaml --quant configs/quant/int8_4.yaml \\
        --ckpt_path runs/jsc_tiny/version_0/checkpoints/last.ckpt

The checkpoint's network is evaluated on the validation and test splits as it is, then with
the quantization config applied (:func:`machlite.quant.quantize_network`): one validation and
one test pass each, no calibration, no training data touched. The checkpoint is loaded by
:func:`machlite.runs.load.load_run`. The report (accuracies, model bits, BOPs per layer and
in total) is printed and written as ``quantize.md`` and ``quantize.json`` into the
checkpoint's run folder (or ``--out``). docs/quantization.md.

Subcommands are named one way: subcommand X is ``machlite/X`` (a module or a package) with
``main(argv)``, registered in :data:`machlite.commands.COMMANDS`. This is ``quantize``;
the library it uses is :mod:`machlite.quant`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from machlite.atomic import atomic_write, atomic_write_json
from machlite.errors import ConfigError, PlainArgumentParser
from machlite.quant import QuantConfig, load_quant_config, network_cost, quantize_network
from machlite.runs.layout import RunFolder
from machlite.runs.load import LoadedRun, evaluation_trainer, load_run


def parser() -> PlainArgumentParser:
    """The ``machlite quantize`` command line; unknown ``--KEY VALUE`` go to the config."""
    p = PlainArgumentParser(
        prog="machlite quantize",
        description="Post-training quantization: evaluate a float checkpoint as it is and "
        "with fixed-point formats, and report accuracy, model bits and BOPs. Other "
        "--KEY VALUE flags (e.g. --data.source synthetic) override the config.",
    )
    p.add_argument(
        "--config", required=True, help="The machlite config the checkpoint was trained with"
    )
    p.add_argument("--quant", required=True, help="The quantization YAML (configs/quant/*.yaml)")
    p.add_argument("--ckpt_path", required=True, help="The float checkpoint")
    p.add_argument("--out", default=None, help="Folder of quantize.md/.json (default: the run's)")
    return p


def evaluate(run: LoadedRun, trainer: pl.Trainer) -> dict[str, float]:
    """Validation and test accuracy and loss of ``run.model`` as it is now: one pass each."""
    out: dict[str, float] = {}
    for stage, evaluate_on in (("val", trainer.validate), ("test", trainer.test)):
        metrics = evaluate_on(run.model, datamodule=run.datamodule, verbose=False)[0]
        out[f"{stage}_acc"] = float(metrics[f"{stage}/acc"])
        out[f"{stage}_loss"] = float(metrics[f"{stage}/loss"])
    return out


def quantize(
    config: str, quant: QuantConfig, ckpt_path: str, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Evaluate ``ckpt_path`` as it is and quantized by ``quant``; return the report's data.

    Raises:
        MachliteError: The config, checkpoint or data cannot be used.
    """
    run = load_run(config, ckpt_path, overrides)
    return _compare(run, evaluation_trainer(run), quant, config, ckpt_path)


def _compare(
    run: LoadedRun, trainer: pl.Trainer, quant: QuantConfig, config: str, ckpt_path: str
) -> dict[str, Any]:
    model = run.model
    input_shape = tuple(run.datamodule.input_shape)
    baseline = model.network
    base_name = "float" if model.quantization is None else "checkpoint (QAT)"
    results = {"baseline": evaluate(run, trainer)}
    model.network = quantize_network(baseline, quant)
    try:
        results["quantized"] = evaluate(run, trainer)
    finally:
        model.network = baseline
    return {
        "checkpoint": str(ckpt_path),
        "config": str(config),
        "baseline_name": base_name,
        "quantization": quant.to_dict(),
        "network": type(baseline).__name__,
        "synthetic": getattr(run.datamodule, "run_tag", "") == "synthetic",
        "float": results["baseline"],
        "quantized": results["quantized"],
        "cost_float": network_cost(baseline, None, input_shape).as_dict(),
        "cost_quantized": network_cost(baseline, quant, input_shape).as_dict(),
    }


def _num(value: float) -> str:
    return f"{value:,.0f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what ``machlite quantize`` prints)."""
    base, quant = report["float"], report["quantized"]
    fc, qc = report["cost_float"], report["cost_quantized"]
    name = report["baseline_name"]
    lines = [
        f"# machlite quantize: {report['network']}",
        "",
        f"checkpoint `{report['checkpoint']}`, config `{report['config']}`"
        + (
            " (SYNTHETIC data: the accuracies say nothing about real jets)"
            if report["synthetic"]
            else ""
        ),
        "",
        f"| | {name} | quantized |",
        "|---|---:|---:|",
        f"| val accuracy | {base['val_acc']:.4f} | {quant['val_acc']:.4f} |",
        f"| test accuracy | {base['test_acc']:.4f} | {quant['test_acc']:.4f} |",
        f"| val loss | {base['val_loss']:.4f} | {quant['val_loss']:.4f} |",
        f"| test loss | {base['test_loss']:.4f} | {quant['test_loss']:.4f} |",
        f"| model bits | {_num(fc['bits'])} | {_num(qc['bits'])} |",
        f"| BOPs per sample | {_num(fc['bops'])} | {_num(qc['bops'])} |",
        "",
        "| layer | type | quantized formats | params | bits (float) | bits | BOPs (float) | BOPs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for f, q in zip(fc["layers"], qc["layers"], strict=True):
        lines.append(
            f"| {q['name']} | {q['kind']} | {q['formats']} | {q['params']} | {_num(f['bits'])} | "
            f"{_num(q['bits'])} | {_num(f['bops'])} | {_num(q['bops'])} |"
        )
    lines.append(
        f"| total | | | {sum(q['params'] for q in qc['layers'])} | {_num(fc['bits'])} | "
        f"{_num(qc['bits'])} | {_num(fc['bops'])} | {_num(qc['bops'])} |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> dict[str, Any]:
    """Run ``machlite quantize`` with ``argv`` (the arguments after the subcommand).

    Returns:
        The report's data (also written as ``quantize.json``).

    Raises:
        BadArguments: The command line does not parse.
        MachliteError: The config, quantization file, checkpoint or data cannot be used.
    """
    args, overrides = parser().parse_known_args(argv)
    quant = load_quant_config(args.quant)
    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        raise ConfigError(f"--ckpt_path {ckpt} does not exist: give a checkpoint file")
    report = quantize(args.config, quant, str(ckpt), overrides)
    report["quant_file"] = str(args.quant)
    text = report_markdown(report)
    print(text, end="", flush=True)
    out = Path(args.out) if args.out else RunFolder.of_checkpoint(ckpt).path
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "quantize.md", text)
    atomic_write_json(out / "quantize.json", report)
    print(f"machlite: wrote {out / 'quantize.md'} and quantize.json", flush=True)
    return report


__all__ = ["evaluate", "main", "quantize", "report_markdown"]
