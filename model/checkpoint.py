"""Read a `.safetensors` checkpoint (never a pickle): the header first, bounded, then one tensor at a time.

Cheap-to-send, expensive-to-process things are bounded before any work that scales with them (header bytes,
metadata, tensor count, dimensions, integer sizes, parameters: `model.admission.Limits`). Tensors are
zero-copy views of the memory-mapped file (or of the uploaded bytes) in their stored dtype; nothing converts
the whole model. Every malformed input raises `CheckpointError`.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import torch

from model.admission import Limits
from model.errors import CheckpointError
from model.layers import (  # noqa: F401  (re-exported: the names others import from here)
    FLOAT_DTYPES,
    INT_DTYPES,
    KIND_IDS,
    RUNNING_STATS,
    LayerKind,
    Skipped,
    classify,
    group_layers,
    natural_key,
    split_name,
)

PLAUSIBLE_HEADER_BYTES = 100 * 2**20  # safetensors' own cap: beyond it the file is not safetensors at all
TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
_HUGE = 2**63  # what an integer of more than 18 digits parses as: above every bound, and never multiplied
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; Python's mmap names it from 3.13
FINITE_BLOCK = 1 << 15  # ATen's grain size: the sums run on the calling thread (see model.stats)
# Views of uploaded bytes are read-only buffers; they are only ever read (copies are made before any write).
warnings.filterwarnings("ignore", message="The given buffer is not writable")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: `begin`/`end` are byte offsets from the start of the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorRef]
    metadata: dict[str, str] = field(default_factory=dict)

    def entries(self) -> Iterator[tuple[str, str, tuple[int, ...]]]:
        return ((t.name, t.dtype, t.shape) for t in self.tensors.values())

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @classmethod
    def of_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> Header:
        """The header an in-memory state dict would have (offsets unused)."""
        refs = {k: TensorRef(k, DTYPE_NAMES.get(t.dtype, "I64"), tuple(t.shape), 0, 0) for k, t in tensors.items()}
        return cls(refs)


# --------------------------------------------------------------------------------------------- header


def _sniff(prefix: bytes) -> None:
    """Name the common wrong formats before they reach the parser, so users learn what to do."""
    if prefix[:1] == b"\x80":
        raise CheckpointError(
            "pickle",
            "this is a Python pickle (torch.save .pt/.bin); pickles can run code and are never loaded. "
            "Save the state_dict with safetensors.torch.save_file instead.",
        )
    if prefix[:4] == b"PK\x03\x04":
        raise CheckpointError(
            "zip",
            "this is a zip archive (torch.save's default format, which holds a pickle); it is never loaded. "
            "Save the state_dict with safetensors.torch.save_file instead.",
        )


def header_length(prefix: bytes, total_size: int, limits: Limits) -> int:
    """The header's byte length from the first 9 bytes, refused when implausible or over the limit."""
    if total_size < 8 or len(prefix) < 8:
        _sniff(prefix)
        raise CheckpointError("not_safetensors", f"{total_size} bytes is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if not (0 < n <= PLAUSIBLE_HEADER_BYTES and 8 + n <= total_size and prefix[8:9] == b"{"):
        _sniff(prefix)  # not shaped like safetensors: name the usual culprits first
    if n == 0 or n > PLAUSIBLE_HEADER_BYTES:
        raise CheckpointError("not_safetensors", f"header length {n} is not a plausible safetensors header")
    if 8 + n > total_size:
        raise CheckpointError("truncated", f"header claims {n} bytes but the file has only {total_size - 8} after it")
    if prefix[8:9] != b"{":
        raise CheckpointError("not_safetensors", "no JSON header at the start of the file: not a safetensors file")
    if n > limits.max_header_bytes:
        raise CheckpointError(
            "header_too_large", f"the header is {n:,} bytes, more than {limits.max_header_bytes:,} (SNE_MAX_HEADER_BYTES)"
        )
    return n


def _bounded_int(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE  # never convert thousands of digits


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a header")


def parse_header(prefix: bytes, total_size: int, limits: Limits) -> tuple[Header, int]:
    """Validate the header held in `prefix` (at least its first 8 + n bytes); return it and the data start."""
    n = header_length(prefix, total_size, limits)
    if len(prefix) < 8 + n:
        raise CheckpointError("truncated", "header is cut short")
    try:
        raw = json.loads(prefix[8 : 8 + n].decode("utf-8"), parse_int=_bounded_int, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError("bad_header", f"header is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError("bad_header", "header is not a JSON object")
    metadata = _check_metadata(raw.pop("__metadata__", None) or {}, limits)
    if len(raw) > limits.max_tensors:
        raise CheckpointError(
            "too_many_tensors", f"the checkpoint has {len(raw):,} tensors, more than {limits.max_tensors:,} (SNE_MAX_TENSORS)"
        )
    data_len = total_size - 8 - n
    tensors, params = {}, 0
    for name, info in raw.items():
        ref = _check_entry(name, info, data_len, limits)
        tensors[name] = TensorRef(name, ref.dtype, ref.shape, 8 + n + ref.begin, 8 + n + ref.end)
        params += ref.numel
        if params > limits.max_params:
            largest = sorted(tensors.values(), key=lambda t: -t.numel)[:3]
            raise CheckpointError(
                "too_many_params",
                f"the checkpoint has more than {limits.max_params:,} parameters (SNE_MAX_PARAMS); largest tensors: "
                + ", ".join(f"{t.name} {list(t.shape)}" for t in largest),
            )
    return Header(tensors, metadata), 8 + n


def _check_metadata(meta: object, limits: Limits) -> dict[str, str]:
    if not isinstance(meta, dict):
        raise CheckpointError("bad_header", "__metadata__ is not an object")
    if len(meta) > limits.max_metadata_entries:
        raise CheckpointError(
            "metadata_too_large",
            f"__metadata__ has {len(meta):,} entries, more than {limits.max_metadata_entries:,} (SNE_MAX_METADATA_ENTRIES)",
        )
    if not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError("bad_header", "__metadata__ values must be strings")
    size = sum(len(k) + len(v) for k, v in meta.items())
    if size > limits.max_metadata_bytes:
        raise CheckpointError(
            "metadata_too_large",
            f"__metadata__ holds {size:,} characters, more than {limits.max_metadata_bytes:,} (SNE_MAX_METADATA_BYTES)",
        )
    return dict(meta)


def _check_entry(name: str, info: object, data_len: int, limits: Limits) -> TensorRef:
    """One tensor's entry, each check bounded before the next scales with it (ndim before the sizes)."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError("bad_header", f"tensor {name!r}: entry needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    size = FLOAT_DTYPES.get(dtype) or INT_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if size is None:
        raise CheckpointError(
            "unsupported_dtype",
            f"tensor {name!r} has dtype {str(dtype)[:20]!r}; supported are F16, BF16, F32, F64 (integer tensors are skipped)",
        )
    if not isinstance(shape, list):
        raise CheckpointError("bad_header", f"tensor {name!r}: shape is not a list of sizes")
    if len(shape) > limits.max_ndim:
        raise CheckpointError(
            "too_many_dims", f"tensor {name!r} has {len(shape)} dimensions, more than {limits.max_ndim} (SNE_MAX_TENSOR_DIMS)"
        )
    if not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError("bad_header", f"tensor {name!r}: shape {str(shape)[:80]} is not a list of sizes")
    if any(d > limits.max_dim for d in shape):
        raise CheckpointError(
            "dim_too_large", f"tensor {name!r} has a dimension above {limits.max_dim:,} (SNE_MAX_DIM_SIZE)"
        )
    numel = math.prod(shape)  # at most max_ndim factors, each bounded: a small integer
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError("bad_offsets", f"tensor {name!r}: data_offsets {str(offsets)[:80]} are not [begin, end]")
    if offsets[1] > data_len:
        raise CheckpointError(
            "truncated", f"tensor {name!r} ends at byte {offsets[1]} but the data section has {data_len} bytes"
        )
    if offsets[1] - offsets[0] != numel * size:
        raise CheckpointError(
            "bad_offsets",
            f"tensor {name!r}: offsets span {offsets[1] - offsets[0]} bytes, shape {shape} needs {numel * size}",
        )
    return TensorRef(name, dtype, tuple(shape), offsets[0], offsets[1])


# --------------------------------------------------------------------------------------------- tensors


class CheckpointFile:
    """An open checkpoint: its bounded header and zero-copy, one-at-a-time access to its tensors.

    Use as a context manager: the file and its mapping are closed on exit. Views handed out keep the mapping
    alive (never dangling); `closed_cleanly` says whether none was left when it closed.
    """

    def __init__(self, source: str | Path | bytes | bytearray | memoryview, limits: Limits) -> None:
        self._file = None
        self._map: mmap.mmap | None = None
        self._buf: memoryview | None = None
        self.closed_cleanly = False
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                self._buf = memoryview(source).cast("B")
                self.header, self.data_start = parse_header(
                    bytes(self._buf[: 8 + min(limits.max_header_bytes, PLAUSIBLE_HEADER_BYTES) + 1]), len(self._buf), limits
                )
            else:
                self._file = open(source, "rb")  # noqa: SIM115  (closed by close())
                size = Path(source).stat().st_size
                prefix = self._file.read(9)
                n = header_length(prefix, size, limits)
                prefix += self._file.read(n - 1)
                self.header, self.data_start = parse_header(prefix, size, limits)
        except OSError as e:
            self.close()
            raise CheckpointError("unreadable", f"cannot read checkpoint: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    def tensor(self, ref: TensorRef) -> torch.Tensor:
        """The tensor in its stored dtype, viewing the file's bytes (a copy only if misaligned)."""
        dtype = TORCH_DTYPES[ref.dtype]
        if ref.numel == 0:
            return torch.empty(ref.shape, dtype=dtype)
        if self._file is not None and self._map is None:  # mapped on first use: header-only reads map nothing
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            self._buf = memoryview(self._map)
        if self._buf is None:
            raise CheckpointError("unreadable", "the checkpoint is closed")
        if self._map is not None:
            self._advise(MADV_POPULATE_READ, ref)  # one call maps the tensor's pages: ~7x cheaper than faulting each
        raw: memoryview | bytearray = self._buf[ref.begin : ref.end]
        if ref.begin % dtype.itemsize:
            raw = bytearray(raw)  # unaligned data: vectorised kernels want aligned elements
        return torch.frombuffer(raw, dtype=dtype, count=ref.numel).view(ref.shape)

    def release(self, ref: TensorRef) -> None:
        """Drop the pages a tensor was read from, so resident memory stays near one tensor, not the file."""
        self._advise(mmap.MADV_DONTNEED, ref)

    def _advise(self, advice: int, ref: TensorRef) -> None:
        """`madvise` over the pages of one tensor; a kernel that does not know the advice changes nothing."""
        if self._map is None or ref.end <= ref.begin:
            return
        start = ref.begin - ref.begin % mmap.PAGESIZE
        try:
            self._map.madvise(advice, start, ref.end - start)
        except (OSError, ValueError, AttributeError):
            pass  # an optimisation only

    def close(self) -> None:
        try:
            if self._buf is not None:
                self._buf.release()
            if self._map is not None:
                self._map.close()
            self.closed_cleanly = True
        except BufferError:
            self.closed_cleanly = False  # a view is still alive: the mapping goes when it does
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def all_finite(t: torch.Tensor, block: int = FINITE_BLOCK) -> bool:
    """NaN/Inf check block by block, any shape: a sum per block, exact min/max where the sum overflows."""
    flat = t.reshape(-1)
    wide = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
    for i in range(0, flat.numel(), block):
        b = flat[i : i + block]
        fast = bool(torch.isfinite(b.sum(dtype=wide)))  # NaN and Inf survive a sum; an overflow is re-checked
        if not fast and not (bool(torch.isfinite(b.amax())) and bool(torch.isfinite(b.amin()))):
            return False
    return True


def check_finite(name: str, t: torch.Tensor) -> None:
    if not all_finite(t):
        raise CheckpointError("non_finite", f"tensor {name!r} contains NaN or Inf values")


def read_header(source: str | Path | bytes, limits: Limits) -> Header:
    """The bounded header of a file or bytes, without reading (or mapping) any tensor."""
    with CheckpointFile(source, limits) as f:
        return f.header


# --------------------------------------------------------------------------------------------- in memory


@dataclass(frozen=True)
class Layer:
    """One module with float32 copies of its weight and bias: for small in-memory checkpoints only."""

    name: str
    kind: LayerKind
    level: int
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    @property
    def parts(self) -> list[tuple[str, torch.Tensor]]:
        return [(role, t) for role, t in (("weight", self.weight), ("bias", self.bias)) if t is not None]

    @property
    def n_params(self) -> int:
        return sum(t.numel() for _, t in self.parts)

    @property
    def shape(self) -> list[int]:
        t = self.weight if self.weight is not None else self.bias
        return list(t.shape) if t is not None else []


@dataclass(frozen=True)
class Checkpoint:
    layers: list[Layer]
    skipped: list[Skipped] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)


def _materialise(header: Header, get: object, metadata: dict[str, str]) -> Checkpoint:
    specs, skipped = group_layers(header.entries())
    if not specs:
        raise CheckpointError("no_layers", "the checkpoint holds no floating-point weights to encode")
    layers = []
    for spec in specs:
        roles: dict[str, torch.Tensor] = {}
        for p in spec.parts:
            t = get(p.key)  # type: ignore[operator]
            check_finite(p.key, t)
            roles[p.role] = t.to(torch.float32, copy=True)
        layers.append(Layer(spec.name, spec.kind, spec.level, roles.get("param", roles.get("weight")), roles.get("bias")))
    return Checkpoint(layers, skipped, metadata)


def load_checkpoint(source: str | Path | bytes, limits: Limits | None = None) -> Checkpoint:
    """All layers of a (small) checkpoint as float32 copies, in depth order. Large files: `chunk_file`."""
    with CheckpointFile(source, limits or Limits()) as f:
        return _materialise(f.header, lambda k: f.tensor(f.header.tensors[k]), f.header.metadata)


def checkpoint_from_tensors(tensors: Mapping[str, torch.Tensor]) -> Checkpoint:
    """A `Checkpoint` from an in-memory state dict (our own zoo and tests; user uploads go through bytes)."""
    return _materialise(Header.of_tensors(tensors), tensors.__getitem__, {})
