"""The ``--config`` files of a command line: errors named with their file, line and column.

jsonargparse merges every ``--config`` before it reports a problem, so its YAML syntax errors
name ``"<unicode string>"`` and its bad keys name no file. Before LightningCLI parses,
:func:`check_config_syntax` reads each ``--config``/``-c`` given (a path, or inline YAML
text as the sweep's ``--dry_run`` prints) and names the broken one with the line and column
(:func:`yaml_error_message`). When the combined parse fails on a key,
:func:`name_config_file` adds the file that introduced that key to the one-line message.
:func:`read_model_block` reads one ``model`` block (``quantization``, ``pruning``) from a
file that holds the block itself or a whole machlite config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from machlite.errors import BadArguments, ConfigError

_CONFIG_FLAGS = ("--config", "-c")
#: The key a one-line parse error is about: ``KEY: ...`` or ``... option 'KEY'``.
_KEY_PATTERNS = (re.compile(r"^([A-Za-z_][\w.]*): "), re.compile(r"option '([A-Za-z_][\w.]*)'"))


def config_values(args: list[str]) -> list[str]:
    """The values given to ``--config`` / ``-c`` (``--config X`` or ``--config=X``), in order."""
    values = []
    for i, arg in enumerate(args):
        if arg in _CONFIG_FLAGS and i + 1 < len(args):
            values.append(args[i + 1])
        else:
            flag, eq, value = arg.partition("=")
            if eq and flag in _CONFIG_FLAGS:
                values.append(value)
    return values


def yaml_error_message(err: yaml.YAMLError, where: str) -> str:
    """One line: ``WHERE, line L, column C: PROBLEM (CONTEXT): fix the YAML there``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context += f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
    detail = f"{problem} ({context})" if context else problem
    return f"{where}{at}: {detail}: fix the YAML there"


def _load(value: str) -> tuple[str, Any]:
    """``(where, data)`` of one ``--config`` value; raise BadArguments on a YAML error."""
    path = Path(value)
    try:
        is_file = "\n" not in value and path.is_file()
    except OSError:  # e.g. a name too long: inline text
        is_file = False
    where = f"config file {value}" if is_file else "the --config text"
    try:
        text = path.read_text(encoding="utf-8") if is_file else value
    except (OSError, UnicodeDecodeError):
        return where, None  # jsonargparse says it cannot read it
    try:
        return where, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BadArguments(yaml_error_message(err, where)) from None


def check_config_syntax(args: list[str]) -> None:
    """Raise BadArguments naming the first ``--config`` whose YAML does not parse.

    A value that is not a file is read as inline YAML text ("the --config text"); a missing
    file is left to jsonargparse ("File does not exist").
    """
    for value in config_values(args):
        _load(value)


def _defines(data: Any, key: list[str]) -> bool:
    """Whether a config mapping sets ``key`` (dotted, ``init_args`` levels skipped)."""
    if not key:
        return True
    if not isinstance(data, dict):
        return False
    if key[0] in data:
        return _defines(data[key[0]], key[1:])
    return "init_args" in data and _defines(data["init_args"], key)


def name_config_file(err: BadArguments, args: list[str]) -> BadArguments:
    """Add the ``--config`` file that introduced the key of a parse error to its message.

    The key is the last file's that sets it (later files override earlier ones); a key also
    given as a flag (``--KEY``) is the flag's, and the message is returned unchanged.
    """
    values = config_values(args)
    match = next((m for p in _KEY_PATTERNS if (m := p.search(err.message))), None)
    if not values or match is None:
        return err
    key = match.group(1)
    for subcommand in ("fit", "validate", "test", "predict"):
        key = key.removeprefix(f"{subcommand}.")
    if any(a == f"--{key}" or a.startswith((f"--{key}=", f"--{key}.")) for a in args):
        return err
    parts = key.split(".")
    found = None
    for value in values:
        try:
            where, data = _load(value)
        except BadArguments:
            continue
        if _defines(data, parts):
            found = where
    if found is None:
        return err
    message, see, hint = err.message.partition(" (see: ")
    return BadArguments(f"{message} (in {found}){see}{hint}")


def read_model_block(path: str | os.PathLike, key: str, what: str) -> Any:
    """The block ``model.KEY`` of a YAML file: the block itself, or a machlite config holding it.

    A machlite config's ``model.KEY`` (or ``model.init_args.KEY``) is read when the file has
    a ``model`` key.

    Args:
        path: The YAML file.
        key: The block's key under ``model`` (e.g. ``quantization``).
        what: The block's name in errors (e.g. ``quantization``).

    Raises:
        ConfigError: The file is missing, not YAML, or a config without the block.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} file {path} is not valid YAML ({err})") from err
    if isinstance(data, dict) and "model" in data:
        model = data["model"] or {}
        data = model.get("init_args", model).get(key)
        if data is None:
            raise ConfigError(f"{path} has no model.{key} block")
    return data
