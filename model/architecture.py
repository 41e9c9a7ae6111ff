"""Which architectures a predictor was trained on, so the OOD flag also fires on a family it never saw.

The embedding-distance score misses families whose statistics happen to land near the training zoo (a
predictor trained on small CNNs placed most MLPs, ResNets and transformers within its threshold). What a
checkpoint *is* is plainer: the kinds of layers it has (linear, conv2d, norm, embedding, ...) and how many.
The card lists, per set of kinds seen in training, the range of layer counts seen; a checkpoint whose kinds
were never seen together, or whose depth is outside that range, is flagged as an unseen architecture.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from model.chunking import ROLES, ChunkedLayer
from model.layers import LayerKind
from model.packing import PackedBatch

Signature = tuple[tuple[str, ...], int]  # (sorted layer kinds present, number of layers)
_KINDS = list(LayerKind)


class SeenArchitecture(BaseModel):
    """One set of layer kinds seen in training, with the fewest and most layers seen with it."""

    model_config = ConfigDict(frozen=True)

    kinds: list[str] = Field(description="Layer kinds present (linear, conv2d, norm, embedding, ...), sorted.")
    min_layers: int
    max_layers: int


def signature(layers: Sequence[ChunkedLayer]) -> Signature:
    """The architecture of one chunked checkpoint: its layer kinds and layer count."""
    return tuple(sorted({str(layer.kind) for layer in layers})), len(layers)


def batch_signatures(batch: PackedBatch) -> list[Signature]:
    """`signature` of each checkpoint of a packed batch (kinds read back from the part type ids)."""
    kinds = [str(_KINDS[int(t) // len(ROLES)]) for t in batch.part_type.tolist()]  # [P]
    part_start = batch.layer_start.tolist()  # [L] first part of each layer
    out = []
    for start, n in zip(batch.ckpt_start.tolist(), batch.ckpt_len.tolist(), strict=True):
        present = {kinds[part_start[i]] for i in range(start, start + n)}
        out.append((tuple(sorted(present)), n))
    return out


def seen_architectures(signatures: Iterable[Signature]) -> list[SeenArchitecture]:
    """The card's list: per set of kinds, the range of layer counts among the training checkpoints."""
    ranges: dict[tuple[str, ...], tuple[int, int]] = {}
    for kinds, n in signatures:
        lo, hi = ranges.get(kinds, (n, n))
        ranges[kinds] = (min(lo, n), max(hi, n))
    return [SeenArchitecture(kinds=list(k), min_layers=lo, max_layers=hi) for k, (lo, hi) in sorted(ranges.items())]


def unseen(sig: Signature, seen: Sequence[SeenArchitecture]) -> bool:
    """True when no training checkpoint had these layer kinds with a layer count in this range."""
    kinds, n = sig
    return not any(list(kinds) == s.kinds and s.min_layers <= n <= s.max_layers for s in seen)
