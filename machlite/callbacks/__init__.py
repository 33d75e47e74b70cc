"""The callbacks a machlite run uses, each switchable from the config (``--print_config``).

- :class:`RunReport`: where the run writes, and where its results are.
- :class:`HParamsLogger`: the run's settings and final metrics in TensorBoard's HPARAMS tab.
- :class:`DivergenceGuard`, :class:`CollapseWarning`: stop on a non-finite loss, warn on a
  collapse to chance level (:mod:`machlite.callbacks.guards`).
- :class:`ConfusionReport`: ``machlite test``'s confusion matrix and per-class accuracy.
- :class:`PredictionWriter`: ``machlite predict``'s ``predictions.csv``.

The checkpoint callback and exact resume are in :mod:`machlite.checkpoint`.
"""

from machlite.callbacks.confusion import ConfusionReport
from machlite.callbacks.guards import CollapseWarning, DivergenceError, DivergenceGuard
from machlite.callbacks.hparams import HParamsLogger
from machlite.callbacks.predictions import PredictionWriter
from machlite.callbacks.run_report import RunReport

__all__ = [
    "CollapseWarning",
    "ConfusionReport",
    "DivergenceError",
    "DivergenceGuard",
    "HParamsLogger",
    "PredictionWriter",
    "RunReport",
]
