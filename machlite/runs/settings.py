"""The settings of a run: a base config plus one override block, and the values in them.

A run trains with a base config file and an override block (:class:`RunSettings`): nested
settings, given to ``machlite fit`` as a second ``--config``, merged as jsonargparse merges
it (:func:`merge_config`). The front ends that launch runs (``machlite sweep``, ``machlite
search``) build these blocks from command-line text (:func:`override_block`,
:func:`parse_overrides`, :func:`cli_value`). Reading a config back (:func:`load_config`,
:func:`run_config`) and the one answer to "is this data synthetic?"
(:func:`is_synthetic_config`) are here too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from machlite.errors import ConfigError
from machlite.runs.layout import RunFolder

#: Keys the launcher sets itself for every run, so a front end cannot fix them: key -> what
#: to use instead (the front end's own option).
RESERVED = {
    "seed_everything": "use --seeds",
    "runs_dir": "use --{front}_dir",
    "run_name": "the {front} names every run",
    "config": "give the config with --config",
}
_CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")


# -- values and override blocks ---------------------------------------------------------------
def block_value(text: str) -> Any:
    """A command-line value as the override block holds it: as given, for jsonargparse to type.

    jsonargparse converts a config file's text values by the key's type exactly as it
    converts command-line values (``"32"`` for an int key is 32, ``"2024"`` for a text key
    stays text, ``"null"`` is None), so the block keeps them as given and a run sees what the
    same ``--key value`` flags would give. Only a mapping (``{...}``, e.g. a class path with
    its arguments) is read as YAML, so that its keys merge with other settings of the block.
    """
    if text.lstrip()[:1] == "{":
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(loaded, dict):
            return loaded
    return text


def _as_subclass(node: dict[str, Any]) -> dict[str, Any]:
    """A block with a class path keeps its arguments under ``init_args``."""
    if "class_path" not in node and "init_args" not in node:
        return node
    args = {k: v for k, v in node.items() if k not in _CLASS_KEYS}
    out = {k: node[k] for k in _CLASS_KEYS if k in node}
    if args:
        out["init_args"] = {**(out.get("init_args") or {}), **args}
    return out


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested override block, as ``--key value`` would.

    A class path given for a block that has arguments (or arguments given for a block that
    is a class path) becomes ``{class_path: ..., init_args: {...}}``, the form jsonargparse
    merges; other arguments are nested plainly (``data: {batch_size: 32}``), which
    jsonargparse merges into the base config's ``init_args``.
    """
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if isinstance(child, str):  # a class path, now given arguments
            child = {"class_path": child}
        elif not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    old = node.get(last)
    if isinstance(value, str) and isinstance(old, dict):  # a class path for a block
        value = {**old, "class_path": value}
    elif isinstance(value, dict) and isinstance(old, dict):
        value = {**old, **value}
    node[last] = value
    _normalize(tree)


def _normalize(tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _normalize(value)
            tree[key] = _as_subclass(value)


def override_block(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``[("data.batch_size", "32"), ("lr_scheduler.init_args.T_max", "5")]`` ->
    ``{"data": {"batch_size": "32"}, "lr_scheduler": {"init_args": {"T_max": "5"}}}``."""
    tree: dict[str, Any] = {}
    for key, text in pairs:
        set_key(tree, key, block_value(text))
    return tree


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base`` as jsonargparse merges a later ``--config``.

    Plain arguments of a block with a class path go into its ``init_args``; another class
    path replaces the block (its old arguments do not apply to the new class).
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and ("class_path" in old or "init_args" in old):
            if isinstance(value, str):
                value = {"class_path": value}
            if isinstance(value, dict):
                value = _as_subclass({"init_args": {}, **value})
                new_class = value.get("class_path", old.get("class_path"))
                if new_class != old.get("class_path"):
                    out[key] = copy.deepcopy(value)
                    continue
                merged = dict(old)
                merged["init_args"] = merge_config(old.get("init_args") or {}, value["init_args"])
                out[key] = merged
                continue
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge_config(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Path | None) -> dict[str, Any]:
    """A config file as a dict (empty when not given, unreadable or not a mapping)."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# -- command-line text -----------------------------------------------------------------------
def cli_value(value: Any) -> str:
    """A YAML value as a ``machlite fit`` command-line value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def parse_values(text: str) -> list[str]:
    """``"32,64,128"`` -> ``["32", "64", "128"]``."""
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_seeds(value: Any) -> list[int]:
    """Seeds from ``"0,1,2"``, ``[0, 1, 2]`` or ``0``."""
    items = parse_values(value) if isinstance(value, str) else value
    items = items if isinstance(items, list) else [items]
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"seeds must be integers like 0,1,2, got {value!r}") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers like 0,1,2, got {value!r}")
    return seeds


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """``["--trainer.max_epochs", "2", "--data.source=synthetic"]`` -> key/value pairs."""
    out = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(
                f"unexpected argument {token!r}: settings for every run are --key value "
                "pairs, e.g. --trainer.max_epochs 2"
            )
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value, e.g. --{key} VALUE")
            value = tokens[i + 1]
            i += 2
        out.append((key, value))
    return out


# -- one run's settings -----------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """What one run trains with.

    Attributes:
        config: The base config file, or None.
        overrides: The run's override block: nested, values as given, e.g.
            ``{"data": {"batch_size": 32}}``; given to ``machlite fit`` as a second
            ``--config`` after the base config.
        seed: The run's ``--seed_everything``.
    """

    config: Path | None
    overrides: dict[str, Any]
    seed: int

    def yaml(self) -> str:
        """The override block as a YAML file's text."""
        return yaml.safe_dump(self.overrides, sort_keys=False, default_flow_style=False)

    def inline(self) -> str:
        """The override block as one line of YAML, which ``--config`` also accepts."""
        return yaml.safe_dump(
            self.overrides, sort_keys=False, default_flow_style=True, width=10**9
        ).strip()

    def args(self, overrides_config: str | Path) -> list[str]:
        """The ``machlite fit`` arguments, with the override block in ``overrides_config``
        (a file, or the block's text; see :meth:`inline`)."""
        args = ["fit"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        return [*args, "--config", str(overrides_config), "--seed_everything", str(self.seed)]

    def signature(self) -> dict[str, Any]:
        """What the run is made of, as JSON: a finished run with another signature is redone."""
        return json.loads(
            json.dumps(
                {
                    "config": None if self.config is None else str(self.config),
                    "overrides": self.overrides,
                    "seed_everything": self.seed,
                }
            )
        )


# -- configs read back ------------------------------------------------------------------------
def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's saved ``config.yaml`` as a dict (empty when missing or unreadable)."""
    try:
        data = yaml.safe_load(RunFolder(run_dir).config.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def is_synthetic_config(config: dict[str, Any]) -> bool:
    """True when a machlite config (as a dict) trains on synthetic data.

    The one answer to "is this data synthetic?" for configs: the ``data`` block's ``source``,
    given directly or under ``init_args``. (A running datamodule says it with ``run_tag``.)
    """
    data = config.get("data") or {}
    args = data.get("init_args", data) if isinstance(data, dict) else {}
    return isinstance(args, dict) and args.get("source") == "synthetic"


def is_synthetic(run_dir: Path) -> bool:
    """True when the run's saved ``config.yaml`` says its data source was synthetic."""
    return is_synthetic_config(run_config(run_dir))
