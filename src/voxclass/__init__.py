"""voxclass: train, evaluate, export and serve audio classifiers on transformers."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from voxclass import Classifier` without importing torch for every CLI command.
    if name == "Classifier":
        from .classifier import Classifier

        return Classifier
    raise AttributeError(name)
