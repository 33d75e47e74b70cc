"""Checkpoints: crash-safe files, the checkpoint callback, and exact resume.

- :mod:`machlite.checkpoint.io`: writing (atomically) and loading checkpoint files.
- :mod:`machlite.checkpoint.model_checkpoint`: :class:`MachliteCheckpoint`, Lightning's
  ModelCheckpoint with a ``last.ckpt`` refreshed at every epoch end and every N steps.
- :mod:`machlite.checkpoint.resume`: what ``--ckpt_path last`` needs to continue exactly.
"""

from machlite.checkpoint.io import AtomicCheckpointIO, load_checkpoint_file, model_config_of
from machlite.checkpoint.model_checkpoint import MachliteCheckpoint
from machlite.checkpoint.resume import (
    RESUME_KEY,
    ResumePlan,
    ResumeState,
    find_last_checkpoint,
    plan_resume,
)

__all__ = [
    "model_config_of",
    "RESUME_KEY",
    "AtomicCheckpointIO",
    "MachliteCheckpoint",
    "ResumePlan",
    "ResumeState",
    "find_last_checkpoint",
    "load_checkpoint_file",
    "plan_resume",
]
