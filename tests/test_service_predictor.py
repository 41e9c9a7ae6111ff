"""The shipped predictor loads unchanged and predicts what it predicted before (pinned), and its card is
read once into a typed `PredictorCard` that survives save/load and serves as strict JSON."""
from __future__ import annotations

import json
import math

import pytest
import torch

from model.checkpoint import Checkpoint, checkpoint_from_tensors
from model.predictor import DEFAULT_PREDICTOR_DIR, Predictor, PredictorCard
from tests.conftest import running_app, settings_for

SHAPES = {
    "arch1": [("0.weight", (16, 1, 3, 3)), ("0.bias", (16,)), ("2.weight", (16, 16, 3, 3)), ("2.bias", (16,)),
              ("4.weight", (16, 16, 3, 3)), ("4.bias", (16,)), ("8.weight", (10, 16)), ("8.bias", (10,))],
    "mlp": [("0.weight", (100, 64)), ("0.bias", (100,)), ("2.weight", (50, 100)), ("2.bias", (50,)),
            ("4.weight", (10, 50)), ("4.bias", (10,))],
}

#: (kind, seed, weight scale) -> (predicted accuracy, ood flag, 90 % interval) of the shipped predictor
#: sne-small-digits 2026-12-07-b80779060bad-cc1d4f8 (3-member ensemble, kernel and pair statistics, gap head
#: on a detached embedding, trained on arch1-digits at 600 runs, intervals calibrated by `sne calibrate` on
#: val plus a second arch1-digits zoo; issue 9). Its card has normalised conformal quantiles, so each
#: interval is scaled by that checkpoint's difficulty.
PINNED = {
    ("arch1", 0, 0.1): (0.12328298389911652, False, (0.0, 0.2648239175686108)),
    ("arch1", 2, 0.05): (0.07384541630744934, False, (0.0, 0.18353455397274143)),
    ("mlp", 3, 0.1): (0.21306942403316498, True, (0.0, 0.5202224828337585)),  # an MLP: unseen architecture
}


def seeded_checkpoint(kind: str, seed: int, scale: float) -> Checkpoint:
    g = torch.Generator().manual_seed(seed)
    return checkpoint_from_tensors({n: torch.randn(s, generator=g) * scale for n, s in SHAPES[kind]})


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    if not (DEFAULT_PREDICTOR_DIR / "card.json").exists():
        pytest.skip("no shipped predictor in model/predictors/default")
    torch.set_num_threads(1)
    return Predictor.load()


def test_shipped_predictor_predictions_are_pinned(shipped):
    if shipped.version != "2026-12-07-b80779060bad-cc1d4f8":
        pytest.skip(f"pins are for the predictor shipped as 2026-12-07-b80779060bad-cc1d4f8, not {shipped.version}")
    got = shipped.predict([seeded_checkpoint(*case) for case in PINNED])
    widths = []
    for case, p in zip(PINNED, got):
        accuracy, flag, interval = PINNED[case]
        assert p.accuracy == pytest.approx(accuracy, abs=1e-5), case
        assert p.ood_flag is flag, case
        assert (p.low, p.high) == pytest.approx(interval, abs=1e-5) and p.low <= p.accuracy <= p.high
        widths.append(p.high - p.low)
        assert p.embedding.dtype.name == p.layer_embeddings.dtype.name == "float32"
        members = shipped.config.members  # an ensemble's embeddings are its members' side by side
        assert p.embedding.shape == (members * shipped.config.encoding,)
        assert p.layer_embeddings.shape == (len(SHAPES[case[0]]) // 2, members * shipped.config.hidden)
    assert max(widths) - min(widths) > 0.05  # per-checkpoint (normalised) intervals, not one constant width


def test_shipped_card_is_typed_and_keeps_every_key(shipped):
    raw = json.loads((DEFAULT_PREDICTOR_DIR / "card.json").read_text())
    card = shipped.card
    assert set(card.metrics.kendall_tau) == {"in_distribution", "cross_dataset", "cross_arch"}
    assert card.metrics.kendall_tau["in_distribution"]["sne"] == raw["metrics"]["kendall_tau"]["in_distribution"]["sne"]
    assert card.ood.threshold == raw["ood"]["threshold"] and card.config.chunk_size == raw["config"]["chunk_size"]
    dumped = card.model_dump(mode="json")
    assert set(raw) <= set(dumped)  # extra sections (training, splits, ...) are kept, not dropped
    assert dumped["training"] == raw["training"] and dumped["metrics"]["pairs"] == raw["metrics"]["pairs"]


def test_card_survives_save_and_load(tmp_path, shipped):
    shipped.save(tmp_path)
    again = Predictor.load(tmp_path)
    assert again.card == shipped.card
    ckpt = seeded_checkpoint("arch1", 5, 0.1)
    (a,), (b,) = shipped.predict([ckpt]), again.predict([ckpt])
    assert a.accuracy == pytest.approx(b.accuracy, abs=1e-6)


@pytest.mark.anyio
async def test_a_nan_metric_is_served_as_null(tmp_path):
    """A metric that could not be computed (NaN in card.json) is null in the card and in /v1/predictor."""
    pred = Predictor.untrained("tiny")
    pred.card = pred.card.updated(metrics={"kendall_tau": {"cross_arch": {"sne": 0.3, "statnn": float("nan")}}})
    assert pred.card.metrics.kendall_tau["cross_arch"]["statnn"] is None
    pred.save(tmp_path)
    text = (tmp_path / "card.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["kendall_tau"]["cross_arch"]["statnn"] is None
    raw = json.loads(text)
    raw["metrics"]["kendall_tau"]["cross_arch"]["statnn"] = math.nan
    (tmp_path / "card.json").write_text(json.dumps(raw))  # a card written by an older trainer
    async with running_app(settings_for(tmp_path)) as client:
        r = await client.get("/v1/predictor")
    assert r.status_code == 200 and r.json()["metrics"]["kendall_tau"]["cross_arch"] == {"sne": 0.3, "statnn": None}


def test_a_card_without_name_is_refused():
    with pytest.raises(ValueError):
        PredictorCard.model_validate({"version": "x", "config": {}})


@pytest.mark.anyio
async def test_card_shows_the_chunk_budgets_in_force(tmp_path):
    """The card a trainer wrote records the default budgets; the service shows the SNE_* settings it encodes
    under, so a client reading /v1/predictor knows when its answers were sampled."""
    pred = Predictor.untrained("tiny")
    pred.card = pred.card.updated(budgets={"layer_chunk_budget": 4096, "checkpoint_chunk_budget": 65536,
                                           "train_chunks_per_part": 64})
    pred.save(tmp_path)
    async with running_app(settings_for(tmp_path, layer_chunk_budget=123, checkpoint_chunk_budget=4567)) as client:
        r = await client.get("/v1/predictor")
    assert r.status_code == 200
    assert r.json()["budgets"] == {"layer_chunk_budget": 123, "checkpoint_chunk_budget": 4567, "train_chunks_per_part": 64}
    assert PredictorCard.model_validate(json.loads((tmp_path / "card.json").read_text())).budgets.layer_chunk_budget == 4096
