"""Accuracy and loss of a group of stacked zoo models, on each model's own training subset and the test set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.zoo.datasets import Dataset
from model.zoo.engine import batched_forward, chain_modules


@torch.no_grad()
def evaluate_models(
    model: nn.Module, params: dict[str, Tensor], ds: Dataset, train_masks: Tensor, chunk: int | None = None
) -> dict[str, Tensor]:
    """Per-model accuracy and mean loss on its own training subset and on the test set."""
    model.eval()
    if chunk is None:  # widest activation (first layer, all models) ~4M floats: cache-friendly
        m_models = next(iter(params.values())).shape[0]
        first = next(m for _, m in chain_modules(model) if isinstance(m, (nn.Conv2d, nn.Linear)))
        width = getattr(first, "out_channels", getattr(first, "out_features", 1))
        per_sample = m_models * width * ds.x_train.shape[-1] * ds.x_train.shape[-2]
        chunk = int(min(2048, max(16, 2**22 // per_sample)))

    def run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        correct, losses = [], []
        for s in range(0, x.shape[0], chunk):
            logits = batched_forward(model, params, x[s : s + chunk])
            yy = y[s : s + chunk]
            correct.append((logits.argmax(-1) == yy).float())
            losses.append(F.cross_entropy(logits.transpose(1, 2), yy.expand(logits.shape[0], -1), reduction="none"))
        return torch.cat(correct, 1), torch.cat(losses, 1)

    c_tr, l_tr = run(ds.x_train, ds.y_train)
    c_te, l_te = run(ds.x_test, ds.y_test)
    w = train_masks.float()
    n = w.sum(1).clamp_min(1)
    return {
        "train_acc": (c_tr * w).sum(1) / n,
        "train_loss": (l_tr * w).sum(1) / n,
        "test_acc": c_te.mean(1),
        "test_loss": l_te.mean(1),
    }
