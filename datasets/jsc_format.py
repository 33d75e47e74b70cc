"""The JSC (hls4ml LHC jet) HDF5 file: where it comes from, its fields, and its verification."""

from pathlib import Path

import h5py
import numpy as np

from machlite.errors import DataError

#: The public file machop, LogicNets and hls4ml use (HDF5 despite the ``.z``).
JSC_URL = "https://cernbox.cern.ch/s/jvFd5MoWhGs1l5v/download"
JSC_FILENAME = "processed-pythia82-lhc13-all-pt1-50k-r1_h022_e0175_t220_nonu_truth.z"
#: The structured (compound-dtype) dataset holding one row per jet.
JSC_DATASET = "t_allpar_new"

#: The 16 high-level features, in machop's order.
FEATURES: tuple[str, ...] = (
    "j_zlogz",
    "j_c1_b0_mmdt",
    "j_c1_b1_mmdt",
    "j_c1_b2_mmdt",
    "j_c2_b1_mmdt",
    "j_c2_b2_mmdt",
    "j_d2_b1_mmdt",
    "j_d2_b2_mmdt",
    "j_d2_a1_b1_mmdt",
    "j_d2_a1_b2_mmdt",
    "j_m2_b1_mmdt",
    "j_m2_b2_mmdt",
    "j_n2_b1_mmdt",
    "j_n2_b2_mmdt",
    "j_mass_mmdt",
    "j_multiplicity",
)
#: The 5 one-hot class columns: gluon, light quark, W, Z, top.
LABELS: tuple[str, ...] = ("j_g", "j_q", "j_w", "j_z", "j_t")


def how_to_supply(path: Path) -> str:
    """Return the one-sentence instruction for supplying the JSC file by hand."""
    return f"download {JSC_URL} on a machine with internet and save it as {path}"


def verify_jsc_file(path: Path, name: Path | None = None) -> None:
    """Check that ``path`` is an HDF5 file with ``t_allpar_new`` and the 21 fields.

    Args:
        path: The file to check.
        name: The name to report and to tell the user to save as (default: ``path``).

    Raises:
        DataError: Naming the file, what is wrong and how to fix it.
    """
    name = name or path
    fix = f"delete it and run again to re-download, or {how_to_supply(name)}"
    if not path.is_file():
        raise DataError(f"JSC file {name} is missing: {how_to_supply(name)}")
    if path.stat().st_size == 0:
        raise DataError(f"JSC file {name} is empty: {fix}")
    try:
        with h5py.File(path, "r") as f:
            if JSC_DATASET not in f or not isinstance(f[JSC_DATASET], h5py.Dataset):
                raise DataError(f"JSC file {name} has no dataset '{JSC_DATASET}': {fix}")
            fields = f[JSC_DATASET].dtype.names or ()
            missing = [c for c in FEATURES + LABELS if c not in fields]
            if missing:
                raise DataError(
                    f"JSC file {name} lacks the field(s) {', '.join(missing)} in "
                    f"'{JSC_DATASET}': {fix}"
                )
            if f[JSC_DATASET].shape[0] == 0:
                raise DataError(f"JSC file {name} has no jets in '{JSC_DATASET}': {fix}")
    except OSError as err:
        raise DataError(f"JSC file {name} is not a readable HDF5 file ({err}): {fix}") from err


def read_jsc_table(path: Path) -> np.ndarray:
    """Return the 16 features then the 5 labels of every jet as a float64 [N, 21] array."""
    with h5py.File(path, "r") as f:
        table = f[JSC_DATASET].fields(list(FEATURES + LABELS))[()]
    return np.stack([table[c].astype(np.float64) for c in FEATURES + LABELS], axis=1)
