"""Logit Invariance Regularization (SNE v2): the logit should not move when hidden units are permuted.

Permuting a network's hidden units leaves its function exactly as it was, so a predictor of accuracy should
give the same logit; the penalty trains that, the error measures it. The permutations come from each
checkpoint's own structure (``model.training.permutations``); a checkpoint without a safe permutation (its
``Example.plan`` is the reason) is left out of both, and counted by ``lir_coverage``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.checkpoint import checkpoint_from_tensors
from model.chunking import ChunkedLayer, chunk_checkpoint
from model.packing import pack
from model.sne import Encoder
from model.training.examples import Example, sample_chunks
from model.training.permutations import PermutationPlan, permute_state


def permutable(e: Example) -> bool:
    return isinstance(e.plan, PermutationPlan)


def lir_coverage(examples: Sequence[Example]) -> dict[str, object]:
    """How many examples LIR can permute, and why the others are skipped (reason -> count)."""
    reasons: dict[str, int] = {}
    for e in examples:
        if not isinstance(e.plan, PermutationPlan):
            reasons[e.plan] = reasons.get(e.plan, 0) + 1
    return {"permutable": len(examples) - sum(reasons.values()), "skipped": sum(reasons.values()), "reasons": reasons}


def permuted_layers(e: Example, gen: torch.Generator, chunk_size: int) -> list[ChunkedLayer]:
    """The example's network with every hidden layer's units randomly permuted (same function)."""
    if not isinstance(e.plan, PermutationPlan):
        raise TypeError(f"{e.path}: no safe permutation ({e.plan})")
    return chunk_checkpoint(checkpoint_from_tensors(permute_state(e.state, e.plan, gen)), chunk_size)


def lir_penalty(
    model: Encoder, batch: Sequence[Example], logits: torch.Tensor, gen: torch.Generator, chunks: int = 0
) -> torch.Tensor:
    """Mean squared change of the logit when each network's hidden units are randomly permuted (0 when none of
    the batch can be permuted).

    With `chunks`, the permuted network is seen through its own random chunk sample, as the original was: the
    term then also asks for invariance to which chunks were sampled (what a chunk budget needs)."""
    keep = [i for i, e in enumerate(batch) if permutable(e)]
    if not keep:
        return logits.sum() * 0.0
    c = model.cfg.chunk_size
    perm = model(pack([sample_chunks(permuted_layers(batch[i], gen, c), chunks, gen) for i in keep]))
    return F.mse_loss(perm.logit, logits[keep])


@torch.no_grad()
def invariance_error(model: Encoder, examples: Sequence[Example], seed: int = 0, batch_size: int = 64) -> float:
    """Mean |logit(permuted) - logit(original)| over the permutable examples: 0 for a perfectly invariant
    encoder, NaN when none can be permuted."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    examples = [e for e in examples if permutable(e)]
    diffs = [torch.zeros(0)]
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        a = model(pack([e.layers for e in chunk])).logit
        b = model(pack([permuted_layers(e, gen, model.cfg.chunk_size) for e in chunk])).logit
        diffs.append((a - b).abs())
    return float(torch.cat(diffs).mean())
