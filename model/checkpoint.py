"""Read a `.safetensors` checkpoint (never a pickle) and group its tensors into layers.

Pure functions: bytes or a path in, a `Checkpoint` out. Every malformed input raises `CheckpointError`.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load

from model.errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024

FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
INT_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8}
# Stats that describe the data a model saw, not what it learned: kept out of the encoding.
RUNNING_STATS = ("running_mean", "running_var")


class LayerKind(str, Enum):
    LINEAR = "linear"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV3D = "conv3d"
    NORM = "norm"
    EMBEDDING = "embedding"
    OTHER = "other"


KIND_IDS = {k: i for i, k in enumerate(LayerKind)}


@dataclass(frozen=True)
class Layer:
    """One module of the network: its weight and (separately) its bias, float32."""

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
        return list(t.shape)


@dataclass(frozen=True)
class Skipped:
    name: str
    dtype: str
    shape: list[int]
    reason: str


@dataclass(frozen=True)
class Checkpoint:
    layers: list[Layer]
    skipped: list[Skipped] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)


# --------------------------------------------------------------------------------------------- reading


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


def parse_header(prefix: bytes, total_size: int) -> tuple[dict, dict[str, str], int]:
    """Validate the safetensors header held in `prefix`; return (entries, metadata, data start)."""
    if total_size < 8 or len(prefix) < 8:
        _sniff(prefix)
        raise CheckpointError("not_safetensors", f"{total_size} bytes is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if not (0 < n <= MAX_HEADER_BYTES and 8 + n <= total_size and prefix[8:9] == b"{"):
        _sniff(prefix)  # not shaped like safetensors: name the usual culprits first
    if n == 0 or n > MAX_HEADER_BYTES:
        raise CheckpointError("not_safetensors", f"header length {n} is not a plausible safetensors header")
    if 8 + n > total_size:
        raise CheckpointError("truncated", f"header claims {n} bytes but the file has only {total_size - 8} after it")
    if len(prefix) < 8 + n:
        raise CheckpointError("truncated", "header is cut short")
    raw = prefix[8 : 8 + n]
    if raw[:1] != b"{":
        raise CheckpointError("not_safetensors", "no JSON header at the start of the file: not a safetensors file")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError("bad_header", f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError("bad_header", "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError("bad_header", "__metadata__ is not an object")
    data_len = total_size - 8 - n
    for name, info in header.items():
        _check_entry(name, info, data_len)
    return header, {str(k): str(v) for k, v in metadata.items()}, 8 + n


def _check_entry(name: str, info: object, data_len: int) -> None:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError("bad_header", f"tensor {name!r}: entry needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    size = FLOAT_DTYPES.get(dtype) or INT_DTYPES.get(dtype)
    if size is None:
        raise CheckpointError(
            "unsupported_dtype",
            f"tensor {name!r} has dtype {dtype!r}; supported are F16, BF16, F32, F64 (integer tensors are skipped)",
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError("bad_header", f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError("bad_offsets", f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    if offsets[1] > data_len:
        raise CheckpointError(
            "truncated", f"tensor {name!r} ends at byte {offsets[1]} but the data section has {data_len} bytes"
        )
    if offsets[1] - offsets[0] != math.prod(shape) * size:
        raise CheckpointError(
            "bad_offsets", f"tensor {name!r}: offsets span {offsets[1] - offsets[0]} bytes, shape {shape} needs "
            f"{math.prod(shape) * size}"
        )


def read_tensors(source: str | Path | bytes) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]]:
    """Tensors, header entries and metadata of a safetensors file given as a path or its bytes."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            header, metadata, _ = parse_header(data[: 8 + MAX_HEADER_BYTES], len(data))
            return st_load(data), header, metadata
        path = Path(source)
        total = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) == 8:
                (n,) = struct.unpack("<Q", prefix)
                if 0 < n <= min(MAX_HEADER_BYTES, total):
                    prefix += f.read(n)
        header, metadata, _ = parse_header(prefix, total)
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, header, metadata
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError("unreadable", f"cannot read checkpoint: {e.strerror or e}") from None
    except Exception as e:  # the library's own validation (SafetensorError and friends)
        raise CheckpointError("invalid_safetensors", f"safetensors refused the file: {e}") from None


