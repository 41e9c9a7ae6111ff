import gc
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.admission import Limits
from model.checkpoint import LayerKind, checkpoint_from_tensors, load_checkpoint
from model.chunking import (
    chunk_checkpoint,
    chunk_file,
    chunk_layer,
    chunk_state,
    chunk_tensor,
    sample_indices,
)
from model.errors import CheckpointError
from model.layers import part_chunks
from model.packing import pack
from model.stats import N_STATS
from tests.nets import checkpoint_bytes


def test_linear_flattened_padded_chunked():
    w = torch.arange(1, 51, dtype=torch.float32).reshape(5, 10)
    ch = chunk_tensor(w, 16)
    assert ch.padded().shape == (4, 16)
    assert ch.lengths.tolist() == [16, 16, 16, 2]
    assert ch.total == 4 and ch.stats.shape == (N_STATS,)
    std = w.double().std(correction=0)
    assert torch.allclose(ch.padded()[ch.mask].double() * std, w.flatten().double())  # real values in order
    assert float(ch.values.std(correction=0)) > 0.5  # standardised: unit scale, not ~14
    assert torch.all(ch.padded()[~ch.mask] == 0)  # padding is zeros


def test_exact_multiple_needs_no_padding():
    ch = chunk_tensor(torch.randn(4, 8), 16)
    assert ch.padded().shape == (2, 16) and bool(ch.mask.all())


def test_conv_chunked_per_kernel_padded_when_small():
    w = torch.randn(16, 3, 3, 3)
    ch = chunk_tensor(w, 16, per_kernel=True)
    assert ch.padded().shape == (48, 16) and ch.mask.shape == (48, 16)
    assert ch.lengths.unique().tolist() == [9]
    assert torch.allclose(ch.padded()[:, :9] * w.std(correction=0), w.reshape(48, 9), atol=1e-5)
    assert torch.all(ch.padded()[:, 9:] == 0)
    assert torch.allclose(ch.padded()[ch.mask] * w.std(correction=0), w.flatten(), atol=1e-5)


def test_conv_kernel_split_when_larger_than_chunk():
    w = torch.randn(2, 2, 5, 5)  # 25 values per kernel, c=16: 16 + 9
    ch = chunk_tensor(w, 16, per_kernel=True)
    assert ch.padded().shape == (8, 16)
    assert ch.lengths.tolist() == [16, 9] * 4
    assert torch.allclose(ch.padded()[ch.mask] * w.std(correction=0), w.flatten(), atol=1e-5)


def count_chunks(layers) -> int:
    return sum(ch.values.shape[0] for layer in layers for _, ch in layer.parts)


def test_arch1_chunk_counts_and_bias_separate():
    layers = chunk_checkpoint(load_checkpoint(checkpoint_bytes("arch1")), 16)
    # kernels 16 + 256 + 256, biases 1 each, linear 160 values -> 10 chunks, bias 1
    assert count_chunks(layers) == 16 + 256 + 256 + 10 + 4
    assert [[role for role, _ in l.parts] for l in layers] == [["weight", "bias"]] * 4
    assert layers[0].kind == LayerKind.CONV2D


def test_pack_segments_are_contiguous():
    a = chunk_checkpoint(load_checkpoint(checkpoint_bytes("arch1")), 16)
    b = chunk_checkpoint(load_checkpoint(checkpoint_bytes("mlp")), 16)
    batch = pack([a, b])
    assert batch.n_checkpoints == 2
    assert batch.ckpt_len.tolist() == [4, 3]
    assert batch.n_chunks == count_chunks(a) + count_chunks(b)
    assert int(batch.part_len.sum()) == batch.n_chunks
    assert torch.equal(batch.part_start[1:], torch.cumsum(batch.part_len, 0)[:-1])
    assert int(batch.layer_len.sum()) == batch.part_len.shape[0]
    assert batch.layer_level.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert batch.values.shape == (batch.n_chunks, 16)
    assert torch.equal(batch.values[batch.mask], torch.cat([ch.padded()[ch.mask] for l in a + b for _, ch in l.parts]))
    assert torch.all(batch.values[~batch.mask] == 0)


