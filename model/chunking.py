"""Pad-chunk (paper §3.2) under a chunk budget, streaming: every weight and bias becomes a set of chunks.

Linear weights, biases, norms and embeddings are flattened, zero-padded to a multiple of `c` and cut into
chunks. Conv weights `out×in×k…` are chunked over their kernel dimensions: each kernel is its own chunk
(padded when smaller than `c`, split when larger). Values are divided by the part's std.

`chunk_file` reads one tensor at a time from the mapped file: exact statistics of all its values, then only
the chunks the budget keeps (`model.admission`), drawn stratified over the part with a generator seeded by the
content hash and the tensor's name, so the same file always gives the same chunks. Under budget the output
is the plain pad-chunking.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from model.admission import Admission, Limits, admit
from model.checkpoint import Checkpoint, CheckpointFile, Header, TensorRef, check_finite
from model.errors import CheckpointError
from model.layers import KIND_IDS, LayerKind, Skipped, part_rows
from model.pairs import N_PAIR, PairTracker
from model.stats import Scratch, stats_and_scale

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
    # [N_PAIR] float32: the weight against the previous weight in depth order (`model.pairs`); 0 without one
    pair: torch.Tensor = field(default_factory=lambda: torch.zeros(N_PAIR))


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table shown by the service and `sne inspect`."""

    name: str
    type: str
    level: int
    shape: list[int]
    parameters: int
    chunks: int  # of the whole layer
    chunks_sampled: int  # encoded

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChunkedCheckpoint:
    layers: list[ChunkedLayer]
    rows: list[LayerRow]
    skipped: list[Skipped] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(r.parameters for r in self.rows)

    @property
    def n_chunks(self) -> int:
        """Chunks encoded (after sampling)."""
        return sum(r.chunks_sampled for r in self.rows)

    @property
    def total_chunks(self) -> int:
        return sum(r.chunks for r in self.rows)


def type_id(kind: LayerKind, role: str) -> int:
    """Layer-type id fed to the type encoding; weight and bias chunks of one kind are told apart."""
    return KIND_IDS[kind] * len(ROLES) + ROLES.index(role)


