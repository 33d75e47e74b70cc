"""machlite: a PyTorch Lightning experiment framework for small hardware-aware networks."""

__version__ = "0.1.0"
