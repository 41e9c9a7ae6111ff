"""Decide from the header alone whether a checkpoint is taken, and how many chunks of each part are encoded.

Everything here is shape arithmetic: no tensor is read. The service and the CLI call the same `admit`, so a
file is refused (or sampled) the same way everywhere, and the refusal names the setting that governs it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from model.errors import CheckpointError
from model.layers import LayerSpec, Part, Skipped, group_layers, part_chunks

if TYPE_CHECKING:
    from model.checkpoint import Header


class Limits(BaseModel):
    """Bounds checked before work that scales with them (header) and the chunk budgets (encoding cost)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_header_bytes: int = Field(default=4 * 2**20, ge=2, description="JSON header size (SNE_MAX_HEADER_BYTES)")
    max_metadata_entries: int = Field(default=1024, ge=0, description="__metadata__ keys (SNE_MAX_METADATA_ENTRIES)")
    max_metadata_bytes: int = Field(default=2**20, ge=0, description="__metadata__ keys+values (SNE_MAX_METADATA_BYTES)")
    max_tensors: int = Field(
        default=4096, ge=1, description="tensors per checkpoint (SNE_MAX_TENSORS): ~0.5 ms of statistics each"
    )
    max_ndim: int = Field(default=8, ge=1, le=64, description="dimensions per tensor (SNE_MAX_TENSOR_DIMS)")
    max_dim: int = Field(default=2**40, ge=1, description="largest size of one dimension (SNE_MAX_DIM_SIZE)")
    max_params: int = Field(default=2**31, ge=1, description="values in all tensors together (SNE_MAX_PARAMS)")
    layer_chunk_budget: int = Field(
        default=4096, ge=1, description="chunks encoded per layer; more are sampled (SNE_LAYER_CHUNK_BUDGET)"
    )
    checkpoint_chunk_budget: int = Field(
        default=16384, ge=1, description="chunks encoded per checkpoint; more are sampled (SNE_CHECKPOINT_CHUNK_BUDGET)"
    )

    @classmethod
    def unbudgeted(cls) -> Limits:
        """Every chunk kept: for our own small zoo checkpoints, where sampling would only add noise."""
        return cls(layer_chunk_budget=2**62, checkpoint_chunk_budget=2**62)


SETTINGS = {
    "max_header_bytes": "SNE_MAX_HEADER_BYTES",
    "max_metadata_entries": "SNE_MAX_METADATA_ENTRIES",
    "max_metadata_bytes": "SNE_MAX_METADATA_BYTES",
    "max_tensors": "SNE_MAX_TENSORS",
    "max_ndim": "SNE_MAX_TENSOR_DIMS",
    "max_dim": "SNE_MAX_DIM_SIZE",
    "max_params": "SNE_MAX_PARAMS",
    "layer_chunk_budget": "SNE_LAYER_CHUNK_BUDGET",
    "checkpoint_chunk_budget": "SNE_CHECKPOINT_CHUNK_BUDGET",
}


@dataclass(frozen=True)
class PartPlan:
    part: Part
    total: int  # chunks of the whole part
    keep: int  # chunks encoded (sampled when fewer than total)


@dataclass(frozen=True)
class LayerPlan:
    spec: LayerSpec
    parts: tuple[PartPlan, ...]

    @property
    def total(self) -> int:
        return sum(p.total for p in self.parts)

    @property
    def keep(self) -> int:
        return sum(p.keep for p in self.parts)


@dataclass(frozen=True)
class Admission:
    """What will be encoded: layers in depth order with chunk counts, and what was left out."""

    layers: list[LayerPlan]
    skipped: list[Skipped]
    chunk_size: int

    @property
    def n_params(self) -> int:
        return sum(layer.spec.n_params for layer in self.layers)

    @property
    def total_chunks(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def kept_chunks(self) -> int:
        return sum(layer.keep for layer in self.layers)


def water_fill(sizes: Sequence[int], budget: int) -> list[int]:
    """Split `budget` over items of the given sizes: small ones keep all, large ones share the rest equally.

    Each item keeps at least 1 (an empty set cannot be encoded); leftover units go to the first large items.
    """
    if sum(sizes) <= budget:
        return list(sizes)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    left, level = budget, 0
    for rank, i in enumerate(order):
        share = left // (len(sizes) - rank)
        if sizes[i] > share:
            level = share
            break
        left -= sizes[i]
    level = max(level, 1)
    keep = [min(s, level) for s in sizes]
    spare = budget - sum(keep)
    for i in range(len(sizes)):
        if spare <= 0:
            break
        if sizes[i] > keep[i]:
            keep[i] += 1
            spare -= 1
    return keep


def admit(header: Header, limits: Limits, chunk_size: int) -> Admission:
    """Plan the encoding of a checkpoint from its (already bounded) header: per-part chunk counts and samples.

    Refuses only what no budget can fix: nothing to encode, or more parts than the checkpoint budget (every
    part is encoded from at least one chunk).
    """
    specs, skipped = group_layers(header.entries())
    if not specs:
        raise CheckpointError("no_layers", "the checkpoint holds no floating-point weights to encode")
    totals = [[part_chunks(s.kind, p.role, p.shape, chunk_size) for p in s.parts] for s in specs]
    capped = [water_fill(t, limits.layer_chunk_budget) for t in totals]
    flat = water_fill([k for layer in capped for k in layer], limits.checkpoint_chunk_budget)
    n_parts = len(flat)
    if n_parts > limits.checkpoint_chunk_budget:
        raise CheckpointError(
            "too_many_parts",
            f"the checkpoint has {n_parts:,} weights and biases but SNE_CHECKPOINT_CHUNK_BUDGET is "
            f"{limits.checkpoint_chunk_budget:,} chunks (each is encoded from at least one chunk)",
        )
    layers, i = [], 0
    for spec, total in zip(specs, totals, strict=True):
        parts = tuple(PartPlan(p, t, flat[i + j]) for j, (p, t) in enumerate(zip(spec.parts, total, strict=True)))
        i += len(parts)
        layers.append(LayerPlan(spec, parts))
    return Admission(layers, skipped, chunk_size)


def sampled_layers(admission: Admission, top: int = 3) -> str:
    """The layers sampled most (for messages and logs): `name (kept/total)`."""
    worst = sorted((layer for layer in admission.layers if layer.keep < layer.total), key=lambda lp: lp.keep / lp.total)
    return ", ".join(f"{lp.spec.name} ({lp.keep:,}/{lp.total:,})" for lp in worst[:top])
