import io
import json
import math
import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from app.errors import checkpoint_status
from model.admission import Limits
from model.checkpoint import (
    CheckpointFile,
    LayerKind,
    all_finite,
    load_checkpoint,
    natural_key,
    read_header,
    split_name,
)
from model.chunking import chunk_file
from model.errors import CheckpointError
from tests.nets import BUILDERS, checkpoint_bytes, checkpoint_file, resnet, state


@pytest.mark.parametrize("name", list(BUILDERS))
def test_path_and_bytes_agree(tmp_path, name):
    a = load_checkpoint(checkpoint_bytes(name))
    b = load_checkpoint(checkpoint_file(tmp_path, name))
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.weight, lb.weight)


def test_arch1_layers():
    ck = load_checkpoint(checkpoint_bytes("arch1"))
    assert [(l.name, l.kind, l.level, l.shape) for l in ck.layers] == [
        ("0", LayerKind.CONV2D, 0, [16, 1, 3, 3]),
        ("2", LayerKind.CONV2D, 1, [16, 16, 3, 3]),
        ("4", LayerKind.CONV2D, 2, [16, 16, 3, 3]),
        ("8", LayerKind.LINEAR, 3, [10, 16]),
    ]
    assert ck.n_params == 160 + 2320 + 2320 + 170
    assert all(l.bias is not None for l in ck.layers)


def test_resnet_batchnorm_stats_skipped_and_reported():
    ck = load_checkpoint(save(state(resnet())))
    kinds = {l.name: l.kind for l in ck.layers}
    assert kinds["1.bn1"] == LayerKind.NORM and kinds["1.conv1"] == LayerKind.CONV2D
    assert ck.layers[[l.name for l in ck.layers].index("1.conv1")].bias is None
    reasons = {s.name: s.reason for s in ck.skipped}
    assert "integer" in reasons["1.bn1.num_batches_tracked"]
    assert "running" in reasons["1.bn1.running_mean"] and "2.bn2.running_var" in reasons
    assert all(l.weight.dtype == torch.float32 for l in ck.layers)


def test_transformer_kinds():
    ck = load_checkpoint(checkpoint_bytes("transformer"))
    names = {l.name: l.kind for l in ck.layers}
    assert names["layers.0.self_attn.in_proj"] == LayerKind.LINEAR  # in_proj_weight + in_proj_bias
    assert names["layers.0.norm1"] == LayerKind.NORM
    ip = next(l for l in ck.layers if l.name == "layers.0.self_attn.in_proj")
    assert ip.weight.shape == (96, 32) and ip.bias.shape == (96,)


def test_embedding_by_name_and_other():
    ck = load_checkpoint(save({"tok_embed.weight": torch.randn(50, 8), "cls_token": torch.randn(1, 1, 8), "scale": torch.tensor(2.0)}))
    kinds = {l.name: l.kind for l in ck.layers}
    assert kinds == {"tok_embed": LayerKind.EMBEDDING, "cls_token": LayerKind.OTHER, "scale": LayerKind.OTHER}
    ck = load_checkpoint(save({"pos_embedding": torch.randn(1, 5, 8), "x.weight": torch.randn(3, 2), "x_weight": torch.randn(3)}))
    kinds = {l.name: l.kind for l in ck.layers}
    assert kinds == {"pos_embedding": LayerKind.EMBEDDING, "x": LayerKind.LINEAR, "x_weight": LayerKind.OTHER}


def test_level_follows_depth_not_alphabet():
    tensors = {f"blocks.{i}.weight": torch.full((2, 2), float(i)) for i in (0, 1, 2, 10, 11)}
    ck = load_checkpoint(save(tensors))
    assert [l.name for l in ck.layers] == ["blocks.0", "blocks.1", "blocks.2", "blocks.10", "blocks.11"]
    assert [l.level for l in ck.layers] == [0, 1, 2, 3, 4]
    assert sorted(["blocks.10.a", "blocks.2.a", "blocks.1.a"], key=natural_key) == ["blocks.1.a", "blocks.2.a", "blocks.10.a"]