def test_shape_only_chunk_count_matches_chunking():
    """The shape-only count (`model.layers.part_chunks`, what admission budgets with) equals what chunking makes."""
    from tests.nets import BUILDERS

    for name in BUILDERS:
        ckpt = load_checkpoint(checkpoint_bytes(name))
        for c in (4, 9, 16, 32):  # 3x3 kernels: split (c=4), exact (9), padded (16, 32)
            for layer in ckpt.layers:
                expected = sum(part_chunks(layer.kind, role, tuple(t.shape), c) for role, t in layer.parts)
                assert expected == count_chunks([chunk_layer(layer, c)]), (name, layer.name, c)


# ------------------------------------------------------------------------------------- streaming, budgets


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(32, 16, 3, 3, generator=g), "conv.bias": torch.randn(32, generator=g),
            "fc.weight": torch.randn(10, 300, generator=g).to(torch.bfloat16), "fc.bias": torch.randn(10, generator=g)}


def _rows_of(chunks) -> list[tuple]:
    return [tuple(r[: int(n)].tolist()) for r, n in zip(chunks.padded(), chunks.lengths)]


def test_under_budget_equals_plain_chunking_divided_by_std(tmp_path):
    state = _state()
    path = tmp_path / "s.safetensors"
    save_file(state, path)
    a = chunk_file(path, 16, Limits(), b"x")
    b = chunk_file(path.read_bytes(), 16, Limits(), b"y")  # no sampling: the seed does not matter
    c = chunk_state(state, 16, Limits())
    legacy = chunk_checkpoint(checkpoint_from_tensors(state), 16)
    assert [l.name for l in a.layers] == ["conv", "fc"] and a.n_chunks == a.total_chunks == 512 + 2 + 188 + 1
    for x, y, z, w in zip(a.layers, b.layers, c.layers, legacy):
        for (_, ca), (_, cb), (_, cc), (_, cw) in zip(x.parts, y.parts, z.parts, w.parts):
            assert torch.equal(ca.values, cb.values) and torch.equal(ca.values, cc.values)
            # the legacy path holds float32 copies: a bf16 part's passes may sum in another order (model.stats_pass)
            assert torch.allclose(ca.values, cw.values, rtol=1e-6, atol=1e-6)
            assert torch.equal(ca.stats, cc.stats) and ca.total == ca.values.shape[0]
    conv = state["conv.weight"].double()
    got = a.layers[0].parts[0][1]
    assert torch.allclose(got.values.double(), (conv / conv.std(correction=0)).reshape(512, 9), atol=1e-5)
    assert [r.chunks_sampled for r in a.rows] == [r.chunks for r in a.rows] == [514, 189]


