"""LightningDataModules: ``from machlite.datasets import JSCDataModule, MNISTDataModule``."""

from .base import InMemoryDataModule
from .jsc import JSCDataModule
from .loader import EpochPermutation, InMemoryLoader
from .mnist import MNISTDataModule

__all__ = [
    "EpochPermutation",
    "InMemoryDataModule",
    "InMemoryLoader",
    "JSCDataModule",
    "MNISTDataModule",
]
