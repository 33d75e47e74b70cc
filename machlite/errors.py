"""User-facing errors: the CLI prints them as one line and exits nonzero, without a traceback."""


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
