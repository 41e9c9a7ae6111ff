"""Pack any number of chunked checkpoints, of any architectures, into one batch for one forward.

All chunks go into one `[N, c]` tensor. Segments are contiguous: the chunks of a part (a layer's weight or
bias), the parts of a layer and the layers of a checkpoint each occupy one run of rows, described by
`*_start`/`*_len` index tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from model.chunking import ChunkedLayer, Chunks, type_id


@dataclass
class PackedBatch:
    values: torch.Tensor  # [N, c]
    lengths: torch.Tensor  # [N] real values per chunk
    chunk_type: torch.Tensor  # [N]
    chunk_level: torch.Tensor  # [N]
    part_start: torch.Tensor  # [P] first chunk of each part
    part_len: torch.Tensor  # [P]
    part_level: torch.Tensor  # [P]
    layer_start: torch.Tensor  # [L] first part of each layer
    layer_len: torch.Tensor  # [L]
    layer_level: torch.Tensor  # [L]
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
        return torch.arange(self.values.shape[1], device=self.values.device) < self.lengths[:, None]

    def to(self, device: torch.device | str) -> "PackedBatch":
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
    out = torch.zeros(sum(ch.values.shape[0] for ch in chunks), c, dtype=torch.float32)
    row = 0
    for ch in chunks:
        q, w = ch.values.shape
        out[row : row + q, :w] = ch.values
        row += q
    return out


def pack(checkpoints: Sequence[list[ChunkedLayer]]) -> PackedBatch:
    """One batch from chunked checkpoints (each a list of `ChunkedLayer`)."""
    chunks, lengths, ctype, clevel = [], [], [], []
    part_len, part_level, layer_len, layer_level, ckpt_len = [], [], [], [], []
    for layers in checkpoints:
        ckpt_len.append(len(layers))
        for layer in layers:
            layer_len.append(len(layer.parts))
            layer_level.append(layer.level)
            for role, ch in layer.parts:
                q = ch.values.shape[0]
                chunks.append(ch)
                lengths.append(ch.lengths)
                ctype.append(torch.full((q,), type_id(layer.kind, role), dtype=torch.int64))
                clevel.append(torch.full((q,), layer.level, dtype=torch.int64))
                part_len.append(q)
                part_level.append(layer.level)
    if not ckpt_len:
        raise ValueError("pack() needs at least one checkpoint")
    return PackedBatch(
        values=_cat_padded(chunks),
        lengths=torch.cat(lengths),
        chunk_type=torch.cat(ctype),
        chunk_level=torch.cat(clevel),
        part_start=_starts(part_len),
        part_len=torch.tensor(part_len, dtype=torch.int64),
        part_level=torch.tensor(part_level, dtype=torch.int64),
        layer_start=_starts(layer_len),
        layer_len=torch.tensor(layer_len, dtype=torch.int64),
        layer_level=torch.tensor(layer_level, dtype=torch.int64),
        ckpt_start=_starts(ckpt_len),
        ckpt_len=torch.tensor(ckpt_len, dtype=torch.int64),
    )
