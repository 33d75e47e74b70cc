"""User-facing errors: the CLI prints them as one line and exits nonzero, without a traceback.

Every error a user can fix is a :class:`MachliteError` (or a subclass) whose message says what
is wrong and how to fix it; ``machlite.commands`` is the one place that turns them into a line
on stderr and an exit code. :func:`os_error_message` words the OSErrors met while writing.
"""

from __future__ import annotations

import argparse
import errno
from typing import NoReturn

#: Errors that mean "the disk is full" (ENOSPC) or "over quota" (EDQUOT).
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: Errors that mean a folder or file cannot be written.
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class MachliteError(Exception):
    """A problem the user can fix (bad data file, bad value); its message says how.

    Attributes:
        exit_code: Process exit code the CLI uses for this error.
    """

    exit_code: int = 1


class ConfigError(MachliteError, ValueError):
    """A bad configuration value. Exits with code 2, like jsonargparse's own errors."""

    exit_code = 2


class DataError(MachliteError):
    """A data file that is missing, corrupt or cannot be downloaded."""

    exit_code = 1


class DiskFullError(MachliteError):
    """The disk filled up while machlite was writing a file."""


class Interrupted(MachliteError):
    """The user stopped a long command (Ctrl-C or SIGTERM)."""

    exit_code = 130


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def os_error_message(err: OSError, what: str, hint: str = "") -> str:
    """Return a one-line explanation of an OSError met while writing ``what``.

    Args:
        err: The error.
        what: What was being written, e.g. "checkpoint runs/x/last.ckpt".
        hint: How to write elsewhere (default: the CLI's --runs_dir / --data.data_dir).
    """
    where = f" ({err.filename})" if err.filename and str(err.filename) not in what else ""
    if err.errno in DISK_FULL:
        hint = hint or "write elsewhere with --runs_dir or --data.data_dir"
        return (
            f"the disk is full ({err.strerror or 'No space left on device'}) while writing "
            f"{what}{where}: free some space or {hint}, then run again (a fit continues "
            "from its last checkpoint with --ckpt_path last)"
        )
    reason = (err.strerror or first_line(err)).rstrip(".")
    hint = hint or "choose a folder you can write to (--runs_dir, --data.data_dir)"
    return f"cannot write {what}{where} ({reason}): {hint}"


def write_error(err: OSError, what: str) -> MachliteError:
    """The MachliteError for an OSError met while writing ``what`` (disk full, or other)."""
    return (DiskFullError if err.errno in DISK_FULL else DataError)(os_error_message(err, what))


class BadArguments(SystemExit):
    """Command-line arguments or config values that do not parse (exit code 2).

    A SystemExit, not an Exception: jsonargparse wraps some of its internal ValueErrors and
    TypeErrors, and a parse error must leave the parser as its own exit did. The command's
    error handler (:func:`machlite.commands.main`) prints ``message`` as one line.

    Attributes:
        message: What is wrong and where to look, e.g. ``data.batch_size: ... (see: machlite
            fit --help)``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PlainArgumentParser(argparse.ArgumentParser):
    """An argparse parser for machlite's own subcommands (``sweep``, ``plot``) whose errors
    are :class:`BadArguments` (one line, exit 2), as the Lightning subcommands' are."""

    def error(self, message: str) -> NoReturn:
        """Raise ``BadArguments("MESSAGE (see: PROG --help)")``."""
        raise BadArguments(f"{message} (see: {self.prog} --help)")
