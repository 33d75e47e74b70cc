"""The Optuna side of a search: its storage, sampler, pruner and study.

Everything that imports Optuna starts here, with :func:`require_optuna`, so that without the
``search`` extra ``machlite search`` stops with one line naming it. A storage is named by one
string that the search and every trial's process open alike (:func:`open_storage`):

- ``sqlite:////abs/path/study.db`` (the default, in the search folder), or any SQLAlchemy
  URL Optuna's ``RDBStorage`` accepts (``postgresql://user@host/db``): several
  ``machlite search`` processes on several machines share one study through it;
- ``journal:PATH``: Optuna's ``JournalStorage`` on a file (no database server; the file must
  be on a file system with working locks).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from machlite.errors import ConfigError, MachliteError, first_line
from machlite.search.space import Space

SAMPLERS = ("tpe", "random", "grid", "nsga2", "qmc")
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}
EXTRA = 'pip install -e ".[search]"'
#: User attributes machlite keeps on each trial.
OWNER, HEARTBEAT, FOLDER, NOTE, SEED_VALUES, OVER_BUDGET = (
    "machlite_owner",
    "machlite_heartbeat",
    "machlite_folder",
    "machlite_note",
    "machlite_seed_values",
    "machlite_over_budget",
)
_CREATE_RACE = re.compile(r"already exists|duplicate key|UniqueViolation|IntegrityError")
#: A RUNNING trial whose owner has not beaten for this long (seconds) is taken as dead.
STALE_AFTER = 600.0
#: A worker sets a trial's owner right after asking for it; a RUNNING trial that still has no
#: owner this many seconds after it was first seen has lost its worker in between.
OWNERLESS_GRACE = 3.0


def require_optuna() -> ModuleType:
    """Import optuna, quietly (warnings only), or say which extra installs it.

    Raises:
        MachliteError: Optuna is not installed.
    """
    try:
        import optuna
    except ImportError as err:
        raise MachliteError(
            f"machlite search needs Optuna, from the search extra: {EXTRA} ({first_line(err)})"
        ) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(search_dir: Path) -> str:
    """The default storage: an SQLite file in the search folder."""
    return f"sqlite:///{Path(search_dir).resolve() / 'study.db'}"


def shown_url(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (not a URL: shown as given)
        return url


def open_storage(url: str) -> Any:
    """Open (and for a database, connect to and set up) a storage.

    Args:
        url: ``journal:PATH`` or an SQLAlchemy URL (see the module docstring).

    Raises:
        ConfigError: The storage cannot be opened or reached; one line.
    """
    optuna = require_optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise ConfigError(f"cannot open the journal storage {path}: {err.strerror}") from err
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs = {"connect_args": {"timeout": 120}}  # several writers wait, not fail
        db = url.removeprefix("sqlite:///")
        if db and db != url and not db.startswith(":"):
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql"):
        kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
        url = postgresql_driver(url)
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            except Exception as err:  # noqa: BLE001
                # two processes creating the tables at once: one loses the race; try again
                if attempt == 4 or not _CREATE_RACE.search(str(err)):
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")
    except ImportError as err:
        raise ConfigError(
            f"--storage {shown_url(url)}: its database driver is missing "
            f"({first_line(err.__cause__ or err)}); {EXTRA} installs the PostgreSQL one"
        ) from err
    except Exception as err:  # noqa: BLE001 (SQLAlchemy's many errors: one line)
        text = first_line(err.__cause__ or err) if "(Background on" in str(err) else first_line(err)
        raise ConfigError(f"cannot open the storage {shown_url(url)}: {text}") from err


def postgresql_driver(url: str) -> str:
    """A ``postgresql://`` URL with the driver that is installed: psycopg 3 (the search
    extra's), else psycopg2; SQLAlchemy's default for a bare ``postgresql://`` depends on
    its version. A URL that names its driver (``postgresql+psycopg2://``) is kept."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://" + url.removeprefix("postgresql://")
    return url


def grid_space(space: Space) -> dict[str, list[Any]]:
    """Every parameter's values, for the grid sampler.

    Raises:
        ConfigError: A float range without a step (it has no grid).
    """
    out = {}
    for param in space.params:
        values = param.grid()
        if values is None:
            raise ConfigError(
                f"--sampler grid: {param.key} is a float range without a step; give it a "
                "step, or choices (type: categorical)"
            )
        out[param.key] = values
    return out


def grid_size(space: Space) -> int:
    """The number of grid points."""
    size = 1
    for values in grid_space(space).values():
        size *= len(values)
    return size


def make_sampler(name: str, space: Space, seed: int | None) -> Any:
    """The sampler called ``name`` (one of :data:`SAMPLERS`)."""
    optuna = require_optuna()
    samplers = optuna.samplers
    if name == "grid":
        return samplers.GridSampler(grid_space(space), seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return samplers.TPESampler(seed=seed)


def make_pruner(settings: dict[str, Any] | None, prune: bool) -> Any:
    """The pruner: the space file's ``pruner`` (default ``median``), or none when off.

    Raises:
        ConfigError: An unknown pruner type or arguments it does not take.
    """
    optuna = require_optuna()
    if not prune:
        return optuna.pruners.NopPruner()
    settings = dict(settings or {"type": "median"})
    kind = str(settings.pop("type"))
    if kind not in PRUNERS:
        raise ConfigError(f"pruner type {kind!r}: choose one of {', '.join(PRUNERS)}")
    try:
        return getattr(optuna.pruners, PRUNERS[kind])(**settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pruner {kind}: {first_line(err)}") from err


def load_study(
    storage: Any, name: str, space: Space, sampler: Any, pruner: Any, signature: dict[str, Any]
) -> Any:
    """Create the study, or load it when it exists: then it must have the same signature
    (space, objectives, base config, fixed settings and seeds).

    Raises:
        ConfigError: The stored study was made with other settings.
    """
    optuna = require_optuna()
    directions = list(space.objectives.values())
    for attempt in range(5):
        try:
            study = optuna.create_study(
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                study_name=name,
                directions=directions,
                load_if_exists=True,
            )
            stored = study.user_attrs.get("machlite_signature")
            if stored is None:
                study.set_user_attr("machlite_signature", signature)
            break
        except Exception as err:  # noqa: BLE001
            # two workers creating the study or its signature at once: one loses the
            # race (a unique-key violation); it reads what the other wrote, once again
            if attempt == 4 or not _CREATE_RACE.search(str(err)):
                raise
            time.sleep(0.5 + attempt)
    if stored is not None and stored != signature:
        changed = sorted(k for k in signature if stored.get(k) != signature[k])
        raise ConfigError(
            f"study {name!r} in this storage was made with other settings ({', '.join(changed)} "
            "differ): run it with its own settings, or start another with --study NAME or "
            "--search_dir DIR"
        )
    return study


def tell(study: Any, trial: Any, values: list[float] | None = None, state: Any = None) -> None:
    """``study.tell``, outside ``study.optimize``: the grid sampler's "grid exhausted" stop
    (a RuntimeError raised after the result is stored) is not an error here."""
    try:
        study.tell(trial, values, state=state, skip_if_finished=True)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def owner() -> str:
    """This search process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_dead(name: str | None, beat: float | None, now: float) -> bool:
    host, _, pid = (name or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return beat is None or now - beat > STALE_AFTER


def fail_stale_trials(study: Any, storage: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose search process is gone: on this host, a process
    that no longer exists; elsewhere, no heartbeat for :data:`STALE_AFTER` seconds; and a
    trial that has no owner yet, :data:`OWNERLESS_GRACE` seconds after it was first seen
    (another worker may have just asked for it). The grace period is timed on this process's
    clock, so no two machines' clocks are compared.

    Returns:
        Their numbers.
    """
    from optuna.trial import TrialState

    def running() -> list[Any]:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    ownerless = {t.number for t in running() if OWNER not in t.user_attrs}
    if ownerless:
        time.sleep(OWNERLESS_GRACE)
    now = time.time()
    failed = []
    for trial in running():
        attrs = trial.user_attrs
        if OWNER in attrs:
            if not _owner_is_dead(attrs[OWNER], attrs.get(HEARTBEAT), now):
                continue
        elif trial.number not in ownerless:
            continue  # asked for during the grace period: its worker is setting its owner
        storage.set_trial_user_attr(
            trial_id(storage, study.study_name, trial.number),
            NOTE,
            f"its search process {attrs.get(OWNER, '?')} stopped while it ran (marked FAIL, "
            "replaced by a new trial)",
        )
        tell(study, trial.number, state=TrialState.FAIL)
        failed.append(trial.number)
    return failed


def trial_id(storage: Any, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of a study."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)
