"""Magnitude pruning: the config, torch's pruning attached and scheduled, and its accessors.

Named ``sparsity`` because :mod:`machlite.search.pruning` is Optuna's pruning of trials.

- :class:`PruneConfig` (:func:`prune_config`, :func:`load_prune_config`): the
  ``model.pruning`` block, with :meth:`PruneConfig.target_at`, the schedule over epochs.
- :func:`attach` (all-ones masks: a pruned network's ``state_dict`` keys), :func:`prune_to`
  (torch's ``l1_unstructured`` / ``global_unstructured`` to a sparsity).
- :func:`sparsity_of`, :func:`layer_sparsity`, :func:`weight_of`, :func:`is_pruned`: what is
  zero; :func:`make_permanent`: a plain copy with the zeros (exports, hardware);
  :func:`adapt_state_dict`: weights between plain and pruned networks.

Pruning during a fit is ``model.pruning`` (:class:`machlite.module.Classifier`).
docs/pruning.md.
"""

from machlite.sparsity.config import PRUNABLE, PruneConfig, load_prune_config, prune_config
from machlite.sparsity.masks import (
    adapt_state_dict,
    attach,
    is_pruned,
    layer_sparsity,
    make_permanent,
    prunable_layers,
    prune_to,
    refresh,
    sparsity_of,
    weight_of,
)

__all__ = [
    "PRUNABLE",
    "PruneConfig",
    "adapt_state_dict",
    "attach",
    "is_pruned",
    "layer_sparsity",
    "load_prune_config",
    "make_permanent",
    "prunable_layers",
    "prune_config",
    "prune_to",
    "refresh",
    "sparsity_of",
    "weight_of",
]
