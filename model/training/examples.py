"""Labelled checkpoints as SNE examples: parsed and chunked once, with the targets SNE learns (accuracy, gap).

Sources are labels CSV files or zoo directories (``model.labels``: one format). A checkpoint that cannot be read
is listed: fatal by default, or skipped (``on_bad="skip"``) and counted.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import torch
from rich.progress import Progress

from model.admission import Limits
from model.checkpoint import TORCH_DTYPES, CheckpointFile, checkpoint_from_tensors
from model.chunking import ChunkedLayer, Chunks, chunk_checkpoint
from model.errors import CheckpointError
from model.labels import Label, LabelError, read_labels
from model.layers import LayerKind
from model.packing import pack
from model.sne import Encoder
from model.training.permutations import PermutationPlan, plan_permutations

OnBad = Literal["skip", "fail"]


def sample_chunks(layers: list[ChunkedLayer], k: int, gen: torch.Generator) -> list[ChunkedLayer]:
    """The layers with at most `k` random chunks per part (statistics kept): a training-time chunk budget.

    Chunk encoding dominates a step's cost; the part encoder pools a set, so a random subset is an unbiased
    view of it (and the service encodes large parts under a budget in the same way).
    """
    out = []
    for layer in layers:
        parts = []
        for role, ch in layer.parts:
            q = ch.values.shape[0]
            if k and q > k:
                keep = torch.randperm(q, generator=gen)[:k].sort().values  # [k]
                ch = Chunks(ch.values[keep], ch.lengths[keep], ch.size, ch.stats, ch.total)
            parts.append((role, ch))
        out.append(replace(layer, parts=parts))
    return out


def drop_layers(layers: list[ChunkedLayer], p: float, gen: torch.Generator) -> list[ChunkedLayer]:
    """The layers with each middle depth level dropped with probability `p` (the first and last kept), levels
    renumbered: a training-time augmentation so the encoder does not lean on one depth (cross-family transfer).
    """
    if p <= 0:
        return layers
    levels = sorted({layer.level for layer in layers})
    middle = levels[1:-1]
    drop = {lv for lv, u in zip(middle, torch.rand(len(middle), generator=gen).tolist(), strict=True) if u < p}
    if not drop:
        return layers
    rank = {lv: i for i, lv in enumerate(lv for lv in levels if lv not in drop)}
    return [replace(la, level=rank[la.level]) for la in layers if la.level not in drop]


def hide_kinds(layers: list[ChunkedLayer], p: float, gen: torch.Generator) -> list[ChunkedLayer]:
    """The layers with each one's kind replaced by `other` with probability `p`: a training-time augmentation
    so the encoder does not lean on the layer type alone (a family may use a kind where the zoo never did)."""
    if p <= 0:
        return layers
    hide = torch.rand(len(layers), generator=gen).tolist()
    return [replace(la, kind=LayerKind.OTHER) if u < p else la for la, u in zip(layers, hide, strict=True)]


@dataclass
class Example:
    """One labelled checkpoint: its chunked layers, targets, the raw state and how LIR may permute it."""

    layers: list[ChunkedLayer]
    acc: float
    gap: float | None  # None: the labels give no gap
    arch: str  # the labels' family/arch column
    dataset: str
    state: dict[str, torch.Tensor] = field(repr=False)
    plan: PermutationPlan | str = field(default="not planned", repr=False)  # str: why LIR skips it
    path: Path | None = None


@dataclass
class Loaded:
    """One split of some sources: the examples, and the checkpoints that could not be read (path: reason)."""

    examples: list[Example]
    bad: list[str]


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every float tensor of a (small, labelled) checkpoint as an owned tensor, read through the bounded reader
    (integer buffers such as `num_batches_tracked` are neither encoded nor permuted)."""
    with CheckpointFile(path, Limits.unbudgeted()) as f:
        return {name: f.tensor(ref).clone() for name, ref in f.header.tensors.items() if ref.dtype in TORCH_DTYPES}


def _example(lab: Label, chunk_size: int) -> Example:
    state = read_state(lab.path)
    layers = chunk_checkpoint(checkpoint_from_tensors(state), chunk_size)
    if not layers:
        raise CheckpointError("no_layers", "no layer SNE can encode")
    return Example(layers, lab.accuracy, lab.gap, lab.family, lab.dataset, state, plan_permutations(state), lab.path)


def load_split(
    sources: Sequence[Path], split: str, chunk_size: int, limit: int | None = None, seed: int = 0, on_bad: OnBad = "fail",
    progress: bool = False,
) -> Loaded:
    """Checkpoints of one split of the given labels files / zoos, parsed and chunked once (they are small).

    Raises ``LabelError`` for a bad labels file, and (``on_bad="fail"``) when any checkpoint cannot be read."""
    labels = [lab for s in sources for lab in read_labels(Path(s)) if lab.split == split]
    if limit is not None and len(labels) > limit:
        labels = random.Random(seed).sample(labels, limit)
    out, bad = [], []
    with Progress(disable=not progress, transient=True) as bar:
        for lab in bar.track(labels, description=f"reading the {split} checkpoints"):
            try:
                out.append(_example(lab, chunk_size))
            except (CheckpointError, ValueError) as e:
                bad.append(f"{lab.path}: {e}")
    if bad and on_bad == "fail":
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise LabelError(
            f"{len(bad)} of {len(labels)} {split} checkpoints cannot be read: {shown} "
            "(fix or remove them, or pass --on-bad-checkpoint skip)"
        )
    return Loaded(out, bad)


def load_examples(
    sources: Sequence[Path], split: str, chunk_size: int, limit: int | None = None, seed: int = 0, on_bad: OnBad = "fail",
) -> list[Example]:
    """The examples of ``load_split`` (unreadable checkpoints skipped or fatal by ``on_bad``)."""
    return load_split(sources, split, chunk_size, limit, seed, on_bad).examples


class ExamplePredictions(TypedDict):
    """Predictions for examples, in order: numpy for scoring, the embeddings as a tensor for the OOD reference."""

    acc: np.ndarray  # [n]
    gap: np.ndarray  # [n]
    emb: torch.Tensor  # [n, encoding]


@torch.no_grad()
def predict_examples(model: Encoder, examples: Sequence[Example], batch_size: int = 64) -> ExamplePredictions:
    """Predicted accuracy, gap and embeddings for examples, in order."""
    model.eval()
    acc, gap, emb = [], [], []
    for i in range(0, len(examples), batch_size):
        out = model(pack([e.layers for e in examples[i : i + batch_size]]))
        acc.append(out.accuracy)
        gap.append(out.gap)
        emb.append(out.embedding)
    return {"acc": torch.cat(acc).numpy(), "gap": torch.cat(gap).numpy(), "emb": torch.cat(emb)}
