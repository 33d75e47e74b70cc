"""TEST DOUBLE: a CPU emulation of the small part of the ``poptorch`` API that Lightning 2.0.x uses.

This package is NOT poptorch and has nothing to do with Graphcore's software. It does not compile,
trace or run anything on an IPU. It emulates, in plain PyTorch on the CPU, the *observable
behaviour* of the poptorch calls made by ``lightning.pytorch`` 2.0.x (``accelerators/ipu.py``,
``strategies/ipu.py``, ``plugins/precision/ipu.py``, ``utilities/imports.py``) so that Lightning's
in-tree IPU code path can be exercised in tests on machines without IPUs. Use it only in tests: put
``tests/ipu/emulator`` on ``sys.path`` *before* ``lightning.pytorch`` is first imported.

Emulated semantics (modelled on poptorch's ``PoplarExecutor``, ``Options`` and ``DataLoader``):

* ``ipuHardwareIsAvailable()`` reports an emulated pool of ``MACHLITE_FAKE_IPU_COUNT`` IPUs
  (default 4; ``0`` makes IPUs "unavailable"). An attached executor holds ``replication_factor``
  IPUs; attaching more than the pool holds raises :class:`Error`, as hardware would.
* One call of a training executor consumes ``device_iterations * gradient_accumulation *
  replication_factor`` micro-batches taken from dim 0 of every input tensor (host layout
  ``[device_iterations, gradient_accumulation, replication_factor, micro_batch, ...]``). For every
  device iteration it runs forward + backward on each micro-batch of each replica and then one
  optimizer step; gradients are mean-reduced over accumulation and replicas (poptorch's default
  ``ReductionType.Mean``; ``Sum`` is available via ``accumulationAndReplicationReductionType``).
* The forward must return the loss tensor, or a tuple/list holding exactly one scalar tensor that
  requires grad, or mark the loss with :func:`identity_loss`. Dict outputs and dict inputs are
  rejected, like poptorch's tracer does. Outputs come back detached; training returns the last
  micro-batch's outputs (``OutputMode.Final``), inference returns all of them (``OutputMode.All``).
* Weights "live on the device": an executor keeps its own copy of every parameter and buffer, taken
  at compile / ``attachToDevice()`` / ``copyWeightsToDevice()``. The training executor writes its
  weights back to the host model after every call (poptorch does this lazily on host access; for
  any host read the result is the same). An inference executor picks up newer weights written back
  by a training executor of the same model before each call, as poptorch does.
* The optimizer state lives on the device: the training executor owns a private copy of the host
  optimizer (hyper-parameters are re-read on ``setOptimizer``), and the host optimizer's
  ``state_dict()`` is redirected to the device copy while the executor is compiled.
* The executable is fixed for the input structure, dtypes and shapes seen at the first call; a
  later call with different shapes raises :class:`Error` (e.g. a smaller last batch).

Known differences from real hardware: the Python code of ``forward`` runs eagerly on every call
(so side effects such as ``LightningModule.log`` inside a step *work* here, while Lightning
documents them as unsupported on IPUs because the step is traced once), replicas share one set of
buffers, and half-precision inputs are computed in float32.
"""

from __future__ import annotations

import copy
import enum
import logging
import os
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader as _TorchDataLoader
from torch.utils.data import Dataset, IterableDataset

__all__ = [
    "ConnectionType",
    "DataLoader",
    "Error",
    "MeanReductionStrategy",
    "Options",
    "OutputMode",
    "PoplarExecutor",
    "ReductionType",
    "inferenceModel",
    "identity_loss",
    "ipuHardwareIsAvailable",
    "isRunningOnIpu",
    "setLogLevel",
    "trainingModel",
]

__version__ = "3.3.0+emulator"
IS_EMULATOR = True
FAKE_IPU_COUNT_ENV = "MACHLITE_FAKE_IPU_COUNT"
DEFAULT_FAKE_IPU_COUNT = 4

logger = logging.getLogger("poptorch")


class Error(RuntimeError):
    """Error raised by the emulator where poptorch raises ``poptorch.Error``."""


# --------------------------------------------------------------------------------------------------
# Enums (values as in poptorch.enums)
# --------------------------------------------------------------------------------------------------
class OutputMode(enum.IntEnum):
    """Which outputs an executor returns for the micro-batches of one call."""

    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class ReductionType(enum.IntEnum):
    """How gradients are reduced over gradient accumulation and replicas."""

    Sum = 0
    Mean = 1
    NoReduction = 2


