"""One-line explanations of what the libraries below machlite report at length.

- :class:`OneLineArgumentParser`: jsonargparse prints the whole usage and a nested, many-line
  error for a mistyped key or a bad value; this parser prints one line,
  ``machlite: error: data.batch_size: ...``, and exits with code 2 (it raises
  :class:`~machlite.errors.BadArguments`; ``machlite.commands`` prints it).
- :func:`explain`: turns errors raised while a subcommand runs (a checkpoint that does not fit
  the network, an optimizer rejecting its learning rate, a disk that fills up, a folder that
  cannot be written) into a one-line :class:`~machlite.errors.MachliteError`.
"""

from __future__ import annotations

import re
import traceback
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser
from torch import nn

from machlite.errors import (
    DISK_FULL,
    NOT_WRITABLE,
    BadArguments,
    ConfigError,
    DataError,
    DiskFullError,
    MachliteError,
    os_error_message,
)

#: Lines of jsonargparse's nested messages that carry no information for the user.
_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: |Errors:$|"
    r"Given value type: |Given value: |Problem with given class_path |Parser key |"
    r"Expected a <class 'NoneType'>$|Expected a path but .* either not accessible or invalid|"
    r"Expected a dot import path string|tip: )"
)
_TYPE = re.compile(r"Expected a <class '([\w.]+)'>")


def one_line_parse_error(message: str) -> str:
    """Condense a jsonargparse error message to one line naming the key and the problem.

    Examples of the result: ``data.batch_size: not of type PositiveInt: 0 does not conform to
    restriction v>0``, ``optimizer.lr: expected a float, got 'fast'``, ``model.network:
    unknown class 'machlite.models.JSCTinny' (module 'machlite.models' has no attribute
    'JSCTinny')``.
    """
    lines = [ln.strip() for ln in message.strip().splitlines()]
    if len(lines) <= 1:
        return re.sub(r'^Parser key "([^"]+)":\s*', r"\1: ", lines[0]) if lines else "bad arguments"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    given = re.search(r"^\s*Given value: (.*)$", message, flags=re.MULTILINE)
    reasons: list[str] = []
    for line in lines:
        line = line.removeprefix("- ").strip()
        if not line or _NOISE.match(line):
            continue
        line = _TYPE.sub(lambda m: f"expected a value of type {m.group(1)}", line)
        if line not in reasons:
            reasons.append(line)
    key = ".".join(keys)
    if not keys or not reasons:  # e.g. a YAML syntax error: keep it all, on one line
        return re.sub(r"\s+", " ", message.strip())
    missing = next((r for r in reasons if "has no attribute" in r or "No module named" in r), None)
    if missing and classes:
        hint = "; `machlite models` lists the networks" if key.endswith("network") else ""
        return f"{key}: unknown class '{classes[0]}' ({missing}){hint}"
    option = next((r for r in reasons if re.match(r"Option '.*' is not accepted", r)), None)
    if option and classes:
        name = re.match(r"Option '(.*)' is not accepted", option).group(1)
        return f"{key}.{name}: {classes[0]} has no option '{name}' (misspelt?)"
    text = "; ".join(reasons)
    value = given.group(1) if given else ""
    if value and "NestedArg" not in value:
        if not re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", text):
            text += f", got {value!r}"
    return f"{key}: {text}"


class OneLineArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line: it raises BadArguments (exit 2)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Raise BadArguments ``KEY: PROBLEM (see: machlite SUBCOMMAND --help)`` (exit 2)."""
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        words = re.sub(r"\s*\[options\]", "", parser.prog or "").split()
        prog = f"machlite {words[-1]}" if len(words) > 1 else "machlite"
        raise BadArguments(f"{one_line_parse_error(message)} (see: {prog} --help)")


def _state_dict_mismatch(model: nn.Module | None, ckpt_path: Any, err: RuntimeError) -> ConfigError:
    """Explain a checkpoint whose weights do not fit the configured network."""
    name = type(getattr(model, "network", model)).__name__
    detail = ""
    if model is not None and ckpt_path:
        try:
            from machlite.checkpoint import load_checkpoint_file

            saved = load_checkpoint_file(ckpt_path, "cpu", True).get("state_dict", {})
            own = model.state_dict()
            missing = [k for k in own if k not in saved]
            unexpected = [k for k in saved if k not in own]
            shapes = [
                f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
                for k, v in own.items()
                if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape
            ]
            parts = []
            if shapes:
                parts.append(f"{len(shapes)} shape(s) differ, e.g. {shapes[0]} (checkpoint vs net)")
            if missing:
                parts.append(f"{len(missing)} weight(s) missing, e.g. {missing[0]}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
            detail = f" ({'; '.join(parts)})" if parts else ""
        except MachliteError:
            detail = ""
    return ConfigError(
        f"checkpoint {ckpt_path} does not match the network {name}{detail}: use the config "
        "(and --model.network) the checkpoint was trained with"
    )


def _raised_in(err: BaseException, package: str) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in ``package`` (e.g. torch/optim)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and package in frames[-1].filename.replace("\\", "/")


def explain(err: BaseException, model: nn.Module | None = None, ckpt_path: Any = None) -> None:
    """Raise a one-line MachliteError for ``err`` when it is a user-fixable problem.

    Returns without raising when ``err`` is not one machlite knows how to explain; the caller
    then re-raises it unchanged.
    """
    if isinstance(err, MachliteError):
        return
    cause = err.__cause__  # jsonargparse wraps a config class's own one-line error
    if isinstance(err, ValueError) and isinstance(cause, MachliteError):
        raise cause
    if isinstance(err, RuntimeError) and str(err).startswith("Error(s) in loading state_dict"):
        raise _state_dict_mismatch(model, ckpt_path, err) from err
    if isinstance(err, ValueError | TypeError | RuntimeError) and _raised_in(err, "torch/optim/"):
        # torch.optim rejects a value (``Invalid learning rate: -1.0``) or cannot use it
        kind = "lr_scheduler" if _raised_in(err, "lr_scheduler") else "optimizer"
        raise ConfigError(
            f"{kind}: {str(err).strip().splitlines()[0]}: check the {kind} values "
            f"(--{kind}.help CLASS lists them)"
        ) from err
    if isinstance(err, ValueError) and _raised_in(err, "lightning/pytorch/trainer/"):
        # e.g. "You selected an invalid accelerator name: ..."
        raise ConfigError(f"trainer: {str(err).strip().splitlines()[0]}") from err
    if isinstance(err, OSError) and err.errno in DISK_FULL | NOT_WRITABLE:
        error = DiskFullError if err.errno in DISK_FULL else DataError
        raise error(os_error_message(err, "a file")) from err


__all__ = ["OneLineArgumentParser", "explain", "one_line_parse_error"]
