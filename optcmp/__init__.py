"""optcmp: compare optimizers and their hyperparameters on PyTorch models."""

__version__ = "0.1.0"
