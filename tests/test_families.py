"""Zoo families (mlp, resnet, transformer): the batched forward against the plain modules, small zoos that
train with spread accuracies, the zoo format and run split, strict loading, resume, MLP permutations."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from model.zoo import load_index
from model.zoo.families import FAMILIES, FORWARDS, VARIANTS, build_variant, get_variant
from model.zoo.family_zoo import generate_family_zoo
from model.zoo.index import INDEX_COLUMNS
from model.zoo.permute import random_permute
from model.zoo.space import split_for_run


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _reference(m: torch.nn.Module, x: Tensor) -> Tensor:
    """The network computed layer by layer with torch.nn's own modules (independent of the batched code)."""
    v, act = m.variant, torch.nn.functional.relu  # type: ignore[union-attr]
    if v.family == "mlp":
        h = x.flatten(1)
        for lin in m.layers:  # type: ignore[union-attr]
            h = act(lin(h))
        return m.head(h)  # type: ignore[operator]
    if v.family == "resnet":
        h = act(m.stem.bn(m.stem.conv(x)))  # type: ignore[union-attr]
        for b in m.blocks:  # type: ignore[union-attr]
            h = act(h + b.bn2(b.conv2(act(b.bn1(b.conv1(h))))))
        return m.head(h.mean((2, 3)))  # type: ignore[operator]
    h = m.embed(x) + m.pos_embed[: x.shape[1]]  # type: ignore[operator, index]
    d, heads = v.width, v.heads
    for b in m.blocks:  # type: ignore[union-attr]
        q, k, val = b.attn.qkv(b.ln1(h)).split(d, -1)
        q, k, val = (t.reshape(*t.shape[:2], heads, d // heads).transpose(1, 2) for t in (q, k, val))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1)
        h = h + b.attn.proj((w @ val).transpose(1, 2).reshape(h.shape))
        h = h + b.mlp.fc2(act(b.mlp.fc1(b.ln2(h))))
    return m.head(m.ln_f(h).mean(1))  # type: ignore[operator]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_forward_matches_plain_modules(family: str) -> None:
    torch.manual_seed(0)
    v = VARIANTS[family][-1]
    mods = [build_variant(v, 1, 9 if family == "transformer" else 8, 10, vocab=8) for _ in range(3)]
    for m in mods:
        for name, t in m.named_buffers():
            if name.endswith("running_mean"):
                t.normal_()  # non-trivial BatchNorm statistics, so eval mode really uses them
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
        m.eval()
    x = torch.randint(0, 8, (6, 9)) if family == "transformer" else torch.rand(6, 1, 8, 8)
    params = {k: torch.stack([dict(m.named_parameters())[k] for m in mods]) for k, _ in mods[0].named_parameters()}
    bufs = {k: torch.stack([dict(m.named_buffers())[k] for m in mods])
            for k, b in mods[0].named_buffers() if b.is_floating_point()}
    with torch.no_grad():
        out = FORWARDS[family](v, params, bufs, x, None, False)  # 3 x 6 x 10
        ref = torch.stack([_reference(m, x) for m in mods])
    assert out.shape == (3, 6, 10)
    assert ref.abs().max() > 0.05  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module", params=FAMILIES)
def family_zoo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(request.param)
    generate_family_zoo(out, request.param, n_runs=10, seed=3, save_epochs=(0, 1, 2, 4))
    return request.param, out


def test_family_zoo_format_split_and_spread(family_zoo: tuple[str, Path]) -> None:
    family, out = family_zoo
    rows = load_index(out)
    assert rows and list(rows[0]) == list(INDEX_COLUMNS)
    assert {r["run_id"] for r in rows} == set(range(10))
    for r in rows:
        assert r["split"] == split_for_run(r["run_id"], 3)
        assert r["arch"].startswith(family + "-") and (out / r["path"]).exists()
    acc = np.array([r["test_acc"] for r in rows])
    # epoch 0 is at chance; the better trained runs are far above it
    chance = 0.25 if family == "transformer" else 0.1
    assert acc.min() < chance + 0.1 and acc.max() > chance + 0.35, acc
    assert len({r["arch"] for r in rows}) >= 2  # depth/width are sampled per run


def test_family_checkpoints_load_strictly_and_reproduce_accuracy(family_zoo: tuple[str, Path]) -> None:
    family, out = family_zoo
    row = max(load_index(out), key=lambda r: r["test_acc"])
    v = get_variant(row["arch"], row["hp_activation"])
    m = build_variant(v, 1, 9 if family == "transformer" else 8, 4 if family == "transformer" else 10, vocab=8)
    m.load_state_dict(load_file(str(out / row["path"])), strict=True)
    m.eval()
    from model.zoo.family_zoo import family_dataset

    ds = family_dataset(family, None)
    with torch.no_grad():
        acc = float((m(ds.x_test).argmax(-1) == ds.y_test).float().mean())
    assert acc == pytest.approx(row["test_acc"], abs=1e-6)


def test_family_zoo_resume_adds_nothing(family_zoo: tuple[str, Path]) -> None:
    family, out = family_zoo
    before = (out / "index.csv").read_text()
    s = generate_family_zoo(out, family, n_runs=10, seed=3, save_epochs=(0, 1, 2, 4))
    assert s.runs_trained == 0 and (out / "index.csv").read_text() == before
    with pytest.raises(ValueError, match="seed"):
        generate_family_zoo(out, family, n_runs=10, seed=4, save_epochs=(0, 1, 2, 4))


@pytest.mark.parametrize("name", [v.name for v in VARIANTS["mlp"]])
def test_mlp_hidden_unit_permutation_keeps_function(name: str) -> None:
    torch.manual_seed(1)
    m = build_variant(get_variant(name, "tanh"), 1, 8, 10).eval()
    x = torch.rand(16, 1, 8, 8)
    state = m.state_dict()
    permuted = random_permute(state, name, torch.Generator().manual_seed(0))
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    m2 = build_variant(get_variant(name, "tanh"), 1, 8, 10).eval()
    m2.load_state_dict(permuted)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(F.softmax(m(x), -1)[:, 0], torch.full((16,), 0.1), atol=1e-3)
