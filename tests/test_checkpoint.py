import io
import json
import struct

import pytest
import torch
from safetensors.torch import save

from app.errors import checkpoint_status
from model.checkpoint import LayerKind, load_checkpoint, natural_key, split_name
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
