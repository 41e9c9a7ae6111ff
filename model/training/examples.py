"""Zoo checkpoints as SNE examples: parsed and chunked once, with the targets SNE learns (accuracy, gap)."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from model.checkpoint import checkpoint_from_tensors
from model.chunking import ChunkedLayer, chunk_checkpoint
from model.packing import pack
from model.sne import SNE
from model.zoo import load_index, load_zoo_checkpoint


@dataclass
class Example:
    """One zoo checkpoint: its chunked layers, targets, and the raw state (LIR permutes it)."""

    layers: list[ChunkedLayer]
    acc: float
    gap: float
    arch: str
    dataset: str
    state: dict[str, torch.Tensor] = field(repr=False)


def load_examples(
    zoo_dirs: Sequence[Path], split: str, chunk_size: int, limit: int | None = None, seed: int = 0
) -> list[Example]:
    """Checkpoints of one split of the given zoos, parsed and chunked once (they are small)."""
    rows = [(Path(z), r) for z in zoo_dirs for r in load_index(Path(z)) if r["split"] == split]
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    out = []
    for zoo, r in rows:
        state = load_zoo_checkpoint(zoo, r)
        layers = chunk_checkpoint(checkpoint_from_tensors(state), chunk_size)
        out.append(Example(layers, float(r["test_acc"]), float(r["gap"]), r["arch"], r["dataset"], state))
    return out


class ExamplePredictions(TypedDict):
    """Predictions for examples, in order: numpy for scoring, the embeddings as a tensor for the OOD reference."""

    acc: np.ndarray  # [n]
    gap: np.ndarray  # [n]
    emb: torch.Tensor  # [n, encoding]


@torch.no_grad()
def predict_examples(model: SNE, examples: Sequence[Example], batch_size: int = 64) -> ExamplePredictions:
    """Predicted accuracy, gap and embeddings for examples, in order."""
    model.eval()
    acc, gap, emb = [], [], []
    for i in range(0, len(examples), batch_size):
        out = model(pack([e.layers for e in examples[i : i + batch_size]]))
        acc.append(out.accuracy)
        gap.append(out.gap)
        emb.append(out.embedding)
    return {"acc": torch.cat(acc).numpy(), "gap": torch.cat(gap).numpy(), "emb": torch.cat(emb)}
