"""The model summary a run prints: the network's own layers, exact parameters and FLOPs.

Lightning's summary lists the task's metric objects as if they were layers, rounds the
parameter count (``3.2 K`` where the lab question needs 3,231) and shows ``FLOPs 0`` without
an example input. :class:`NetworkSummary` prints instead, at the start of a fit, every leaf
layer of ``model.network`` with its exact parameter count, its output shape and its FLOPs
for one sample of the datamodule's input shape, and the totals as ``machlite models``
counts them. FLOPs are counted by torch's own ``FlopCounterMode`` (a multiply-add is 2
FLOPs; BatchNorm, ReLU and pooling count 0, as there).

The CLI turns Lightning's own ``ModelSummary`` callback into this one in place
(:func:`summarize_network`), so ``--trainer.enable_model_summary false`` still turns it off.
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from machlite.quant.cost import LayerCost, network_cost
from machlite.sparsity import PRUNABLE, PruneConfig, is_pruned, sparsity_of

try:  # torch >= 2.1
    from torch.utils.flop_counter import FlopCounterMode
except ImportError:  # torch 2.0 (the IPU stack): FLOPs are not counted there
    FlopCounterMode = None


def layer_table(network: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per leaf layer of ``network``: name, type, params, output shape, FLOPs.

    Args:
        network: The network (run on the CPU copy of one zero sample, in eval mode).
        input_shape: One sample's shape, without the batch dimension.
    """
    outputs: dict[str, tuple[int, ...]] = {}
    leaves = [(n, m) for n, m in network.named_modules() if n and not list(m.children())]
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, tuple(out.shape[1:]))
        )
        for name, module in leaves
    ]
    was_training = network.training
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    network.eval()
    counter = FlopCounterMode(display=False) if FlopCounterMode is not None else None
    try:
        with torch.no_grad(), counter or contextlib.nullcontext():
            network(torch.zeros(1, *input_shape, device=device))
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    prefix = type(network).__name__
    counts = counter.get_flop_counts() if counter is not None else {}
    flops = {k: sum(v.values()) for k, v in counts.items()}
    return [
        {
            "name": name,
            "type": type(module).__name__,
            "params": sum(p.numel() for p in module.parameters()),
            "output": outputs.get(name),
            "flops": int(flops.get(f"{prefix}.{name}", 0)) if counter is not None else None,
        }
        for name, module in leaves
    ]


def _zeros(layer: LayerCost | None) -> str:
    """A Linear's or Conv2d's fraction of zero weights as the summary shows it ('-': other)."""
    return f"{layer.sparsity:.1%}" if layer is not None and layer.kind in PRUNABLE else "-"


def format_summary(
    network: nn.Module, input_shape: tuple[int, ...], pruning: PruneConfig | None = None
) -> str:
    """The summary's text: a row per layer, then the totals.

    Bits (parameter storage) and BOPs (bit operations per sample, docs/quantization.md) come
    from :func:`machlite.quant.cost.network_cost`: a float layer counts 32 bits a value, a
    quantized one its formats' widths, and zero weights none. A pruned network (or one with
    ``pruning``, ``model.pruning``) also shows each layer's fraction of zero weights now,
    and the schedule's target (docs/pruning.md).
    """
    rows = layer_table(network, input_shape)
    pruned = pruning is not None or any(is_pruned(m) for m in network.modules())
    cost = network_cost(network, None, input_shape)
    by_layer = {layer.name: layer for layer in cost.layers}
    params = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    counted = all(r["flops"] is not None for r in rows)
    flops = f"{sum(r['flops'] for r in rows):,}" if counted else "n/a (torch < 2.1)"
    width = max([len("layer"), *(len(r["name"]) for r in rows)])
    kind = max([len("type"), *(len(r["type"]) for r in rows)])
    head = (
        f"  {'layer':<{width}}  {'type':<{kind}}  {'params':>9}  {'output':<14}  {'FLOPs':>11}"
        f"  {'bits':>9}  {'BOPs':>13}" + (f"  {'zeros':>6}" if pruned else "")
    )
    lines = [f"machlite: network {type(network).__name__}, input {tuple(input_shape)}", head]
    for r in rows:
        shape = "x".join(map(str, r["output"])) if r["output"] is not None else "-"
        layer = by_layer.get(r["name"])
        lines.append(
            f"  {r['name']:<{width}}  {r['type']:<{kind}}  {r['params']:>9,}  {shape:<14}  "
            f"{'-' if r['flops'] is None else format(r['flops'], ','):>11}  "
            f"{layer.bits if layer else 0:>9,}  {int(layer.bops) if layer else 0:>13,}"
            + (f"  {_zeros(layer):>6}" if pruned else "")
        )
    lines.append(
        f"  total: {params:,} parameters ({trainable:,} trainable), {flops} FLOPs per sample, "
        f"{cost.bits:,} bits, {int(cost.bops):,} BOPs per sample"
    )
    if pruned:
        line = f"  sparsity: {sparsity_of(network):.1%} of the Linear and Conv2d weights are zero"
        if pruning is not None:
            line += (
                f"; model.pruning: {pruning.sparsity:.1%} ({pruning.scope}) at the start of "
                f"epoch {pruning.end_epoch}"
            )
        lines.append(line)
    return "\n".join(lines)


class NetworkSummary(ModelSummary):
    """Lightning's ModelSummary callback, printing the network's layers (module docstring)."""

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the network's summary (when the module has a network and an input shape)."""
        network = getattr(pl_module, "network", None)
        shape = getattr(pl_module, "input_shape", None)
        if not isinstance(network, nn.Module) or shape is None:
            super().on_fit_start(trainer, pl_module)
            return
        pruning = getattr(pl_module, "pruning", None)
        print(format_summary(network, tuple(shape), pruning), flush=True)


def summarize_network(trainer: pl.Trainer) -> None:
    """Turn the trainer's Lightning ``ModelSummary`` into :class:`NetworkSummary` in place.

    Also Lightning's default when the ``rich`` package is installed, ``RichModelSummary``
    (whose table would list the metric objects again, without FLOPs, bits or BOPs).
    """
    for callback in trainer.callbacks:
        if type(callback) in (ModelSummary, RichModelSummary):
            callback.__class__ = NetworkSummary
