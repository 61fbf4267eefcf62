"""voxclass: train, evaluate, export and serve audio classifiers on transformers."""

import os

__version__ = "0.1.0"

# An exported model runs on onnxruntime without torch by design; transformers' import-time advice
# "PyTorch was not found. Models won't be available" would only mislead there. (An explicit
# setting of this variable wins.)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def __getattr__(name: str):
    # `from voxclass import Classifier` without importing torch for every CLI command.
    if name == "Classifier":
        from .classifier import Classifier

        return Classifier
    if name == "RayPredictor":  # a Ray Data callable class; Ray itself is not imported
        from .scale import RayPredictor

        return RayPredictor
    raise AttributeError(name)
