"""A procedural sequence-classification task for the transformer zoo (offline, deterministic).

Sequences of ``LENGTH`` tokens drawn uniformly from a vocabulary of ``VOCAB``. Four classes, two bits:
* majority: more than half of the tokens are in the upper half of the vocabulary (a count: needs pooling);
* sorted-ness of the ends: the first token is smaller than the last (needs positions).
Label = 2 * majority + ends. ``LENGTH`` is odd, so the majority is never tied. A linear model on token
counts gets the first bit only (about 50 %); a model that also reads positions gets both.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from model.zoo.datasets import Dataset

VOCAB = 8
LENGTH = 9
N_TRAIN, N_TEST = 2000, 1000
SEED = 20261123


def make_sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` token sequences (int64 ``n x LENGTH``) and their labels (int64 ``n``), from ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, LENGTH))
    majority = (x >= VOCAB // 2).sum(1) > LENGTH // 2
    ends = x[:, 0] < x[:, -1]
    return x.astype(np.int64), (2 * majority + ends).astype(np.int64)


@lru_cache(maxsize=1)
def load_sequences() -> Dataset:
    """The fixed train/test split (tokens as ``x``, shape ``N x LENGTH``; treat as read-only)."""
    x, y = make_sequences(N_TRAIN + N_TEST, SEED)
    return Dataset(
        name="sequences",
        x_train=torch.from_numpy(x[:N_TRAIN]),
        y_train=torch.from_numpy(y[:N_TRAIN]),
        x_test=torch.from_numpy(x[N_TRAIN:]),
        y_test=torch.from_numpy(y[N_TRAIN:]),
        description=(
            f"procedural sequences (model.zoo.sequences, seed {SEED}): {LENGTH} tokens from a vocabulary of "
            f"{VOCAB}; 4 classes = 2 x (most tokens >= {VOCAB // 2}) + (first token < last token); "
            f"{N_TRAIN} train / {N_TEST} test"
        ),
        n_classes=4,
    )
