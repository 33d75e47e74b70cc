"""The one atomic writer: every file machlite writes in place goes through here.

A file is written to a temporary name in the same folder, flushed to disk (fsync), renamed
over the target (``os.replace``, atomic on POSIX) and the folder is fsynced, so a kill at any
moment leaves the old file (or none) or the complete new one, never half of one. On any
error the temporary file is removed. Checkpoints, the JSC cache, synthetic JSC files, the
unpacked MNIST files, downloads, the runs' JSON records and the CSV tables (:func:`write_csv`)
all use it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from machlite.errors import DISK_FULL, DiskFullError, os_error_message


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden, unique temporary name beside ``path``: ``.NAME.PID.RANDOM<suffix>``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (where a full disk shows up on delayed allocation)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    path: str | os.PathLike, what: str | None = None, suffix: str = ".tmp", hint: str = ""
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    For writers that need a file name (h5py, ``np.savez``, a download stream). The block
    writes the whole file to the yielded path; after it, the file is fsynced and renamed
    over ``path``. If the block raises, the temporary file is removed and ``path`` is
    untouched.

    Args:
        path: The file to (re)place.
        what: What is written, for the disk-full message (default: ``file PATH``).
        suffix: The temporary name's ending (``np.savez`` needs ``.npz``).
        hint: How to write elsewhere, for the disk-full message (default: the CLI's flags).

    Raises:
        DiskFullError: The disk filled up; ``path`` is untouched.
        OSError: Other write errors (after the temporary file is removed).
    """
    path = Path(path)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise DiskFullError(os_error_message(err, what or f"file {path}", hint)) from err
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike, data: bytes | memoryview | str, what: str | None = None
) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path, what) as tmp, open(tmp, "xb") as f:
        f.write(payload)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV (the first row's keys are the header; floats to 6 significant
    digits, None as empty), atomically."""
    text = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    atomic_write(path, text.getvalue())
