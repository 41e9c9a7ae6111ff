"""Logit Invariance Regularization (SNE v2): the logit should not move when hidden units are permuted.

Permuting a network's hidden units leaves its function exactly as it was (``model.zoo.permute``), so a
predictor of accuracy should give the same logit; the penalty trains that, the error measures it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.checkpoint import checkpoint_from_tensors
from model.chunking import ChunkedLayer, chunk_checkpoint
from model.packing import pack
from model.sne import SNE
from model.training.examples import Example
from model.zoo.permute import random_permute


def permuted_layers(e: Example, gen: torch.Generator, chunk_size: int) -> list[ChunkedLayer]:
    """The example's network with every hidden layer's units randomly permuted (same function)."""
    return chunk_checkpoint(checkpoint_from_tensors(random_permute(e.state, e.arch, gen)), chunk_size)


def lir_penalty(model: SNE, batch: Sequence[Example], logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mean squared change of the logit when each network's hidden units are randomly permuted."""
    perm = model(pack([permuted_layers(e, gen, model.cfg.chunk_size) for e in batch]))
    return F.mse_loss(perm.logit, logits)


@torch.no_grad()
def invariance_error(model: SNE, examples: Sequence[Example], seed: int = 0, batch_size: int = 64) -> float:
    """Mean |logit(permuted) - logit(original)| over examples: 0 for a perfectly invariant encoder."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        a = model(pack([e.layers for e in chunk])).logit
        b = model(pack([permuted_layers(e, gen, model.cfg.chunk_size) for e in chunk])).logit
        diffs.append((a - b).abs())
    return float(torch.cat(diffs).mean())
