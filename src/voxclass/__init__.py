"""voxclass: train, evaluate, export and serve audio classifiers on transformers."""

__version__ = "0.1.0"