def test_split_name():
    assert split_name("features.0.weight") == ("features.0", "weight")
    assert split_name("attn.in_proj_bias") == ("attn.in_proj", "bias")
    assert split_name("pos_embedding") == ("pos_embedding", "param")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_accepted(dtype):
    ck = load_checkpoint(save({"fc.weight": torch.randn(4, 3).to(dtype), "fc.bias": torch.randn(4).to(dtype)}))
    assert ck.layers[0].weight.dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rejected(bad):
    w = torch.randn(4, 3)
    w[1, 1] = bad
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(save({"fc.weight": w}))
    assert e.value.reason == "non_finite" and "fc.weight" in str(e.value)


def _header_file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _torch_save(**kw) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.randn(3)}, buf, **kw)
    return buf.getvalue()


BAD = {
    "pickle": (_torch_save(_use_new_zipfile_serialization=False), "pickle", 415),
    "zip": (_torch_save(), "zip", 415),
    "random": (bytes(range(256)) * 8, "not_safetensors", 415),
    "empty": (b"", "not_safetensors", 415),
    "tiny": (b"abc", "not_safetensors", 415),
    "header_len_lies": (struct.pack("<Q", 10_000) + b'{"a": 1}', "truncated", 422),
    "not_json": (struct.pack("<Q", 5) + b"{oops", "bad_header", 422),
    "offsets_lie": (_header_file({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(16)), "bad_offsets", 422),
    "offsets_past_end": (_header_file({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)), "truncated", 422),
    "unknown_dtype": (_header_file({"w": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)), "unsupported_dtype", 422),
    "fp8": (_header_file({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, bytes(4)), "unsupported_dtype", 422),
    "bad_shape": (_header_file({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)), "bad_header", 422),
    "only_ints": (save({"n": torch.tensor([3])}), "no_layers", 422),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_typed_error(case, tmp_path):
    data, reason, status = BAD[case]
    for source in (data, tmp_path / "f.safetensors"):
        if not isinstance(source, bytes):
            source.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(source)
        assert e.value.reason == reason, str(e.value)
        assert checkpoint_status(e.value) == status
        assert len(str(e.value)) > 10


def test_truncated_real_checkpoint(tmp_path):
    data = checkpoint_bytes("arch1")
    for cut in (len(data) // 2, len(data) - 1, 12):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(data[:cut])
        assert e.value.reason in {"truncated", "not_safetensors"}


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "nope.safetensors")
    assert e.value.reason == "unreadable"


# ------------------------------------------------------------------------------------- bounds before work


def _entries(n: int, shape: list, dtype: str = "F32") -> dict:
    size = {"F32": 4, "BF16": 2}[dtype]
    numel = 1
    for d in shape:
        numel *= d
    return {f"t{i}": {"dtype": dtype, "shape": shape, "data_offsets": [i * numel * size, (i + 1) * numel * size]} for i in range(n)}


SMALL = Limits(max_header_bytes=4096, max_metadata_entries=4, max_metadata_bytes=64, max_tensors=8, max_ndim=4,
               max_dim=1000, max_params=10_000)
BOUNDS = {
    "header_bytes": (_header_file(_entries(1, [2]) | {"__metadata__": {"pad": "x" * 5000}}, bytes(8)), "header_too_large", "SNE_MAX_HEADER_BYTES"),
    "metadata_entries": (_header_file(_entries(1, [2]) | {"__metadata__": {str(i): "" for i in range(5)}}, bytes(8)), "metadata_too_large", "SNE_MAX_METADATA_ENTRIES"),
    "metadata_bytes": (_header_file(_entries(1, [2]) | {"__metadata__": {"k": "v" * 100}}, bytes(8)), "metadata_too_large", "SNE_MAX_METADATA_BYTES"),
    "tensors": (_header_file(_entries(9, [1]), bytes(36)), "too_many_tensors", "SNE_MAX_TENSORS"),
    "dims": (_header_file(_entries(1, [1] * 5), bytes(4)), "too_many_dims", "SNE_MAX_TENSOR_DIMS"),
    "dim_size": (_header_file(_entries(1, [1001]), bytes(4004)), "dim_too_large", "SNE_MAX_DIM_SIZE"),
    "params": (_header_file(_entries(2, [100, 60]), bytes(48_000)), "too_many_params", "SNE_MAX_PARAMS"),
}


@pytest.mark.parametrize("case", list(BOUNDS))
def test_each_bound_its_reason_and_setting(case, tmp_path):
    data, reason, setting = BOUNDS[case]
    path = tmp_path / "f.safetensors"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(CheckpointError) as e:
            read_header(source, SMALL)
        assert e.value.reason == reason and setting in str(e.value), str(e.value)
    assert read_header(data, Limits()).tensors  # the same file is fine within the default limits


def test_default_limits_take_real_headers():
    assert Limits().max_ndim == 8 and Limits().max_params >= 2_000_000_000
    ckpt = save({f"blocks.{i}.weight": torch.zeros(1, 1, 1, 1, 1, 1, 1, 2) for i in range(3)})
    assert read_header(ckpt, Limits()).n_params == 6


def _timed_refusal(data: bytes, reason: str) -> float:
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        read_header(data, Limits())
    assert e.value.reason == reason, str(e.value)
    return time.perf_counter() - t0


def test_adversarial_shapes_refused_at_once():
    """A hang guard (issue 11: 600 ints of 4,299 digits froze the server 24 s; 100,000 ones took 58 s)."""
    huge = "9" * 4299
    raw = ('{"w": {"dtype": "F32", "shape": [' + ", ".join([huge] * 600) + '], "data_offsets": [0, 4]}}').encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(4)
    assert len(data) > 2_500_000
    assert _timed_refusal(data, "too_many_dims") < 2.0
    raw = ('{"w": {"dtype": "F32", "shape": [' + ", ".join([huge] * 3) + '], "data_offsets": [0, 4]}}').encode()
    assert _timed_refusal(struct.pack("<Q", len(raw)) + raw + bytes(4), "dim_too_large") < 2.0
    assert _timed_refusal(_header_file(_entries(1, [1] * 100_000), bytes(4)), "too_many_dims") < 2.0
    assert _timed_refusal(_header_file(_entries(20_000, [1]), bytes(80_000)), "too_many_tensors") < 2.0


def test_huge_sparse_file_refused_from_its_header_alone(tmp_path):
    """Nothing past the header is read: a 64 GB (sparse) file over the parameter bound is refused at once."""
    n = 2**33  # 8 G floats = 32 GB
    header = {"a": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]},
              "b": {"dtype": "F32", "shape": [n], "data_offsets": [4 * n, 8 * n]}}
    path = tmp_path / "sparse.safetensors"
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + 8 * n)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        read_header(path, Limits())
    assert e.value.reason == "too_many_params" and "a [8589934592]" in str(e.value)
    assert time.perf_counter() - t0 < 2.0


