"""Evaluating predictors: SNE against the STATNN and flat-MLP baselines on the same splits, and the report."""

from model.evaluation.evaluate import evaluate
from model.evaluation.report import make_plots, markdown, update_card

__all__ = ["evaluate", "make_plots", "markdown", "update_card"]
