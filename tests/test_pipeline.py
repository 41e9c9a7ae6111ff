"""A tiny zoo generated, SNE trained (with LIR) and evaluated end to end, as `sne zoo/train/eval` do."""
import json
from dataclasses import replace

import pytest
import torch

from model.config import get_config
from model.evaluation import evaluate, update_card
from model.packing import pack
from model.predictor import Predictor
from model.sne import SNE
from model.training import TrainOptions, invariance_error, load_examples, train
from model.training.lir import lir_penalty, permuted_layers
from model.zoo import generate_zoo, load_index
from model.zoo.permute import random_permute

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoos")
    a = root / "arch1-digits"
    b = root / "arch2-digits"
    generate_zoo(a, arch="arch1", dataset="digits", n_runs=24, seed=0, save_epochs=(0, 1, 3), group_size=30, progress=False)
    generate_zoo(b, arch="arch2", dataset="digits", n_runs=8, seed=0, save_epochs=(0, 1), group_size=8, progress=False)
    return a, b


def test_a_member_kept_at_a_constant_is_retrained_from_another_seed(zoos, tmp_path):
    """`collapse_retries`: a member whose kept epoch predicts a constant is trained again from seed + 1000; the
    card says so, and the retrained member is exactly the one a run from that seed trains."""
    import importlib

    loop = importlib.import_module("model.training.train")

    a, _ = zoos
    opts = TrainOptions(config="tiny", epochs=2, batch_size=16, lr=3e-3, lir_weight=0.0, seed=0, collapse_retries=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "COLLAPSE_STD", float("inf"))  # every epoch counts as a constant: the retry always runs
        retried = train([a], tmp_path / "retried", opts, progress=False)
    card = json.loads((tmp_path / "retried" / "card.json").read_text())["training"]
    assert card["collapse_restarts"] == [1] and card["member_seeds"] == [1000]
    warnings = json.loads((tmp_path / "retried" / "card.json").read_text())["warnings"]
    assert any("member 0 (seed 1000) still predicts a constant after 1 retries" in w for w in warnings)
    assert (tmp_path / "retried" / "resume-retry1").is_dir()  # the retry keeps its own resumable state
    direct = train([a], tmp_path / "direct", replace(opts, seed=1000), progress=False)
    direct_card = json.loads((tmp_path / "direct" / "card.json").read_text())
    assert direct_card["training"]["collapse_restarts"] == [0]
    assert not any("predicts a constant" in w for w in direct_card["warnings"])
    assert retried.version == direct.version  # the same weights, bit for bit


def test_a_ple_predictor_is_saved_with_its_quantile_edges_and_serves_the_same(zoos, tmp_path):
    """`stats_encoding="ple"` travels in the card's config and its fitted edges in the weights: the loaded
    predictor predicts exactly what the trained one did."""
    a, _ = zoos
    opts = TrainOptions(config="tiny", epochs=1, batch_size=16, lr=3e-3, lir_weight=0.0, seed=0, stats_encoding="ple")
    pred = train([a], tmp_path / "ple", opts, progress=False)
    loaded = Predictor.load(tmp_path / "ple")
    assert loaded.config.stats_encoding == "ple" and loaded.version == pred.version
    edges = loaded.model.stats_edges
    assert edges.shape[1] == loaded.config.stats_bins + 1 and (edges[:, -1] > edges[:, 0]).any()
    ex = load_examples([a], "test", loaded.config.chunk_size, limit=4)
    with torch.no_grad():
        batch = pack([e.layers for e in ex])
        assert torch.equal(loaded.model(batch).logit, pred.model(batch).logit)