def test_over_budget_samples_stratified_deterministic_subset():
    state = _state()
    lim = Limits(layer_chunk_budget=64)
    full = chunk_state(state, 16, Limits.unbudgeted())
    s1 = chunk_state(state, 16, lim, seed=b"sha-a")
    s2 = chunk_state(state, 16, lim, seed=b"sha-a")
    s3 = chunk_state(state, 16, lim, seed=b"sha-b")
    w_full, w1 = full.layers[0].parts[0][1], s1.layers[0].parts[0][1]
    assert w1.values.shape[0] == 62 and w1.total == 512 and s1.layers[0].parts[1][1].values.shape[0] == 2
    assert torch.equal(w1.values, s2.layers[0].parts[0][1].values)  # same content hash -> same chunks
    assert not torch.equal(w1.values, s3.layers[0].parts[0][1].values)
    assert torch.equal(w1.stats, w_full.stats)  # statistics are of ALL values, sampled or not
    full_rows = _rows_of(w_full)
    picked = [full_rows.index(r) for r in _rows_of(w1)]
    assert picked == sorted(picked)
    strata = [i * 512 // 62 for i in range(63)]
    assert all(strata[j] <= p < strata[j + 1] for j, p in enumerate(picked))  # one per stratum
    fc = s1.layers[1].parts[0][1]  # flat part, bf16, last chunk short: 3000 values -> 188 chunks, 63 kept
    assert fc.total == 188 and fc.values.shape == (63, 16)
    fc_rows = _rows_of(full.layers[1].parts[0][1])
    assert all(r in fc_rows for r in _rows_of(fc))
    assert [r.chunks_sampled for r in s1.rows] == [64, 64] and s1.total_chunks == full.total_chunks


def test_indices_cover_the_part():
    idx = sample_indices(1_000_000, 100, b"h", "w")
    assert idx.shape == (100,) and int(idx[0]) < 10_000 and int(idx[-1]) >= 990_000
    assert len(set(idx.tolist())) == 100


def test_non_finite_refused_and_mapping_closed(tmp_path):
    state = _state()
    state["fc.bias"][3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as e:
        chunk_file(path, 16, Limits(), b"x")
    assert e.value.reason == "non_finite" and "fc.bias" in str(e.value)
    assert e.value.__traceback__ is not None and e.value.__context__ is None  # no chain into tensor frames
    tb, frames = e.value.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "chunk_part" not in frames and "_chunk_planned" not in frames


@pytest.mark.parametrize("value, refused", [(float("nan"), True), (float("-inf"), True), (1e25, False)])
def test_values_checked_in_the_statistics_read(tmp_path, value, refused):
    """No separate NaN/Inf pass: the statistics' one read flags a non-finite value far from the subsample, and
    the exact check then decides, so a finite outlier that overflows the standardised float32 still passes."""
    g = torch.Generator().manual_seed(0)
    state = {"fc1.weight": torch.randn(400, 300, generator=g) * 1e-20, "fc2.weight": torch.randn(10, 400, generator=g)}
    state["fc1.weight"].view(-1)[99_999] = value  # not one of the 32 K values the shift and scale come from
    path = tmp_path / "x.safetensors"
    save_file(state, path)
    if refused:
        with pytest.raises(CheckpointError) as e:
            chunk_file(path, 16, Limits(), b"x")
        assert e.value.reason == "non_finite" and "fc1.weight" in str(e.value)
    else:
        ck = chunk_file(path, 16, Limits(), b"x")
        assert all(bool(torch.isfinite(p.stats).all()) for layer in ck.layers for _, p in layer.parts)


def _write_big(path, n: int, shape: tuple[int, int]) -> int:
    """A bf16 safetensors file written tensor by tensor (never the whole model in memory)."""
    numel = shape[0] * shape[1]
    header = {f"layers.{i}.weight": {"dtype": "BF16", "shape": list(shape), "data_offsets": [2 * numel * i, 2 * numel * (i + 1)]}
              for i in range(n)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    block = (torch.randn(numel) * 0.02).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.writelines(block for _ in range(n))
    return 2 * numel


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_peak_memory_bounded_by_one_tensor_not_the_file(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "big.safetensors"
    largest = _write_big(path, 10, (2048, 5120))  # 10 x 21 MB = 210 MB of bf16
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _vm("VmRSS")
    seen: list[tuple[int, int]] = []
    out = chunk_file(path, 16, Limits(layer_chunk_budget=4096, checkpoint_chunk_budget=65536), b"seed", progress=lambda done, total: seen.append((done, total)))
    peak = _vm("VmHWM") - before
    assert [d for d, _ in seen] == [(i + 1) * largest // 2 for i in range(10)] and seen[-1][1] == 5 * largest
    assert out.total_chunks == 10 * 2048 * 5120 // 16 and out.n_chunks == 10 * 4096
    print(f"peak RSS above start: {peak >> 20} MB for a {10 * largest >> 20} MB file")
    assert peak < largest + 64 * 2**20, f"peak {peak >> 20} MB"  # one tensor + working set, not 210 MB
