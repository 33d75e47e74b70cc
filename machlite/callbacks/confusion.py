"""``machlite test``'s report: the confusion matrix with each class's accuracy."""

from lightning.pytorch.callbacks import Callback


class ConfusionReport(Callback):
    """Placeholder while the report moves here from the Classifier."""