def test_ema_validates_and_keeps_the_average_without_changing_the_training(zoos, tmp_path):
    """`ema`: the raw weights follow the same trajectory as without it (bit for bit); what is validated, logged
    and kept is the moving average, saved beside the resume state so a resumed run continues it."""
    from safetensors.torch import load_file

    from model.evaluation.metrics import kendall_tau
    from model.training.examples import load_split, predict_examples

    a, _ = zoos
    opts = TrainOptions(config="tiny", epochs=2, batch_size=16, lr=3e-3, lir_weight=0.0, seed=0, collapse_retries=0)
    plain = train([a], tmp_path / "plain", opts, progress=False)
    averaged = train([a], tmp_path / "ema", replace(opts, ema=0.9), progress=False)
    raw_plain = load_file(tmp_path / "plain" / "resume" / "model.safetensors")
    raw_ema = load_file(tmp_path / "ema" / "resume" / "model.safetensors")
    assert raw_plain.keys() == raw_ema.keys() and all(torch.equal(raw_plain[k], raw_ema[k]) for k in raw_plain)
    ema_state = load_file(tmp_path / "ema" / "resume" / "ema.safetensors")
    assert int(ema_state["n_averaged"]) == 2 * -(-len(load_split([a], "train", get_config("tiny").chunk_size, None, 0, "fail", False).examples) // 16)
    moved = max(float((ema_state[f"module.{k}"] - raw_ema[k]).abs().max()) for k in raw_ema)
    assert moved > 1e-4  # the average lags the last steps by ~1000x float32 rounding at these weights
    # the logged val tau of the last epoch is the average's, and the kept weights are the average at its best epoch
    card = json.loads((tmp_path / "ema" / "card.json").read_text())["training"]
    model = SNE(get_config("tiny"))
    model.load_state_dict({k.removeprefix("module."): v for k, v in ema_state.items() if k != "n_averaged"})
    val = load_split([a], "val", get_config("tiny").chunk_size, None, 0, "fail", False).examples
    tau = kendall_tau(predict_examples(model, val)["acc"], [e.acc for e in val])
    assert tau == pytest.approx(card["history"][0][-1]["val_kendall_tau"], abs=1e-12)
    kept = load_file(tmp_path / "ema" / "resume" / "best.safetensors")
    final = averaged.model.state_dict()
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    assert plain.version != averaged.version


def test_an_interrupted_ema_run_resumes_its_average(zoos, tmp_path):
    """The average is saved each epoch and restored on resume: it continues over every step, not from zero."""
    import importlib

    from safetensors.torch import load_file

    loop = importlib.import_module("model.training.train")
    a, _ = zoos
    opts = TrainOptions(config="tiny", epochs=2, batch_size=16, lr=3e-3, lir_weight=0.0, seed=0, collapse_retries=0,
                        ema=0.9)

    def stop(*_args):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(loop, "save_curves", stop)  # called after each epoch's state is saved
        train([a], tmp_path / "run", opts, progress=False)
    resume = tmp_path / "run" / "resume"
    one_epoch = int(load_file(resume / "ema.safetensors")["n_averaged"])
    assert one_epoch > 0 and json.loads((resume / "state.json").read_text())["epoch"] == 1
    train([a], tmp_path / "run", opts, progress=False)
    assert int(load_file(resume / "ema.safetensors")["n_averaged"]) == 2 * one_epoch


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
    assert card["lir"] == {"weight": 1.0, "permutable": card["splits"]["train"], "skipped": 0, "reasons": {}}
    assert card["ood"]["train_flag_rate"] <= 0.01 and card["ood"]["threshold"] >= 0
    assert set(card["conformal"]["normalized"]["accuracy"]) == set(card["conformal"]["accuracy"])  # issue 9
    assert card["zoo"]["families"] == ["arch1"]
    assert Predictor.load(tmp_path / "run").residuals is not None  # served: normalised intervals
    q = card["quality"]
    assert q["n"] == card["splits"]["val"] and set(q["kendall_tau"]) == {"sne", "pooled"}
    assert q["sne_better"] == (q["kendall_tau"]["sne"] > q["kendall_tau"]["pooled"])
    assert card["warnings"] == q["warnings"] and (q["sne_better"] or any("pooled" in w for w in q["warnings"]))
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
    assert set(loaded.card.metrics.kendall_tau) == {"in_distribution", "cross_dataset", "cross_arch"}
    assert set(loaded.card.metrics.kendall_tau["in_distribution"]) == {"sne", "sne_chunks", "sne_stats", "statset", "pooled", "pooled_sne", "statnn", "mlp"}
    assert loaded.card.metrics.kendall_tau["in_distribution"]["statset"] is not None  # the evaluation table ran
    assert tau["in_distribution"]["pooled"] is not None and tau["cross_arch"]["pooled"] is not None  # any arch


def test_a_mixture_selects_and_reports_on_each_familys_tau(zoos, tmp_path):
    """Two families, `select_on="grouped"`: the epoch is picked on the mean of each family/dataset's val τ (what
    `sne eval` scores), and the card reports it beside the pooled τ, which also rewards telling the families'
    levels apart."""
    import numpy as np

    from model.evaluation.metrics import kendall_tau
    from model.training.examples import predict_examples

    a, b = zoos
    opts = TrainOptions(config="tiny", epochs=2, batch_size=16, lr=3e-3, lir_weight=0.0, seed=0, select_on="grouped")
    pred = train([a, b], tmp_path / "mix", opts, progress=False)
    card = json.loads((tmp_path / "mix" / "card.json").read_text())
    val = load_examples([a, b], "val", pred.config.chunk_size)
    out = predict_examples(pred.model, val)["acc"]
    groups = {}
    for i, e in enumerate(val):
        groups.setdefault((e.arch, e.dataset), []).append(i)
    true = np.array([e.acc for e in val])
    per = [kendall_tau(out[ix], true[ix]) for ix in groups.values() if len(ix) >= 5]
    assert len(groups) == 2 and per  # arch2's few val checkpoints may be under the 5 a group needs
    grouped = card["metrics"]["val"]["grouped_kendall_tau"]
    assert grouped == pytest.approx(float(np.mean(per)), abs=1e-6)
    assert card["metrics"]["val"]["kendall_tau"] == pytest.approx(kendall_tau(out, true), abs=1e-6)
    assert abs(grouped - card["metrics"]["val"]["kendall_tau"]) > 1e-3  # two different measures here
    # the kept epoch is the one with the best grouped τ, and that is what the member reports
    assert card["training"]["member_val_kendall_tau"][0] == pytest.approx(grouped, abs=1e-6)
    assert card["quality"]["grouped_kendall_tau"]["sne"] == pytest.approx(grouped, abs=1e-6)


def _chunk_sets(layers) -> list[torch.Tensor]:
    """Per part, the multiset of chunks, each chunk as the multiset of its real values: what SNE sees up to order.

    Each part is a `[q, c]` tensor of within-chunk-sorted values (padding as +inf), rows in lexicographic order."""
    out = []
    for layer in layers:
        for _, ch in layer.parts:
            v = ch.padded().masked_fill(~ch.mask, float("inf")).sort(dim=1).values  # [q, c]
            rows = sorted(range(v.shape[0]), key=lambda i: v[i].tolist())
            out.append(v[rows])
    return out


def _same_sets(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Equal up to float rounding: values are standardised by the part's std, whose summation order varies."""
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=1e-5, rtol=0) for x, y in zip(a, b))


