"""Downloading a file safely: HTTPS, a progress bar, verification, and an atomic rename."""

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from machlite.atomic import atomic_path
from machlite.errors import DataError, MachliteError
from machlite.paths import OFFLINE_ENV, offline


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    verify: Callable[[Path], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; verify it before it takes its name.

    The data goes to ``dest.<pid>.part`` first; ``verify`` (which raises DataError on a bad file)
    runs on it, and only then is it renamed to ``dest``. A failed download or verification
    deletes the partial file, so a later run never sees half a file.

    Args:
        url: Where to fetch from (https, or file:// for local copies).
        dest: Final path of the file.
        verify: Called with the downloaded file's path; raises DataError when it is bad.
        timeout: Socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        DataError: When downloads are disabled, the download fails, or verification fails.
    """
    if offline():
        raise DataError(f"downloads are disabled ({OFFLINE_ENV} is set)")
    if not url.startswith(("https://", "file://")):
        raise DataError(f"refusing to download over an insecure URL: {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:  # one temporary file per process (runs may race), removed on any failure
        with atomic_path(dest, what=f"the download {dest}", suffix=".part") as part:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=f"Downloading {dest.name}"
                ) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
            if verify is not None:
                verify(part)
    except MachliteError:
        raise
    except (OSError, ValueError) as err:  # URLError and socket timeouts are OSErrors
        raise DataError(f"could not download {url}: {err}") from err
    return dest
