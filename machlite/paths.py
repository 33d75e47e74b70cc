"""Where machlite keeps data by default."""

import os
from pathlib import Path

#: Environment variable that overrides the default data folder.
DATA_DIR_ENV = "MACHLITE_DATA_DIR"
#: Environment variable that forbids downloads (set it on offline machines and in tests).
OFFLINE_ENV = "MACHLITE_OFFLINE"


def default_data_dir() -> Path:
    """Return ``$MACHLITE_DATA_DIR``, else ``$XDG_CACHE_HOME/machlite`` (``~/.cache/machlite``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "machlite"


def compile_cache_dir() -> Path:
    """Where ``torch.compile`` keeps its on-disk caches for machlite runs.

    ``$TORCHINDUCTOR_CACHE_DIR`` when set (torch's own variable), else
    ``$XDG_CACHE_HOME/machlite/torch_compile``: unlike torch's default under /tmp, it
    survives a reboot, so a later process with the same network, batch size and group of
    steps loads the compiled code instead of compiling it again.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "machlite" / "torch_compile"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Return ``data_dir`` as a Path, or the default data folder when it is None or empty."""
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def offline() -> bool:
    """True when ``MACHLITE_OFFLINE`` is set to a true value: never try to download."""
    return os.environ.get(OFFLINE_ENV, "").lower() not in ("", "0", "false", "no")
