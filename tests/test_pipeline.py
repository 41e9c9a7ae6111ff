"""A tiny zoo generated, SNE trained (with LIR) and evaluated end to end, as `sne zoo/train/eval` do."""
import json

import numpy as np
import pytest
import torch

from model.evaluation import evaluate, update_card
from model.predictor import Predictor
from model.training import TrainOptions, invariance_error, load_examples, train
from model.training.lir import lir_penalty
from model.zoo import generate_zoo, load_index


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoos")
    a = root / "arch1-digits"
    b = root / "arch2-digits"
    generate_zoo(a, arch="arch1", dataset="digits", n_runs=24, seed=0, save_epochs=(0, 1, 3), group_size=30, progress=False)
    generate_zoo(b, arch="arch2", dataset="digits", n_runs=8, seed=0, save_epochs=(0, 1), group_size=8, progress=False)
    return a, b


def test_end_to_end(zoos, tmp_path):
    a, b = zoos
    rows = load_index(a)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    opts = TrainOptions(config="tiny", epochs=2, batch_size=16, lr=3e-3, lir_fraction=0.25, seed=0)
    pred = train([a], tmp_path / "run", opts, progress=False)
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["trained"] is True and card["predicts_gap"] is True
    assert card["splits"]["train"] > 0 and card["conformal"]["accuracy"]["0.90"] > 0
    assert (tmp_path / "run" / "reference.safetensors").exists()
    # resuming a finished run trains nothing more and gives the same weights
    again = train([a], tmp_path / "run", opts, progress=False)
    assert again.version == pred.version

    results = evaluate([tmp_path / "run"], [a, b], tmp_path / "eval", unregularized=tmp_path / "run")
    tau = results["kendall_tau"]
    assert -1 <= tau["in_distribution"]["sne"] <= 1
    assert tau["in_distribution"]["statnn"] is not None and tau["in_distribution"]["mlp"] is not None
    assert tau["cross_arch"]["sne"] is not None
    assert tau["cross_arch"]["statnn"] is None and tau["cross_arch"]["mlp"] is None  # fixed-arch baselines can't
    assert 0 <= results["coverage"]["in_distribution"] <= 1
    assert {"results.json", "results.md", "pred_vs_true.png", "embeddings_pca.png"} <= {p.name for p in (tmp_path / "eval").iterdir()}
    update_card(tmp_path / "run", results)
    loaded = Predictor.load(tmp_path / "run")
    assert set(loaded.card["metrics"]["kendall_tau"]) == {"in_distribution", "cross_dataset", "cross_arch"}
    assert set(loaded.card["metrics"]["kendall_tau"]["in_distribution"]) == {"sne", "statnn", "mlp"}


def test_lir_penalty_trains_invariance(zoos):
    """Minimising the LIR term alone makes the encoder's logit less sensitive to hidden-unit permutations."""
    a, _ = zoos
    torch.manual_seed(0)
    from model.config import get_config
    from model.packing import pack
    from model.sne import SNE

    model = SNE(get_config("tiny"))
    ex = load_examples([a], "train", model.cfg.chunk_size, limit=8)
    # make the untrained encoder sensitive first: random head weights of a larger scale
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    before = invariance_error(model, ex, seed=1)
    assert before > 0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        model.train()
        out = model(pack([e.layers for e in ex]))
        loss = lir_penalty(model, ex, out.logit, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = invariance_error(model, ex, seed=1)
    assert after < before * 0.5, (before, after)