def test_non_finite_found_in_any_shape_and_dtype():
    big = torch.full((2, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                      1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), 1.0)
    assert big.ndim == 64 and all_finite(big)
    big.view(-1)[4] = float("nan")
    assert not all_finite(big)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = torch.full((1000,), 60000.0 if dtype == torch.float16 else 3e38 if dtype != torch.float64 else 1e308, dtype=dtype)
        assert all_finite(t, block=100), dtype  # the per-block sum overflows; values are finite
        t[-1] = float("inf")
        assert not all_finite(t, block=100), dtype


# ------------------------------------------------------------------------------------- lazy access


def test_views_are_zero_copy_native_dtype_and_one_at_a_time():
    data = bytearray(save({"a.weight": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "a.bias": torch.ones(2)}))
    with CheckpointFile(data, Limits()) as f:
        ref = f.header.tensors["a.weight"]
        t = f.tensor(ref)
        assert t.dtype == torch.bfloat16 and t.shape == (2, 3) and t[1, 2] == 5
        data[ref.begin : ref.begin + 2] = torch.tensor([7.0], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()
        assert t[0, 0] == 7  # a view of the bytes, not a copy
        del t


def test_mapping_closed_when_done_and_never_dangling(tmp_path):
    path = checkpoint_file(tmp_path, "arch1")
    with CheckpointFile(path, Limits()) as f:
        views = [f.tensor(r) for r in f.header.tensors.values()]
        del views
    assert f.closed_cleanly
    with CheckpointFile(path, Limits()) as f:
        kept = f.tensor(next(iter(f.header.tensors.values())))
    assert not f.closed_cleanly  # a view outlived the file: the mapping stays until it goes ...
    assert bool(torch.isfinite(kept).all())  # ... so reading it is still safe
    assert read_header(path, Limits()).n_params == 160 + 2320 + 2320 + 170


# ------------------------------------------------------------------------------------- fuzz


_dims = st.one_of(st.integers(0, 6), st.integers(-3, 2**70), st.booleans(), st.floats(allow_nan=False), st.text(max_size=3))
_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "x", 3]),
        "shape": st.one_of(st.lists(_dims, max_size=10), st.integers(), st.none()),
        "data_offsets": st.one_of(st.lists(st.integers(-4, 400), min_size=0, max_size=3), st.text(max_size=3)),
    }
)
_header = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(_entry, st.integers(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3)),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_header, data=st.binary(max_size=400), pad=st.integers(0, 7))
def test_any_header_is_refused_cleanly_or_chunked(header, data, pad):
    """Whatever the header says, reading and chunking answers with a result or a `CheckpointError`."""
    raw = json.dumps(header).encode() + b" " * pad
    blob = struct.pack("<Q", len(raw)) + raw + data
    limits = Limits(max_tensors=4, max_params=10_000, layer_chunk_budget=3)
    try:
        out = chunk_file(blob, 4, limits, b"fuzz")
    except CheckpointError as e:
        assert e.reason and len(e.message) > 5
    else:
        assert out.n_chunks >= 1 and all(bool(torch.isfinite(ch.values).all()) for l in out.layers for _, ch in l.parts)


