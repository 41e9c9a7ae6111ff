import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save

from model.admission import Limits, admit, sampled_layers, water_fill
from model.checkpoint import read_header
from model.errors import CheckpointError


def test_water_fill_small_keep_all_large_share_the_rest():
    assert water_fill([3, 5, 100], 1000) == [3, 5, 100]  # under budget: everything
    keep = water_fill([3, 5, 100, 200], 60)
    assert keep[:2] == [3, 5] and sum(keep) == 60 and abs(keep[2] - keep[3]) <= 1
    assert water_fill([10, 10, 10], 2) == [1, 1, 1]  # at least one chunk each, even over budget


def test_admit_counts_from_shapes_and_budgets():
    header = read_header(save({"conv.weight": torch.zeros(64, 32, 3, 3), "conv.bias": torch.zeros(64),
                               "fc.weight": torch.zeros(10, 64 * 16), "fc.bias": torch.zeros(10)}), Limits())
    plan = admit(header, Limits(layer_chunk_budget=500, checkpoint_chunk_budget=560), 16)
    conv, fc = plan.layers
    assert [p.total for p in conv.parts] == [64 * 32, 4] and [p.total for p in fc.parts] == [640, 1]
    assert conv.keep <= 500 and conv.parts[1].keep == 4  # the bias keeps all its chunks
    assert plan.kept_chunks == 560 and plan.total_chunks == 2048 + 4 + 640 + 1
    assert "conv" in sampled_layers(plan)
    full = admit(header, Limits.unbudgeted(), 16)
    assert full.kept_chunks == full.total_chunks == 2693


def test_admit_refusals_name_the_setting():
    header = read_header(save({f"l{i}.weight": torch.zeros(4, 4) for i in range(5)}), Limits())
    with pytest.raises(CheckpointError) as e:
        admit(header, Limits(checkpoint_chunk_budget=3), 16)
    assert e.value.reason == "too_many_parts" and "SNE_CHECKPOINT_CHUNK_BUDGET" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        admit(read_header(save({"n": torch.tensor([3])}), Limits()), Limits(), 16)
    assert e.value.reason == "no_layers"


def test_limits_frozen_and_validated():
    lim = Limits()
    with pytest.raises(ValidationError):
        lim.max_tensors = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Limits(max_ndim=0)
