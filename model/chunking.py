"""Pad-chunk (paper §3.2): every weight and bias becomes a set of chunks of `c` values with masks.

Linear weights, biases, norms and embeddings are flattened, zero-padded to a multiple of `c` and cut into
chunks. Conv weights `out×in×k…` are chunked over their kernel dimensions: each kernel is its own chunk
(padded when smaller than `c`, split when larger).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.checkpoint import KIND_IDS, Checkpoint, LayerKind
from model.stats import stats_and_scale

CONV_KINDS = (LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D)
ROLES = ("weight", "bias")
N_TYPES = len(KIND_IDS) * len(ROLES)


@dataclass(frozen=True)
class Chunks:
    """A part's chunks of size `c`. `values` may be stored narrower than `c` (e.g. 3×3 kernels as 9 columns)
    when every column past that width would be padding: the zeros are only written by `padded()`/`pack`.

    Values are divided by the part's std (`model.stats.stats_and_scale`), so every part reaches the encoder at
    unit scale; the scale itself and the rest of the part's shape travel, exact, in `stats`. Under a chunk
    budget only `q` of the part's `total` chunks are kept.
    """

    values: torch.Tensor  # [q, w] float32, w <= c; zeros where padded; the part's values / its std
    lengths: torch.Tensor  # [q] int64, real values per chunk
    size: int  # c
    stats: torch.Tensor  # [N_STATS] float32: exact statistics of ALL values of the part
    total: int  # chunks of the whole part before budget sampling (q <= total)

    @property
    def mask(self) -> torch.Tensor:
        """`[q, c]`: True where a value is real, False where it is padding."""
        return torch.arange(self.size) < self.lengths[:, None]

    def padded(self) -> torch.Tensor:
        """`[q, c]` values, zero-padded."""
        w = self.values.shape[1]
        return self.values if w == self.size else torch.nn.functional.pad(self.values, (0, self.size - w))


@dataclass(frozen=True)
class ChunkedLayer:
    name: str
    kind: LayerKind
    level: int
    parts: list[tuple[str, Chunks]]  # ("weight", chunks), ("bias", chunks)


def type_id(kind: LayerKind, role: str) -> int:
    """Layer-type id fed to the type encoding; weight and bias chunks of one kind are told apart."""
    return KIND_IDS[kind] * len(ROLES) + ROLES.index(role)


def chunk_tensor(t: torch.Tensor, c: int, per_kernel: bool = False) -> Chunks:
    """Flatten, pad to a multiple of `c` and chunk; with `per_kernel`, each kernel (dims 2…) separately."""
    stats, std = stats_and_scale(t)
    t = t.to(torch.float32) / std
    rows = t.reshape(t.shape[0] * t.shape[1], -1) if per_kernel else t.reshape(1, -1)
    n_rows, k = rows.shape
    per_row = -(-k // c)
    row_lengths = torch.full((per_row,), c, dtype=torch.int64)
    row_lengths[-1] = k - (per_row - 1) * c
    if per_row == 1 and n_rows > 1:
        values = rows  # one chunk per kernel: keep its k columns, padding is implicit (no copy)
    elif k == per_row * c:
        values = rows.reshape(-1, c)
    else:
        values = rows.new_zeros(n_rows, per_row * c)
        values[:, :k] = rows
        values = values.view(-1, c)
    return Chunks(values, row_lengths.repeat(n_rows), c, stats, values.shape[0])


def _per_kernel(layer, role: str, t: torch.Tensor) -> bool:
    """Conv weights are chunked kernel by kernel; everything else is flattened whole."""
    return role == "weight" and layer.kind in CONV_KINDS and t.ndim >= 3


def chunk_layer(layer, c: int) -> ChunkedLayer:
    parts = [(role, chunk_tensor(t, c, _per_kernel(layer, role, t))) for role, t in layer.parts]
    return ChunkedLayer(layer.name, layer.kind, layer.level, parts)


def expected_chunks(layer, c: int) -> int:
    """Chunks `chunk_layer` makes of `layer`, from shapes alone: lets a too-large layer be refused unchunked."""
    n = 0
    for role, t in layer.parts:
        if _per_kernel(layer, role, t):
            n += t.shape[0] * t.shape[1] * -(-math.prod(t.shape[2:]) // c)
        else:
            n += -(-t.numel() // c)
    return n


def chunk_checkpoint(ckpt: Checkpoint, c: int) -> list[ChunkedLayer]:
    """All layers of a checkpoint, pad-chunked with chunk size `c`."""
    return [chunk_layer(layer, c) for layer in ckpt.layers]


def count_chunks(layers: list[ChunkedLayer]) -> int:
    return sum(ch.values.shape[0] for layer in layers for _, ch in layer.parts)