class MeanReductionStrategy(enum.IntEnum):
    """When the mean reduction is applied (numerically equivalent in the emulator)."""

    Running = 0
    Post = 1
    PostAndLoss = 2


class ConnectionType(enum.IntEnum):
    """When to attach to the device."""

    Always = 0
    OnDemand = 1
    Never = 2


enums = types.SimpleNamespace(
    OutputMode=OutputMode,
    ReductionType=ReductionType,
    MeanReductionStrategy=MeanReductionStrategy,
    ConnectionType=ConnectionType,
)


# --------------------------------------------------------------------------------------------------
# Emulated device pool
# --------------------------------------------------------------------------------------------------
def _fake_ipu_count() -> int:
    raw = os.environ.get(FAKE_IPU_COUNT_ENV, str(DEFAULT_FAKE_IPU_COUNT))
    try:
        return max(int(raw), 0)
    except ValueError as err:
        raise Error(f"{FAKE_IPU_COUNT_ENV} must be an integer, got {raw!r}") from err


_ATTACHED: weakref.WeakSet[PoplarExecutor] = weakref.WeakSet()


def _ipus_in_use() -> int:
    return sum(executor._num_ipus for executor in list(_ATTACHED))


def ipuHardwareIsAvailable(num_ipus: int = 1) -> bool:
    """Return whether the emulated pool holds at least ``num_ipus`` IPUs.

    Args:
        num_ipus: Number of IPUs required.

    Returns:
        True unless ``MACHLITE_FAKE_IPU_COUNT`` is below ``num_ipus``.
    """
    return _fake_ipu_count() >= num_ipus


def setLogLevel(level: str | int) -> None:
    """Set the level of the ``poptorch`` logger (TRACE/DEBUG/INFO/WARN/ERR/OFF or an int)."""
    names = {
        "TRACE": logging.DEBUG,
        "DEBUG": logging.DEBUG,
        "INFO": logging.INFO,
        "WARN": logging.WARNING,
        "ERR": logging.ERROR,
        "OFF": logging.CRITICAL + 1,
    }
    logger.setLevel(names[level.upper()] if isinstance(level, str) else level)


_RUNNING_ON_IPU = False
_LOSS_MARKS: list[torch.Tensor] | None = None


def isRunningOnIpu() -> bool:
    """Return True while an executor is running the model on the emulated device."""
    return _RUNNING_ON_IPU


