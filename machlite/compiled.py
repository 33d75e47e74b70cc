"""Compiled training steps (``model.compile: true``): several optimizer steps in one graph.

A JSC-Tiny optimizer step is about 0.1 MFLOP: nearly all of an eager step's time is the
dispatch of some 40 small kernels (forward, autograd, the optimizer update). Compiling the
module and ``optimizer.step`` separately does not remove that; compiling :data:`GROUP` whole
steps does. :class:`CompiledSteps` traces, with ``torch.compile(fullgraph=True)``, a function
that for each of the group's batches runs the network functionally
(``torch.func.functional_call``, train mode, so BatchNorm's running statistics and dropout
work as in eager), takes the gradients with ``torch.func.grad`` and applies the optimizer's
update, written out here because the update has to be inside the graph; at the end it writes
the new weights, optimizer state and buffers into the module's and optimizer's own tensors.
So between calls everything is where eager training keeps it: eager steps (a partial group,
a smaller last batch), validation, checkpoints and resume need nothing special.

The update is torch's own single-tensor formula (``torch.optim.adam._single_tensor_adam``,
``torch.optim.sgd._single_tensor_sgd``, what those optimizers run on a CPU) with the
per-step scalars (learning rate, bias corrections) computed on the host in double precision
as torch does and passed in as a tensor: a schedule changes the inputs, not the graph.
:func:`unsupported_optimizer` lists what is covered: Adam and AdamW (``weight_decay``, not
``amsgrad``) and SGD (momentum, dampening, nesterov, ``weight_decay``), not ``maximize``.

Written by hand because no library does it: ``torch.compile`` of a training step leaves
the optimizer and the step loop outside the graph, and that is where the time goes here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from machlite._compat import compile_cache_hits
from machlite.paths import compile_cache_dir

#: Optimizer steps per compiled call (fewer when ``steps_per_call`` is smaller). Each call
#: has a fixed cost of about 0.8 ms on the 2-core machine (guards, the runtime wrapper,
#: writing the results back), more than 8 JSC-Tiny steps of arithmetic at batch 32; compile
#: time grows faster than the group (JSC-Tiny: about 30 s for 4 steps, 40 s for 8, 120 s for
#: 16). docs/performance.md has the measurements.
GROUP = 8

Batch = tuple[Tensor, Tensor]


def unsupported_optimizer(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the compiled steps cannot run ``optimizer``'s update, or None when they can."""
    name = type(optimizer).__name__
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        return f"optimizer {name} is not one it writes out (Adam, AdamW, SGD)"
    for group in optimizer.param_groups:
        for option in ("amsgrad", "maximize", "differentiable", "capturable", "fused"):
            if group.get(option):
                return f"{name}({option}=True) is not supported"
        for key, value in group.items():
            if key != "params" and isinstance(value, Tensor):
                return f"{name} with a tensor {key} is not supported"
    return None


