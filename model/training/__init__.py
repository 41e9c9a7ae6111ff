"""Training SNE on model zoos: examples, the LIR penalty, resumable training, calibration and the card."""

from model.training.examples import Example, load_examples, load_split, predict_examples
from model.training.guards import MIN_CALIBRATION, TrainError
from model.training.lir import invariance_error
from model.training.train import TrainOptions, finalize, train

__all__ = [
    "MIN_CALIBRATION", "Example", "TrainError", "TrainOptions", "finalize", "invariance_error", "load_examples", "load_split",
    "predict_examples", "train",
]