def identity_loss(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mark ``x`` (reduced by ``reduction``: "sum", "mean" or "none") as the model's loss.

    Args:
        x: The loss tensor.
        reduction: How to reduce ``x`` to the loss.

    Returns:
        The reduced tensor, which the training executor back-propagates.
    """
    if reduction == "sum":
        loss = x.sum()
    elif reduction == "mean":
        loss = x.mean()
    elif reduction == "none":
        loss = x
    else:
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    if _LOSS_MARKS is not None:
        _LOSS_MARKS.append(loss)
    return loss


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
class _OptionsDict:
    """Dictionary of options: only keys given to the constructor can be set, with the same type."""

    def __init__(self, **defaults: Any) -> None:
        self.__dict__["_values"] = dict(defaults)
        self.__dict__["_frozen"] = False

    def _check_not_frozen(self) -> None:
        if self._frozen:
            raise Error(
                "Options cannot be modified once they have been used to create a model "
                "(use options.clone() to get a modifiable copy)"
            )

    def set(self, **kwargs: Any) -> None:
        """Set existing options (type-checked like poptorch)."""
        self._check_not_frozen()
        for option, value in kwargs.items():
            assert option in self._values, (
                f"Invalid option {option}, valid options are {self._values.keys()}"
            )
            assert isinstance(value, type(self._values[option])), (
                f"Unexpected type {type(value)} for option {option}. "
                f"Expected {type(self._values[option])}"
            )
            self._values[option] = value

    def createOrSet(self, **kwargs: Any) -> None:
        """Set options, creating the ones that do not exist yet."""
        self._check_not_frozen()
        for option, value in kwargs.items():
            if option in self._values:
                self.set(**{option: value})
            else:
                self._values[option] = value

    def exists(self, option: str) -> bool:
        """Return whether ``option`` exists."""
        return option in self._values

    def _freeze(self) -> None:
        self.__dict__["_frozen"] = True

    def __getattr__(self, option: str) -> Any:
        values = self.__dict__.get("_values", {})
        if option.startswith("__") or option not in values:
            raise AttributeError(f"Invalid option {option}, valid options are {list(values)}")
        return values[option]

    def update(self, other: dict[str, Any]) -> dict[str, Any]:
        """Merge these options into ``other`` (keys must not overlap) and return it."""
        assert not set(self._values).intersection(other), (
            "Can't merge dictionaries, they have some keys in common"
        )
        other.update(self._values)
        return other

    def toDict(self) -> dict[str, Any]:
        """Return the options as a plain dictionary."""
        return self.update({})

    def __call__(self, option: str) -> Any:
        assert option in self._values, (
            f"Invalid option {option}, valid options are {self._values.keys()}"
        )
        return self._values[option]


class _TrainingOptions(_OptionsDict):
    """Training options: ``Options().Training``."""

    def __init__(self) -> None:
        super().__init__(
            gradient_accumulation=1,
            accumulation_and_replication_reduction_type=int(ReductionType.Mean),
            mean_accumulation_and_replication_reduction_strategy=int(MeanReductionStrategy.Post),
        )

    def gradientAccumulation(self, gradient_accumulation: int) -> _TrainingOptions:
        """Number of micro-batches whose gradients are accumulated before each optimizer step."""
        self.set(gradient_accumulation=gradient_accumulation)
        return self

    def accumulationAndReplicationReductionType(
        self, reduction_type: ReductionType
    ) -> _TrainingOptions:
        """Reduce accumulated and replicated gradients by ``Mean`` (default) or ``Sum``."""
        assert reduction_type in (ReductionType.Mean, ReductionType.Sum), (
            "Only Mean and Sum are supported"
        )
        self.set(accumulation_and_replication_reduction_type=int(reduction_type))
        return self

    def setMeanAccumulationAndReplicationReductionStrategy(
        self, strategy: MeanReductionStrategy
    ) -> _TrainingOptions:
        """Accepted for API compatibility; numerically irrelevant in the emulator."""
        self.set(mean_accumulation_and_replication_reduction_strategy=int(strategy))
        return self


class Options(_OptionsDict):
    """Emulation of ``poptorch.Options``: setters return ``self`` so they can be chained."""

    def __init__(self) -> None:
        super().__init__(
            replication_factor=1,
            device_iterations=1,
            output_mode=int(OutputMode.Default),
            output_return_period=1,
            connection_type=int(ConnectionType.Always),
            auto_round_num_ipus=False,
            log_dir=".",
        )
        self.__dict__["_training"] = _TrainingOptions()

    @property
    def Training(self) -> _TrainingOptions:
        """Options specific to training."""
        return self.__dict__["_training"]

    def _freeze(self) -> None:
        super()._freeze()
        self.Training._freeze()

    def deviceIterations(self, device_iterations: int) -> Options:
        """Number of iterations the device runs per call (each consumes one batch per replica)."""
        self.set(device_iterations=device_iterations)
        return self

    def replicationFactor(self, replication_factor: int) -> Options:
        """Number of data-parallel replicas (IPUs)."""
        self.set(replication_factor=replication_factor)
        return self

    def randomSeed(self, random_seed: int) -> Options:
        """Seed the device RNG; like poptorch this also calls ``torch.manual_seed``."""
        assert isinstance(random_seed, int)
        torch.manual_seed(random_seed)
        self.createOrSet(random_seed=random_seed)
        return self

    def useIpuModel(self, use_model: bool) -> Options:
        """Select the IPU Model simulator (recorded only)."""
        self.createOrSet(use_model=use_model)
        return self

    def autoRoundNumIPUs(self, auto_round_num_ipus: bool = True) -> Options:
        """Round the number of IPUs up to a power of two (recorded only)."""
        self.set(auto_round_num_ipus=auto_round_num_ipus)
        return self

    def logDir(self, log_dir: str) -> Options:
        """Set the log directory (recorded only)."""
        self.set(log_dir=log_dir)
        return self

    def enableExecutableCaching(self, path: str | None) -> Options:
        """Record the executable cache path (no effect)."""
        self.createOrSet(executable_cache_dir=path or "")
        return self

    def connectionType(self, connection_type: ConnectionType) -> Options:
        """When to attach to the device; ``Never`` forbids running."""
        assert isinstance(connection_type, ConnectionType)
        self.set(connection_type=int(connection_type))
        return self

    def outputMode(
        self, output_mode: OutputMode, output_return_period: int | None = None
    ) -> Options:
        """Which outputs to return: ``All``, ``Final``, ``Sum`` or ``EveryN`` device iterations."""
        assert isinstance(output_mode, OutputMode)
        if output_mode == OutputMode.EveryN:
            assert output_return_period and output_return_period > 0, (
                "EveryN needs output_return_period > 0"
            )
        self.set(output_mode=int(output_mode), output_return_period=output_return_period or 1)
        return self

    def defaultOutputMode(self) -> bool:
        """Return whether the output mode is still the default."""
        return self.output_mode == OutputMode.Default

    def toDict(self) -> dict[str, Any]:
        """Merge these options and the training options into one dictionary."""
        assert not self.defaultOutputMode(), "An output mode must be picked before serialisation"
        return self.Training.update(self.update({}))

    def clone(self) -> Options:
        """Return an unfrozen deep copy."""
        clone = copy.deepcopy(self)
        clone.__dict__["_frozen"] = False
        clone.Training.__dict__["_frozen"] = False
        return clone

    def __repr__(self) -> str:
        return f"Options({self._values!r}, Training={self.Training._values!r})"


# --------------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------------
class DataLoader(_TorchDataLoader):
    """Emulation of ``poptorch.DataLoader``: one batch holds every micro-batch of one device call.

    The effective batch size is ``batch_size * device_iterations * replication_factor *
    gradient_accumulation`` and ``drop_last`` defaults to True, as in poptorch.
    """

    def __init__(
        self,
        options: Options,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool = False,
        num_workers: int = 0,
        drop_last: bool = True,
        persistent_workers: bool | None = None,
        **kwargs: Any,
    ) -> None:
        assert isinstance(options, Options), "options must be a poptorch.Options"
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        self._options = options
        if batch_size is None:
            self._combined_batch_size: int | None = None
        else:
            self._combined_batch_size = (
                batch_size
                * options.device_iterations
                * options.replication_factor
                * options.Training.gradient_accumulation
            )
        if not isinstance(dataset, IterableDataset) and self._combined_batch_size is not None:
            num_elts = len(dataset)  # type: ignore[arg-type]
            assert drop_last or num_elts % self._combined_batch_size == 0, (
                f"The number of elements in the dataset ({num_elts}) is not divisible by the"
                f" number of elements processed per step ({self._combined_batch_size}) and"
                " drop_last=False."
                " Switch to drop_last=True."
            )
        super().__init__(
            dataset,
            batch_size=self._combined_batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            drop_last=drop_last,
            persistent_workers=persistent_workers,
            **kwargs,
        )

    @property
    def combinedBatchSize(self) -> int | None:
        """Number of dataset elements consumed by one executor call."""
        return self._combined_batch_size

    @property
    def options(self) -> Options:
        """The options this loader was created with."""
        return self._options


# --------------------------------------------------------------------------------------------------
# Structure helpers
# --------------------------------------------------------------------------------------------------
def _map_leaves(data: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(data, (tuple, list)):
        return type(data)(_map_leaves(d, fn) for d in data)
    return fn(data)


def _reject_dicts(data: Any, name: str) -> None:
    if isinstance(data, dict):
        raise TypeError(
            "Dictionaries are not supported as input arguments, including when nested in tuples.\n"
            f"Received dict {name} = {data}"
        )
    if isinstance(data, (tuple, list)):
        for item in data:
            _reject_dicts(item, name)


def _lists_to_tuples(data: Any) -> Any:
    if isinstance(data, (tuple, list)):
        return tuple(_lists_to_tuples(d) for d in data)
    return data


def _signature(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return ("tensor", data.dtype, tuple(data.shape))
    if isinstance(data, tuple):
        return tuple(_signature(d) for d in data)
    if isinstance(data, dict):
        return {k: _signature(v) for k, v in data.items()}
    return ("constant", type(data), data)


def _combine(outputs: Sequence[Any], mode: OutputMode) -> Any:
    """Combine per-micro-batch outputs the way the host receives them."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        if mode == OutputMode.Sum:
            return torch.stack(list(outputs)).sum(0)
        if len(outputs) == 1:
            return first
        if first.dim() == 0:
            return torch.stack(list(outputs))
        return torch.cat(list(outputs), dim=0)
    if isinstance(first, (tuple, list)):
        return [_combine([o[i] for o in outputs], mode) for i in range(len(first))]
    return outputs[-1]


def _assign_backward_error(output: Any) -> Any:
    def error_on_backward(*_: Any, **__: Any) -> None:
        raise Error(
            "backward() cannot be called explicitly on outputs of a PopTorch model. If you're "
            "using a trainingModel, the backwards pass is performed automatically when invoking "
            "the model."
        )

    def assign(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            t.backward = error_on_backward  # type: ignore[method-assign]
        return t

    return _map_leaves(output, assign)


# --------------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------------
class _EmulatedExecutable:
    """Stands in for the compiled Poplar executable (only its existence and input signature)."""

    def __init__(self, signature: Any) -> None:
        self.signature = signature


_HOST_WEIGHTS_VERSION: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


class PoplarExecutor:
    """Emulated ``poptorch.PoplarExecutor``, returned by ``trainingModel``/``inferenceModel``."""

    def __init__(
        self,
        model: torch.nn.Module,
        options: Options | None,
        training: bool,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if options is not None:
            if not isinstance(options, Options):
                raise Error(
                    f"Invalid type: 'options' is of type {type(options)} "
                    "(Expected poptorch.Options)"
                )
            options._freeze()
            options = options.clone()
        else:
            options = Options()
        if training:
            if options.defaultOutputMode():
                options.outputMode(OutputMode.Final)
            if optimizer is None:
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        else:
            if options.defaultOutputMode():
                options.outputMode(OutputMode.All)
            if options.Training.gradient_accumulation != 1:
                raise Error(
                    "You must set poptorch.Options().Training.gradientAccumulation to 1 or leave "
                    "it as its default value (1) when running a poptorch.inferenceModel()."
                )
            assert optimizer is None, "Optimizer should be None for inference"
        options._freeze()
        self._user_model = model
        self._model = model
        self._options = options
        self._training = training
        self._executable: _EmulatedExecutable | None = None
        self._is_attached = False
        self._device_state: dict[str, torch.Tensor] = {}
        self._host_weights_version = 0
        self._new_optimizer: torch.optim.Optimizer | None = optimizer
        self._device_optimizer: torch.optim.Optimizer | None = None
        self._patched_optimizer: torch.optim.Optimizer | None = None
        self._emulator_stats = {"compiles": 0, "calls": 0, "micro_batches": 0, "optimizer_steps": 0}
        if training:
            _HOST_WEIGHTS_VERSION.setdefault(model, 0)

    # ---------------------------------------------------------------- passthroughs
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or "_user_model" not in self.__dict__:
            raise AttributeError(attr)
        return getattr(self.__dict__["_user_model"], attr)

    def __repr__(self) -> str:
        kind = "training" if self._training else "inference"
        return f"PoplarExecutor[emulated {kind}]({self._user_model.__class__.__name__})"

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped (host) model."""
        return self._user_model

    @property
    def options(self) -> Options:
        """The (frozen) options of this executor."""
        return self._options

    @property
    def training(self) -> bool:
        """Whether this is a training executor."""
        return self._training

    @property
    def _num_ipus(self) -> int:
        return int(self._options.replication_factor)

    # ---------------------------------------------------------------- device management
    def isCompiled(self) -> bool:
        """Return whether the model has been compiled (and not destroyed)."""
        return self._executable is not None

    def isAttachedToDevice(self) -> bool:
        """Return whether the executor holds its IPUs."""
        return self.isCompiled() and self._is_attached

    def _acquire(self) -> None:
        if self._options.connection_type == ConnectionType.Never:
            raise Error("Trying to attach to an offline device (ConnectionType.Never)")
        free = _fake_ipu_count() - _ipus_in_use()
        if self._num_ipus > free:
            raise Error(
                f"Failed to acquire {self._num_ipus} IPU(s): only {max(free, 0)} of the emulated "
                f"{_fake_ipu_count()} ({FAKE_IPU_COUNT_ENV}) are free. "
                "Detach the other models first."
            )
        _ATTACHED.add(self)
        self._is_attached = True

    def _release(self) -> None:
        _ATTACHED.discard(self)
        self._is_attached = False

    def attachToDevice(self) -> None:
        """Attach to the device and upload the host weights (optimizer state is kept)."""
        if not self.isCompiled():
            raise Error("Model has not been compiled or has been destroyed.")
        if self._is_attached:
            raise Error("Device is already attached")
        self._acquire()
        self.copyWeightsToDevice()

    def detachFromDevice(self) -> None:
        """Write the weights back to the host (training) and release the IPUs."""
        if not self.isCompiled():
            raise Error("Model has not been compiled or has been destroyed.")
        if self._training:
            self.copyWeightsToHost()
        if not self._is_attached:
            raise Error("Device is not attached")
        self._release()

    def destroy(self) -> None:
        """Release IPUs and executable; the host keeps the latest weights and optimizer state."""
        if not self.isCompiled():
            return
        if self._training:
            self.copyWeightsToHost()
            self._restore_host_optimizer()
        self._release()
        self._executable = None
        self._device_state = {}
        self._device_optimizer = None

    # ---------------------------------------------------------------- weights
    def _named_tensors(self) -> dict[str, torch.Tensor]:
        named: dict[str, torch.Tensor] = dict(self._model.named_parameters())
        named.update(dict(self._model.named_buffers()))
        return named

    def copyWeightsToDevice(self) -> None:
        """Upload the host weights (parameters and buffers) to the device copy."""
        if not self.isCompiled():
            raise Error("Model has not been compiled or has been destroyed.")
        with torch.no_grad():
            self._device_state = {
                name: t.detach().clone() for name, t in self._named_tensors().items()
            }
        if not self._training:
            self._host_weights_version = _HOST_WEIGHTS_VERSION.get(self._user_model, 0)

    def copyWeightsToHost(self) -> None:
        """Write the device weights back into the host model."""
        if not self.isCompiled():
            raise Error("Model has not been compiled or has been destroyed.")
        with torch.no_grad():
            for name, tensor in self._named_tensors().items():
                tensor.data.copy_(self._device_state[name])
        if self._training:
            _HOST_WEIGHTS_VERSION[self._user_model] = (
                _HOST_WEIGHTS_VERSION.get(self._user_model, 0) + 1
            )

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any:
        """Load weights into the host model and, when attached, into the device copy."""
        out = self._user_model.load_state_dict(state_dict, strict)
        if self.isAttachedToDevice():
            self.copyWeightsToDevice()
        return out

    # ---------------------------------------------------------------- optimizer
    def setOptimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Use ``optimizer``'s hyper-parameters (and, for a new optimizer, its state) on device."""
        if not self._training:
            raise Error("setOptimizer() is only available for training models")
        if optimizer is not self._new_optimizer:
            self._restore_host_optimizer()
            self._new_optimizer = optimizer
            if self.isCompiled():
                self._build_device_optimizer()
            return
        if self._device_optimizer is not None:
            for host_group, device_group in zip(
                optimizer.param_groups, self._device_optimizer.param_groups, strict=False
            ):
                for key, value in host_group.items():
                    if key != "params":
                        device_group[key] = value

    def _build_device_optimizer(self) -> None:
        host = self._new_optimizer
        assert host is not None
        known = {id(p) for p in self._model.parameters()}
        for group in host.param_groups:
            for p in group["params"]:
                if id(p) not in known:
                    raise Error("The optimizer holds a parameter that is not part of the model")
        groups = [dict(group) for group in host.param_groups]
        device = type(host)(groups)
        device.load_state_dict(type(host).state_dict(host))
        self._device_optimizer = device
        # like poptorch: the host optimizer's state_dict() reads the state held on the device
        host.state_dict = device.state_dict  # type: ignore[method-assign]
        self._patched_optimizer = host

    def _restore_host_optimizer(self) -> None:
        host = self._patched_optimizer
        if host is None:
            return
        if "state_dict" in host.__dict__:
            del host.__dict__["state_dict"]
        if self._device_optimizer is not None:
            host.load_state_dict(self._device_optimizer.state_dict())
        self._patched_optimizer = None

    # ---------------------------------------------------------------- execution
    @property
    def _combined_factor(self) -> int:
        o = self._options
        return int(o.device_iterations * o.Training.gradient_accumulation * o.replication_factor)

    def _prepare_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        for i, arg in enumerate(args):
            _reject_dicts(arg, f"args[{i}]")
        for key, value in kwargs.items():
            _reject_dicts(value, key)

        def upcast(t: Any) -> Any:
            if isinstance(t, torch.Tensor):
                t = t.detach()
                if t.dtype == torch.half:
                    t = t.float()
                return t.contiguous()
            return t

        args = tuple(_map_leaves(_lists_to_tuples(a), upcast) for a in args)
        kwargs = {k: _map_leaves(_lists_to_tuples(v), upcast) for k, v in kwargs.items()}
        return args, kwargs

    def _split(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        factor = self._combined_factor
        o = self._options

        def check(t: Any) -> Any:
            if isinstance(t, torch.Tensor):
                size = t.shape[0] if t.dim() > 0 else 1
                if size % factor:
                    raise Error(
                        f"Invalid batch dimension: In the input {tuple(t.shape)}, the batch "
                        f"dimension ({size}) "
                        f"must be a multiple of Options.deviceIterations({o.device_iterations}) * "
                        f"Options.replicationFactor({o.replication_factor}) * "
                        "Options.Training.gradientAccumulation("
                        f"{o.Training.gradient_accumulation}) = {factor}"
                    )
            return t

        _map_leaves((args, tuple(kwargs.values())), check)

        def take(m: int) -> Callable[[Any], Any]:
            def fn(t: Any) -> Any:
                if isinstance(t, torch.Tensor) and t.dim() > 0:
                    micro = t.shape[0] // factor
                    return t[m * micro : (m + 1) * micro]
                return t

            return fn

        return [
            (
                tuple(_map_leaves(a, take(m)) for a in args),
                {k: _map_leaves(v, take(m)) for k, v in kwargs.items()},
            )
            for m in range(factor)
        ]

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile for these inputs without running (no-op if already compiled)."""
        if self.isCompiled():
            logger.warning("Call to compile() ignored: the executable is already compiled")
            return
        args, kwargs = self._prepare_inputs(args, kwargs)
        self._compile(args, kwargs)

    def _compile(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._split(args, kwargs)  # validates the batch dimension like poptorch's trace would
        self._executable = _EmulatedExecutable(_signature((args, kwargs)))
        self._emulator_stats["compiles"] += 1
        if self._options.connection_type == ConnectionType.Always:
            self._acquire()
            self.copyWeightsToDevice()
        if self._training:
            self._build_device_optimizer()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one device call (compiling and attaching first if needed)."""
        if self._options.connection_type == ConnectionType.Never:
            raise Error("Trying to run a model on an offline device (ConnectionType.Never)")
        args, kwargs = self._prepare_inputs(args, kwargs)
        if not self.isCompiled():
            self._compile(args, kwargs)
        elif _signature((args, kwargs)) != self._executable.signature:  # type: ignore[union-attr]
            raise Error(
                "The inputs passed at runtime don't match the inputs used to compile the model "
                f"(compiled for {self._executable.signature}, got {_signature((args, kwargs))}). "  # type: ignore[union-attr]
                "To recompile the model for the new inputs create a new inferenceModel / "
                "trainingModel wrapper or call destroy() on the current one and try again."
            )
        if not self._is_attached:
            self.attachToDevice()
        if not self._training and self._user_model in _HOST_WEIGHTS_VERSION:
            if _HOST_WEIGHTS_VERSION[self._user_model] != self._host_weights_version:
                self.copyWeightsToDevice()
        micro_batches = self._split(args, kwargs)
        self._emulator_stats["calls"] += 1
        with self._weights_on_device():
            outputs = (
                self._run_training(micro_batches)
                if self._training
                else self._run_inference(micro_batches)
            )
        if self._training:
            self.copyWeightsToHost()
        if outputs is None:
            return None
        return _assign_backward_error(outputs)

    def _weights_on_device(self) -> _DeviceWeights:
        return _DeviceWeights(self)

    def _select_outputs(self, per_micro: list[Any]) -> Any:
        o = self._options
        mode = OutputMode(o.output_mode)
        ga = o.Training.gradient_accumulation if self._training else 1
        rep = o.replication_factor
        per_iteration = ga * rep
        if mode == OutputMode.Final:
            chosen = per_micro[-rep:]
        elif mode == OutputMode.EveryN:
            period = o.output_return_period
            chosen = [
                out
                for i in range(o.device_iterations)
                if (i + 1) % period == 0
                for out in per_micro[
                    i * per_iteration + per_iteration - rep : (i + 1) * per_iteration
                ]
            ]
        else:
            chosen = per_micro
        if not chosen or all(out is None for out in chosen):
            return None
        return _combine(chosen, mode)

    def _run_inference(self, micro_batches: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> Any:
        per_micro = []
        with torch.no_grad():
            for micro_args, micro_kwargs in micro_batches:
                per_micro.append(self._model(*micro_args, **micro_kwargs))
                self._emulator_stats["micro_batches"] += 1
        per_micro = [
            _map_leaves(out, lambda t: t.detach() if isinstance(t, torch.Tensor) else t)
            for out in per_micro
        ]
        return self._select_outputs(per_micro)

    def _run_training(self, micro_batches: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> Any:
        global _LOSS_MARKS
        o = self._options
        optimizer = self._device_optimizer
        assert optimizer is not None
        per_step = o.Training.gradient_accumulation * o.replication_factor
        mean = o.Training.accumulation_and_replication_reduction_type == ReductionType.Mean
        scale = 1.0 / per_step if mean else 1.0
        per_micro = []
        optimizer.zero_grad(set_to_none=True)
        for index, (micro_args, micro_kwargs) in enumerate(micro_batches):
            previous, _LOSS_MARKS = _LOSS_MARKS, []
            try:
                with torch.enable_grad():
                    output = self._model(*micro_args, **micro_kwargs)
                    loss = self._find_loss(output, _LOSS_MARKS)
                    (loss * scale).backward()
            finally:
                _LOSS_MARKS = previous
            per_micro.append(
                _map_leaves(output, lambda t: t.detach() if isinstance(t, torch.Tensor) else t)
            )
            self._emulator_stats["micro_batches"] += 1
            if (index + 1) % per_step == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self._emulator_stats["optimizer_steps"] += 1
        return self._select_outputs(per_micro)

    @staticmethod
    def _find_loss(output: Any, marked: list[torch.Tensor]) -> torch.Tensor:
        if isinstance(output, dict):
            raise Error(
                "Dictionaries are not supported as model outputs by the poptorch tracer: return "
                "the loss tensor (a LightningModule's training_step must return the loss tensor "
                "on IPUs)"
            )
        if marked:
            loss = marked[-1]
        elif isinstance(output, torch.Tensor):
            loss = output
        elif isinstance(output, (tuple, list)):
            candidates = [
                t
                for t in output
                if isinstance(t, torch.Tensor) and t.numel() == 1 and t.requires_grad
            ]
            if len(candidates) != 1:
                raise Error(
                    "Could not identify the loss among the model outputs: return the loss tensor "
                    "or mark it with poptorch.identity_loss(loss, reduction='none')"
                )
            loss = candidates[0]
        else:
            raise Error(
                f"A training model must return the loss tensor, got {type(output).__name__}"
            )
        if not loss.requires_grad:
            raise Error("The loss does not depend on any trainable parameter")
        if loss.numel() != 1:
            raise Error(
                f"The loss must be a scalar, got shape {tuple(loss.shape)}: reduce it or use "
                "poptorch.identity_loss(x, reduction='sum' | 'mean')"
            )
        return loss.reshape(())


class _DeviceWeights:
    """Context manager: the model computes with the executor's device weights and gradients."""

    def __init__(self, executor: PoplarExecutor) -> None:
        self._executor = executor
        self._backup: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __enter__(self) -> None:
        global _RUNNING_ON_IPU
        executor = self._executor
        for name, tensor in executor._named_tensors().items():
            self._backup[name] = (tensor.data, tensor.grad)
            tensor.data = executor._device_state[name]
            tensor.grad = None
        _RUNNING_ON_IPU = True

    def __exit__(self, *exc: Any) -> None:
        global _RUNNING_ON_IPU
        _RUNNING_ON_IPU = False
        executor = self._executor
        for name, tensor in executor._named_tensors().items():
            executor._device_state[name] = tensor.data
            host_data, host_grad = self._backup[name]
            tensor.data = host_data
            tensor.grad = host_grad


def trainingModel(
    model: torch.nn.Module,
    options: Options | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> PoplarExecutor:
    """Wrap ``model`` for training on the emulated device.

    Args:
        model: The model; its forward must return the loss (see the module docstring).
        options: Device options (frozen by this call; the executor keeps a clone).
        optimizer: The host optimizer whose hyper-parameters and state are used on the device.

    Returns:
        The training executor.
    """
    return PoplarExecutor(model=model, options=options, training=True, optimizer=optimizer)


def inferenceModel(model: torch.nn.Module, options: Options | None = None) -> PoplarExecutor:
    """Wrap ``model`` for inference on the emulated device.

    Args:
        model: The model.
        options: Device options (frozen by this call; the executor keeps a clone).

    Returns:
        The inference executor.
    """
    return PoplarExecutor(model=model, options=options, training=False)