def _adam_scalars(group: dict[str, Any], step: int) -> list[float]:
    """Host-side scalars of one Adam(W) step, as torch computes them (double precision)."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    decoupled = group.get("decoupled_weight_decay", False)
    decay = 1 - lr * group["weight_decay"] if decoupled else 1.0
    return [lr / (1 - beta1**step), (1 - beta2**step) ** 0.5, decay]


def _step_counts(optimizer: torch.optim.Optimizer) -> list[int]:
    """Adam's step count per parameter group (all of a group's parameters agree)."""
    return [int(optimizer.state[g["params"][0]]["step"]) for g in optimizer.param_groups]


class CompiledSteps:
    """:data:`GROUP` optimizer steps of ``network`` with ``optimizer``, as one compiled call.

    Args:
        network: The network; its parameters are the optimizer's.
        loss_fn: ``loss_fn(outputs, labels)``, the task's loss.
        optimizer: The torch optimizer (Adam, AdamW or SGD; see :func:`unsupported_optimizer`).
        group: Steps per compiled call.

    Attributes:
        compile_seconds: Wall time of the first call, which traced and compiled the graph
            (or loaded it from torch's on-disk cache); None before it.
        from_cache: Whether the first call loaded the compiled graph from the on-disk cache
            (another process compiled the same network, batch size and group before).
    """

    def __init__(
        self,
        network: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        group: int = GROUP,
    ) -> None:
        reason = unsupported_optimizer(optimizer)
        if reason is not None:
            raise ValueError(reason)
        self.network, self.loss_fn, self.optimizer, self.group = network, loss_fn, optimizer, group
        self.kind = "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"
        owner = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        named = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
        missing = [n for n, p in named if id(p) not in owner]
        if missing:
            raise ValueError(f"parameters {missing} are not in the optimizer")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.group_of = [owner[id(p)] for p in self.params]
        self.buffer_names = [n for n, _ in network.named_buffers()]
        # Each group's hyperparameters but the learning rate, as constants of the graph: the
        # traced code reads no optimizer dict (its lr changes every epoch: a recompile).
        self.hyper = [
            {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
            for g in optimizer.param_groups
        ]
        self.compile_seconds: float | None = None
        self.from_cache = False
        self._shape: tuple[torch.Size, torch.Size] | None = None
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
        # Only the tensor guards: between calls of one fit nothing else the graph reads can
        # change (the network's structure and mode, the constants above), and the other
        # guards cost more than the JSC step's arithmetic. fits() holds the shapes fixed.
        keep = getattr(torch.compiler, "keep_tensor_guards_unsafe", None)
        options = {} if keep is None else {"guard_filter_fn": keep}
        self._fn = torch.compile(self._steps, fullgraph=True, dynamic=False, options=options)

    def ready(self) -> bool:
        """Whether the optimizer state exists (torch creates it at the first eager step)."""
        if self.kind == "sgd":
            return all(
                g["momentum"] == 0 or self.optimizer.state[p].get("momentum_buffer") is not None
                for g in self.optimizer.param_groups
                for p in g["params"]
            )
        return all("step" in self.optimizer.state[p] for p in self.params)

    def fits(self, batches: Sequence[Batch]) -> bool:
        """Whether ``batches`` can run compiled: a full group of the compiled shape."""
        if len(batches) != self.group:
            return False
        shape = (batches[0][0].shape, batches[0][1].shape)
        if any((x.shape, y.shape) != shape for x, y in batches):
            return False
        return self._shape is None or shape == self._shape

    def __call__(self, batches: Sequence[Batch], lrs: Sequence[Sequence[float]]) -> tuple:
        """Run one optimizer step per batch; return the steps' losses and outputs (detached).

        Args:
            batches: :data:`GROUP` ``(inputs, labels)`` batches of one shape.
            lrs: The learning rate of each parameter group at each step (the schedule's
                value per step).

        Returns:
            ``(losses, outputs)``: a ``[GROUP]`` tensor and a ``[GROUP, B, classes]`` one.
        """
        if self.compile_seconds is None:
            self.compile(batches)
        xs, ys, scalars = self._inputs(batches, lrs)
        with torch.no_grad():
            losses, outs = self._fn(
                self.params, list(self.network.buffers()), self._state_tensors(), xs, ys, scalars
            )
        if self.kind == "adam":
            for p in self.params:
                self.optimizer.state[p]["step"] += self.group
        return losses, outs

    def compile(self, batches: Sequence[Batch]) -> None:
        """Trace and compile the graph (or load it from the disk cache); time it.

        It runs once on copies of the weights, buffers and optimizer state, so if
        ``torch.compile`` fails nothing has changed and the caller can train eagerly.

        Args:
            batches: A group of batches of the shape to compile for.
        """
        lrs = [[float(g["lr"]) for g in self.optimizer.param_groups]] * self.group
        xs, ys, scalars = self._inputs(batches, lrs)
        params = [nn.Parameter(p.detach().clone(), requires_grad=True) for p in self.params]
        buffers = [b.clone() for b in self.network.buffers()]
        states = [[t.clone() for t in s] for s in self._state_tensors()]
        self._first_call(params, buffers, states, xs, ys, scalars)
        self._shape = (batches[0][0].shape, batches[0][1].shape)

    # -- inside ------------------------------------------------------------------------------
    def _inputs(
        self, batches: Sequence[Batch], lrs: Sequence[Sequence[float]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        xs = torch.stack([x for x, _ in batches])
        ys = torch.stack([y for _, y in batches])
        scalars = torch.tensor(self._scalars(lrs), dtype=torch.float32, device=xs.device)
        return xs, ys, scalars

    def _first_call(self, *args: Any) -> None:
        """Call the compiled function the first time (it traces and compiles); time it.

        torch's caches go to :func:`machlite.paths.compile_cache_dir` (set in ``__init__``)
        unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise. The C++ toolchain's notice that a CPU
        machine has no CUDA runtime is silenced: it is not news on a CPU run.
        """
        hits = compile_cache_hits()
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        start = time.perf_counter()
        try:
            with torch.no_grad():
                self._fn(*args)
        finally:
            quiet.setLevel(level)
        self.compile_seconds = time.perf_counter() - start
        self.from_cache = compile_cache_hits() > hits

    def _scalars(self, lrs: Sequence[Sequence[float]]) -> list[list[list[float]]]:
        """Per step and parameter group: the update's scalars (see the module docstring)."""
        groups = self.optimizer.param_groups
        if self.kind == "sgd":
            return [[[lr] for lr in step] for step in lrs]
        counts = _step_counts(self.optimizer)
        rows = []
        for k, step in enumerate(lrs):
            row = []
            for g, lr in enumerate(step):
                row.append(_adam_scalars({**groups[g], "lr": lr}, counts[g] + k + 1))
            rows.append(row)
        return rows

    def _state_tensors(self) -> list[list[Tensor]]:
        state = self.optimizer.state
        if self.kind == "sgd":
            return [[state[p]["momentum_buffer"]] if state[p] else [] for p in self.params]
        return [[state[p]["exp_avg"], state[p]["exp_avg_sq"]] for p in self.params]

    def _loss(self, params: list[Tensor], buffers: list[Tensor], x: Tensor, y: Tensor) -> tuple:
        weights = {name: params[i] for i, name in enumerate(self.names)}
        weights.update({name: buffers[i] for i, name in enumerate(self.buffer_names)})
        out = functional_call(self.network, weights, (x,))
        loss = self.loss_fn(out, y)
        return loss, (loss.detach(), out.detach())

    def _steps(
        self,
        params: list[Tensor],
        buffers: list[Tensor],
        states: list[list[Tensor]],
        xs: Tensor,
        ys: Tensor,
        scalars: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The traced function: ``len(xs)`` steps, then the results written in place."""
        new = list(params)
        moments = [list(s) for s in states]
        losses, outs = [], []
        for k in range(xs.shape[0]):
            grads, (loss, out) = grad(self._loss, has_aux=True)(new, buffers, xs[k], ys[k])
            for i, g in enumerate(grads):
                hyper = self.hyper[self.group_of[i]]
                row = scalars[k, self.group_of[i]]
                if self.kind == "adam":
                    new[i] = _adam(new[i], g, moments[i], hyper, row)
                else:
                    new[i] = _sgd(new[i], g, moments[i], hyper, row)
            losses.append(loss)
            outs.append(out)
        for i, p in enumerate(params):
            p.copy_(new[i])
            for j, tensor in enumerate(states[i]):
                tensor.copy_(moments[i][j])
        return torch.stack(losses), torch.stack(outs)


def _adam(p: Tensor, g: Tensor, m: list[Tensor], hyper: dict, row: Tensor) -> Tensor:
    """One Adam(W) update of ``p`` (``m`` = [exp_avg, exp_avg_sq], updated in the list)."""
    beta1, beta2 = hyper["betas"]
    decay = hyper["weight_decay"]
    if decay != 0:
        if hyper.get("decoupled_weight_decay", False):
            p = p * row[2]
        else:
            g = g + p * decay
    m[0] = torch.lerp(m[0], g, 1 - beta1)
    m[1] = m[1] * beta2 + (1 - beta2) * g * g  # addcmul's order: (value * g) * g
    denom = m[1].sqrt() / row[1] + hyper["eps"]
    return p - row[0] * m[0] / denom  # addcdiv's order: (value * m) / denom


def _sgd(p: Tensor, g: Tensor, m: list[Tensor], hyper: dict, row: Tensor) -> Tensor:
    """One SGD update of ``p`` (``m`` = [momentum_buffer] or [], updated in the list)."""
    if hyper["weight_decay"] != 0:
        g = g + p * hyper["weight_decay"]
    momentum = hyper["momentum"]
    if momentum != 0:
        m[0] = m[0] * momentum + g * (1 - hyper["dampening"])
        g = g + m[0] * momentum if hyper["nesterov"] else m[0]
    return p - row[0] * g


def group_lrs(
    optimizer: torch.optim.Optimizer, schedulers: Sequence[Any], steps: int
) -> list[list[float]]:
    """Each parameter group's learning rate at each of the next ``steps`` steps.

    Steps the per-step ``schedulers`` once after each step, as the eager loop does, so they
    end where the eager loop would leave them.
    """
    lrs = []
    for _ in range(steps):
        lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        for scheduler in schedulers:
            scheduler.step()
    return lrs


__all__ = ["GROUP", "CompiledSteps", "group_lrs", "unsupported_optimizer"]
