"""Training SNE on model zoos: examples, the LIR penalty, resumable training, calibration and the card."""

from model.training.examples import Example, load_examples, load_split, predict_examples
from model.training.lir import invariance_error

# after the names model.evaluation imports from here (guards and train import model.evaluation)
from model.training.guards import MIN_CALIBRATION, TrainError  # noqa: I001
from model.training.train import TrainOptions, finalize, train

__all__ = [
    "MIN_CALIBRATION", "Example", "TrainError", "TrainOptions", "finalize", "invariance_error", "load_examples", "load_split",
    "predict_examples", "train",
]
