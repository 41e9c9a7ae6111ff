"""Evaluating predictors: SNE against the STATNN and flat-MLP baselines on the same splits, and the report."""

from model.evaluation.evaluate import evaluate
from model.evaluation.report import make_plots, markdown, update_card
from model.evaluation.table import evaluate_table

__all__ = ["evaluate", "evaluate_table", "make_plots", "markdown", "update_card"]