def sample_indices(total: int, keep: int, seed: bytes | str, name: str) -> torch.Tensor:
    """`[keep]` sorted chunk indices out of `total`: one uniformly drawn from each of `keep` equal strata.

    Deterministic in (`seed`, `name`): the service passes the content sha256, so a file always gives the same
    sample, and two tensors of one file do not share a pattern.
    """
    raw = seed.encode() if isinstance(seed, str) else bytes(seed)
    digest = hashlib.sha256(raw + b"\0" + name.encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    edges = torch.arange(keep + 1, dtype=torch.int64) * total // keep  # [keep + 1] stratum bounds
    u = torch.rand(keep, generator=gen, dtype=torch.float64)  # [keep]
    return edges[:-1] + (u * (edges[1:] - edges[:-1])).long()  # [keep]


def _standardise(x: torch.Tensor, std: float) -> torch.Tensor:
    """`x / std` in float32, divided in float64: `std` (or `x`) may lie outside float32's range (F64 parts)."""
    return (x.to(torch.float64) / std).to(torch.float32)


def chunk_part(
    t: torch.Tensor, kind: LayerKind, role: str, c: int, keep: int | None = None, seed: bytes | str = b"", name: str = "",
    scratch: Scratch | None = None,
) -> Chunks:
    """Chunks of one part (any float dtype, e.g. a view of the mapped file); `keep` of them when sampled.

    Only the kept chunks are gathered and converted to float32, so memory follows the budget, not the part.
    `scratch` is the statistics' buffer, reused from part to part (`model.stats.Scratch`).
    """
    stats, std, finite = stats_and_scale(t, scratch=scratch)
    if not finite:  # the statistics' pass saw a NaN/Inf (or an extreme outlier): decide exactly
        check_finite(name, t)
    rows, k = part_rows(kind, role, t.shape)
    per_row = -(-k // c)
    total = rows * per_row
    w = min(c, k)
    flat = t.reshape(-1)
    if keep is None or keep >= total:
        values = _standardise(flat, std)
        if per_row > 1 or rows == 1:
            values = torch.nn.functional.pad(values.view(rows, k), (0, per_row * c - k)).view(total, c)
            w = c
        else:
            values = values.view(rows, k)  # one chunk per kernel: keep its k columns, padding is implicit
        length = torch.full((per_row,), c, dtype=torch.int64)
        length[-1] = k - (per_row - 1) * c
        return Chunks(values, length.repeat(rows), c, stats, total)  # values [total, w]
    idx = sample_indices(total, keep, seed, name)  # [keep]
    r, p = idx // per_row, idx % per_row
    length = (k - p * c).clamp(max=c)  # [keep]
    cols = torch.arange(w)
    valid = cols[None, :] < length[:, None]  # [keep, w]
    where = torch.where(valid, (r * k + p * c)[:, None] + cols[None, :], 0)  # [keep, w] flat positions
    values = _standardise(flat[where], std)  # [keep, w]: only these values are ever converted
    values[~valid] = 0.0
    return Chunks(values, length, c, stats, total)


Progress = Callable[[int, int], None]  # (parameters done, parameters in all) after each part
OnLayer = Callable[["ChunkedLayer"], None]  # each layer as soon as all its parts are chunked


def _chunk_planned(
    plan: Admission, get: Callable[[TensorRef], torch.Tensor], header: Header, seed: bytes | str,
    release: Callable[[TensorRef], None] = lambda ref: None, progress: Progress | None = None,
    on_layer: OnLayer | None = None, with_pairs: bool = True,
) -> ChunkedCheckpoint:
    layers, rows, done, everything = [], [], 0, plan.n_params
    scratch = Scratch()  # one buffer for every part's statistics: at most HELD_ELEMS values, freed on return
    # holds one Gram of at most model.pairs.MAX_UNITS^2 values
    pairs = PairTracker([next((pp.part.shape for pp in lp.parts if pp.part.role != "bias"), None) for lp in plan.layers]
                        if with_pairs else [])  # without: every layer's pair statistics stay zero
    for index, lp in enumerate(plan.layers):
        spec, parts, pair = lp.spec, [], torch.zeros(N_PAIR)
        for pp in lp.parts:
            ref = header.tensors[pp.part.key]
            t = get(ref)  # NaN/Inf are caught by chunk_part's one read of the values
            ch = chunk_part(t, spec.kind, pp.part.role, plan.chunk_size, pp.keep, seed, ref.name, scratch)
            if pp.part.role != "bias" and with_pairs:
                pair = pairs.step(index, t)  # after chunk_part: the values are known to be finite
            del t
            release(ref)
            done += ref.numel
            if progress is not None:
                progress(done, everything)
            parts.append(("bias" if pp.part.role == "bias" else "weight", ch))
        layers.append(ChunkedLayer(spec.name, spec.kind, spec.level, parts, pair))
        if on_layer is not None:
            on_layer(layers[-1])
        rows.append(LayerRow(spec.name, spec.kind.value, spec.level, spec.shape, spec.n_params, lp.total, lp.keep))
    return ChunkedCheckpoint(layers, rows, plan.skipped, header.metadata)


def chunk_file(
    source: str | Path | bytes, chunk_size: int, limits: Limits, seed: bytes | str, progress: Progress | None = None,
    on_layer: OnLayer | None = None, with_pairs: bool = True,
) -> ChunkedCheckpoint:
    """Admit, then chunk a safetensors file or its bytes one tensor at a time: the one entry point for uploads.
    `with_pairs=False` leaves the layers' pair statistics at zero, unread: for an encoder that does not use
    them (`SNEConfig.pair_stats` false), whose read they would only slow.

    Memory: the largest tensor's pages of the mapping, the statistics' buffer (one part of at most
    `model.stats.HELD_ELEMS` values) and the kept chunks; the mapping is closed on return and errors carry no
    traceback into tensor views (which would keep it mapped).
    """
    failure = CheckpointError("bad_tensor", "unreachable")
    with CheckpointFile(source, limits) as f:
        plan = admit(f.header, limits, chunk_size)
        try:
            return _chunk_planned(plan, f.tensor, f.header, seed, f.release, progress, on_layer, with_pairs)
        except CheckpointError as e:
            failure = CheckpointError(e.reason, e.message)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            failure = CheckpointError("bad_tensor", f"a tensor could not be read: {type(e).__name__}: {e}"[:300])
    raise failure  # outside the `with`: the mapping is closed first


def chunk_state(
    tensors: Mapping[str, torch.Tensor], chunk_size: int, limits: Limits, seed: bytes | str = b""
) -> ChunkedCheckpoint:
    """`chunk_file` for an in-memory state dict (zoo training, tests): same grouping, order and budgets."""
    header = Header.of_tensors(tensors)
    plan = admit(header, limits, chunk_size)
    return _chunk_planned(plan, lambda ref: tensors[ref.name], header, seed)


# ------------------------------------------------------------------------- in-memory `Checkpoint` helpers


def chunk_tensor(t: torch.Tensor, c: int, per_kernel: bool = False) -> Chunks:
    """All chunks of one tensor: flattened, or each kernel (dims 2…) separately with `per_kernel`."""
    return chunk_part(t, LayerKind.CONV2D if per_kernel else LayerKind.LINEAR, "weight", c)


def chunk_layer(layer, c: int) -> ChunkedLayer:
    """All chunks of a `model.checkpoint.Layer` (float32, in memory)."""
    parts = [(role, chunk_part(t, layer.kind, role, c)) for role, t in layer.parts]
    return ChunkedLayer(layer.name, layer.kind, layer.level, parts)


def chunk_checkpoint(ckpt: Checkpoint, c: int) -> list[ChunkedLayer]:
    """All layers of an in-memory checkpoint, pad-chunked with chunk size `c` (no budget), with their pair
    statistics as `chunk_file` computes them."""
    pairs = PairTracker([layer.weight.shape if layer.weight is not None else None for layer in ckpt.layers])
    out = []
    for index, layer in enumerate(ckpt.layers):
        chunked = chunk_layer(layer, c)
        out.append(replace(chunked, pair=pairs.step(index, layer.weight)) if layer.weight is not None else chunked)
    return out