def test_arch1_is_invariant_by_construction_at_chunk_16(zoos):
    """Arch1 at c=16: every kernel, bias and classifier row is exactly one chunk, so a hidden-unit permutation
    only reorders chunks and values inside chunks - SNE sees the same sets, and LIR has nothing to learn there."""
    a, _ = zoos
    torch.manual_seed(0)
    model = SNE(get_config("tiny"))
    assert model.cfg.chunk_size == 16
    ex = load_examples([a], "train", model.cfg.chunk_size, limit=4)
    gen = torch.Generator().manual_seed(1)
    for e in ex:
        same_draw = torch.Generator()
        same_draw.set_state(gen.get_state())
        permuted = permuted_layers(e, gen, model.cfg.chunk_size)
        moved = random_permute(e.state, e.arch, same_draw)  # the permutation permuted_layers just applied
        assert any(not torch.equal(moved[k], v) for k, v in e.state.items())
        assert _same_sets(_chunk_sets(permuted), _chunk_sets(e.layers))
    assert invariance_error(model, ex, seed=1) < 1e-5  # float summation order only


def test_lir_penalty_trains_invariance(zoos):
    """On Arch2 (c=16) permutations move values between chunks, so SNE's logit does change; minimising the
    LIR term alone makes it clearly less sensitive to hidden-unit permutations."""
    _, b = zoos
    torch.manual_seed(0)
    model = SNE(get_config("small"))
    ex = load_examples([b], "train", model.cfg.chunk_size, limit=8)
    assert len(ex) >= 4
    gen = torch.Generator().manual_seed(0)
    assert any(not _same_sets(_chunk_sets(permuted_layers(e, gen, model.cfg.chunk_size)), _chunk_sets(e.layers)) for e in ex)
    # an untrained encoder predicts a near-constant logit; larger random head weights make it input-dependent
    for p in model.accuracy_head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    before = invariance_error(model, ex, seed=1)
    assert before > 1e-3, before  # well above float rounding (~1e-7)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    packed = pack([e.layers for e in ex])
    for _ in range(10):
        model.train()
        loss = lir_penalty(model, ex, model(packed).logit, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = invariance_error(model, ex, seed=1)  # other permutations than the ones trained on
    assert after < before * 0.1, (before, after)
