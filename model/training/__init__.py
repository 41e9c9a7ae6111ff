"""Training SNE on model zoos: examples, the LIR penalty, resumable training, calibration and the card."""

from model.training.examples import Example, load_examples, predict_examples
from model.training.lir import invariance_error
from model.training.train import TrainOptions, finalize, train

__all__ = ["Example", "TrainOptions", "finalize", "invariance_error", "load_examples", "predict_examples", "train"]