# --------------------------------------------------------------------------------------------- grouping

_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that puts `blocks.2` before `blocks.10` (depth order, not alphabetical)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _NUM.split(name) if p)


def split_name(key: str) -> tuple[str, str]:
    """`features.0.weight` -> (`features.0`, `weight`); `attn.in_proj_bias` -> (`attn.in_proj`, `bias`).

    A bare parameter (`cls_token`) is its own module with role `param`.
    """
    module, _, last = key.rpartition(".")
    if last in ("weight", "bias"):
        return module or last, last
    for role in ("weight", "bias"):
        if last.endswith("_" + role):
            stem = last[: -len(role) - 1]
            return (f"{module}.{stem}" if module else stem), role
    return key, "param"


def classify(name: str, weight: torch.Tensor | None, bare: bool = False) -> LayerKind:
    """Layer type from the weight's rank, with embeddings recognised by name.

    `bare` parameters (no `.weight`/`.bias` module) are not conv or linear weights whatever their rank.
    """
    low = name.lower()
    if weight is None:
        return LayerKind.OTHER
    if "embed" in low or low.endswith(("wte", "wpe")):
        if weight.ndim == 2 or bare:
            return LayerKind.EMBEDDING
    if bare:
        return LayerKind.OTHER
    by_rank = {1: LayerKind.NORM, 2: LayerKind.LINEAR, 3: LayerKind.CONV1D, 4: LayerKind.CONV2D, 5: LayerKind.CONV3D}
    return by_rank.get(weight.ndim, LayerKind.OTHER)


def _all_finite(t: torch.Tensor) -> bool:
    """NaN/Inf check at the cost of one sum: NaN and Inf survive a sum; an overflowing sum is re-checked."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def group_layers(tensors: dict[str, torch.Tensor], header: dict) -> tuple[list[Layer], list[Skipped]]:
    """Group floating tensors into layers ordered by natural depth; report what was left out and why."""
    skipped: list[Skipped] = []
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted(tensors, key=natural_key):
        t = tensors[key]
        dtype = header.get(key, {}).get("dtype", str(t.dtype))
        if dtype in INT_DTYPES or not t.is_floating_point():
            skipped.append(Skipped(key, dtype, list(t.shape), "integer tensor (e.g. num_batches_tracked)"))
            continue
        if key.rsplit(".", 1)[-1] in RUNNING_STATS:
            skipped.append(Skipped(key, dtype, list(t.shape), "normalization running statistic"))
            continue
        if t.numel() == 0:
            skipped.append(Skipped(key, dtype, list(t.shape), "empty tensor"))
            continue
        t = t.to(torch.float32)
        if not _all_finite(t):
            raise CheckpointError("non_finite", f"tensor {key!r} contains NaN or Inf values")
        module, role = split_name(key)
        parts = modules.setdefault(module, {})
        if role in parts or (role == "param" and parts) or "param" in parts:
            module, role = key, "param"  # name clash (e.g. `x.weight` and `x_weight`): keep both, apart
            parts = modules.setdefault(module, {})
        parts[role] = t
    layers = []
    for level, name in enumerate(sorted(modules, key=natural_key)):
        parts = modules[name]
        bare = "param" in parts
        w, b = parts.get("param", parts.get("weight")), parts.get("bias")
        layers.append(Layer(name, classify(name, w, bare), level, w, b))
    return layers, skipped


def load_checkpoint(source: str | Path | bytes) -> Checkpoint:
    """Parse a safetensors checkpoint (path or bytes) into layers; raise `CheckpointError` when it is bad."""
    tensors, header, metadata = read_tensors(source)
    layers, skipped = group_layers(tensors, header)
    if not layers:
        raise CheckpointError("no_layers", "the checkpoint holds no floating-point weights to encode")
    return Checkpoint(layers, skipped, metadata)


def checkpoint_from_tensors(tensors: dict[str, torch.Tensor]) -> Checkpoint:
    """A `Checkpoint` from an in-memory state dict (our own zoo and tests; user uploads go through bytes)."""
    layers, skipped = group_layers(tensors, {})
    if not layers:
        raise CheckpointError("no_layers", "the checkpoint holds no floating-point weights to encode")
    return Checkpoint(layers, skipped, {})
