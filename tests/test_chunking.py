import torch

from model.checkpoint import LayerKind, load_checkpoint
from model.chunking import (
    chunk_checkpoint,
    chunk_layer,
    chunk_tensor,
    count_chunks,
    expected_chunks,
)
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


def test_expected_chunks_matches_chunking():
    """The shape-only count (used to refuse huge layers before chunking) equals what chunking makes."""
    from tests.nets import BUILDERS

    for name in BUILDERS:
        ckpt = load_checkpoint(checkpoint_bytes(name))
        for c in (4, 9, 16, 32):  # 3x3 kernels: split (c=4), exact (9), padded (16, 32)
            for layer in ckpt.layers:
                assert expected_chunks(layer, c) == count_chunks([chunk_layer(layer, c)]), (name, layer.name, c)