_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "U8": 1}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tensors=st.lists(
        st.tuples(st.sampled_from(["a.weight", "a.bias", "b.0.weight", "cls_token", "x_weight", "n.running_var", "c"]),
                  st.sampled_from(list(_SIZES)), st.lists(st.integers(0, 5), max_size=5)),
        min_size=1, max_size=5, unique_by=lambda t: t[0],
    ),
    seed=st.integers(0, 2**31),
)
def test_well_formed_files_with_any_values(tensors, seed):
    """Structurally valid files with arbitrary bytes (NaN, Inf, subnormals, 1e38): chunks are finite or refused."""
    header, off = {}, 0
    for name, dtype, shape in tensors:
        n = math.prod(shape) * _SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    data = torch.randint(0, 256, (off,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    blob = struct.pack("<Q", len(raw)) + raw + data.numpy().tobytes()
    try:
        out = chunk_file(blob, 4, Limits(layer_chunk_budget=5), b"fuzz")
    except CheckpointError as e:
        assert e.reason in {"non_finite", "no_layers"}, str(e)
    else:
        for layer in out.layers:
            for _, ch in layer.parts:
                assert bool(torch.isfinite(ch.values).all()) and bool(torch.isfinite(ch.stats).all())
                assert ch.values.shape[0] == min(ch.total, ch.values.shape[0]) >= 1
