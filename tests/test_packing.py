"""pack(): segments, per-part statistics and totals of mixed checkpoints in one batch."""
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.chunking import chunk_checkpoint
from model.packing import pack
from model.stats import N_STATS
from tests.nets import checkpoint_bytes


@pytest.fixture(scope="module")
def chunked():
    return [chunk_checkpoint(load_checkpoint(checkpoint_bytes(n, seed=i)), 16) for i, n in enumerate(["arch1", "mlp"])]


def test_segments_hold_each_part_in_order(chunked):
    b = pack(chunked)
    parts = [ch for layers in chunked for layer in layers for _, ch in layer.parts]
    assert b.part_stats.shape == (len(parts), N_STATS)
    for p, ch in enumerate(parts):
        s, n = int(b.part_start[p]), int(b.part_len[p])
        assert n == ch.values.shape[0] and int(b.part_total[p]) == ch.total
        assert torch.equal(b.values[s : s + n, : ch.values.shape[1]], ch.values)
        assert torch.equal(b.lengths[s : s + n], ch.lengths)
        assert torch.equal(b.part_stats[p], ch.stats)
    assert b.n_chunks == sum(ch.values.shape[0] for ch in parts)
    assert b.ckpt_len.tolist() == [len(c) for c in chunked]
    assert b.layer_len.tolist() == [len(layer.parts) for layers in chunked for layer in layers]


def test_relative_depth_runs_from_first_to_last_layer(chunked):
    b = pack(chunked)
    first = 0
    for layers in chunked:
        n_parts = sum(len(layer.parts) for layer in layers)
        depth = b.part_depth[first : first + n_parts]
        assert float(depth.min()) == 0.0 and float(depth.max()) == 1.0
        assert bool((depth[1:] >= depth[:-1]).all())  # layers come in depth order
        first += n_parts


def test_refuses_what_cannot_share_a_batch(chunked):
    with pytest.raises(ValueError, match="at least one"):
        pack([])
    with pytest.raises(ValueError, match="without layers"):
        pack([[]])
    other = chunk_checkpoint(load_checkpoint(checkpoint_bytes("mlp")), 8)
    with pytest.raises(ValueError, match="chunk sizes"):
        pack([chunked[0], other])
