"""Pack any number of chunked checkpoints, of any architectures, into one batch for one forward.

All chunks go into one `[N, c]` tensor. Segments are contiguous: the chunks of a part (a layer's weight or
bias), the parts of a layer and the layers of a checkpoint each occupy one run of rows, described by
`*_start`/`*_len` index tensors. Per chunk only its values and length are stored; everything else (type,
depth, exact statistics, chunks before budget sampling) is per part.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from model.chunking import ChunkedLayer, Chunks, type_id
from model.pairs import N_PAIR
from model.stats import N_STATS


@dataclass
class PackedBatch:
    values: torch.Tensor  # [N, c] standardised chunk values, zero-padded
    lengths: torch.Tensor  # [N] real values per chunk
    part_start: torch.Tensor  # [P] first chunk of each part
    part_len: torch.Tensor  # [P] chunks encoded (after budget sampling)
    part_total: torch.Tensor  # [P] chunks of the whole part (before budget sampling)
    part_type: torch.Tensor  # [P] type id (layer kind x weight/bias)
    part_level: torch.Tensor  # [P] depth level of the part's layer
    part_depth: torch.Tensor  # [P] float: level / deepest level of the checkpoint, in [0, 1]
    part_stats: torch.Tensor  # [P, N_STATS] exact statistics of all values of the part
    layer_start: torch.Tensor  # [L] first part of each layer
    layer_len: torch.Tensor  # [L]
    layer_level: torch.Tensor  # [L]
    layer_pair: torch.Tensor  # [L, N_PAIR] each layer's weight against the previous weight (`model.pairs`)
    ckpt_start: torch.Tensor  # [B] first layer of each checkpoint
    ckpt_len: torch.Tensor  # [B]

    @property
    def n_checkpoints(self) -> int:
        return self.ckpt_start.shape[0]

    @property
    def n_chunks(self) -> int:
        return self.values.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.values.shape[1], device=self.values.device) < self.lengths[:, None]  # [N, c]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _starts(lengths: list[int]) -> torch.Tensor:
    t = torch.tensor(lengths, dtype=torch.int64)
    return torch.cumsum(t, 0) - t


def _cat_padded(chunks: list[Chunks]) -> torch.Tensor:
    """One `[N, c]` tensor; chunks stored narrower than `c` are zero-padded in this single copy."""
    sizes = {ch.size for ch in chunks}
    if len(sizes) != 1:
        raise ValueError(f"checkpoints chunked with different chunk sizes {sorted(sizes)} cannot share a batch")
    c = sizes.pop()
    out = torch.zeros(sum(ch.values.shape[0] for ch in chunks), c, dtype=torch.float32)  # [N, c]
    row = 0
    for ch in chunks:
        q, w = ch.values.shape
        out[row : row + q, :w] = ch.values
        row += q
    return out


def pack(checkpoints: Sequence[Sequence[ChunkedLayer]]) -> PackedBatch:
    """One batch from chunked checkpoints (each a list of `ChunkedLayer`)."""
    chunks: list[Chunks] = []
    part_len, part_total, part_type, part_level, part_depth = [], [], [], [], []
    layer_len, layer_level, layer_pair, ckpt_len = [], [], [], []
    for layers in checkpoints:
        if not layers:
            raise ValueError("pack() got a checkpoint without layers")
        ckpt_len.append(len(layers))
        deepest = max(1, max(layer.level for layer in layers))
        for layer in layers:
            layer_len.append(len(layer.parts))
            layer_level.append(layer.level)
            layer_pair.append(layer.pair.to(torch.float32))
            for role, ch in layer.parts:
                if ch.values.shape[0] < 1:
                    raise ValueError(f"layer {layer.name!r}: part {role!r} has no chunks")
                chunks.append(ch)
                part_len.append(ch.values.shape[0])
                part_total.append(ch.total)
                part_type.append(type_id(layer.kind, role))
                part_level.append(layer.level)
                part_depth.append(layer.level / deepest)
    if not ckpt_len:
        raise ValueError("pack() needs at least one checkpoint")
    stats = torch.stack([ch.stats.to(torch.float32) for ch in chunks]) if chunks else torch.zeros(0, N_STATS)
    return PackedBatch(
        values=_cat_padded(chunks),
        lengths=torch.cat([ch.lengths for ch in chunks]),
        part_start=_starts(part_len),
        part_len=torch.tensor(part_len, dtype=torch.int64),
        part_total=torch.tensor(part_total, dtype=torch.int64),
        part_type=torch.tensor(part_type, dtype=torch.int64),
        part_level=torch.tensor(part_level, dtype=torch.int64),
        part_depth=torch.tensor(part_depth, dtype=torch.float32),
        part_stats=stats,  # [P, N_STATS]
        layer_start=_starts(layer_len),
        layer_len=torch.tensor(layer_len, dtype=torch.int64),
        layer_level=torch.tensor(layer_level, dtype=torch.int64),
        layer_pair=torch.stack(layer_pair) if layer_pair else torch.zeros(0, N_PAIR),
        ckpt_start=_starts(ckpt_len),
        ckpt_len=torch.tensor(ckpt_len, dtype=torch.int64),
    )
