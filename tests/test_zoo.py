"""Model-zoo generator (model.zoo): files, index, strict loading, splits, resume, engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.zoo import generate_zoo, load_index, load_zoo_checkpoint
from model.zoo.archs import ARCHS, build_arch, get_spec
from model.zoo.datasets import DATASETS, load_dataset
from model.zoo.engine import batched_forward, init_state, per_model_grads
from model.zoo.index import INDEX_COLUMNS
from model.zoo.space import DEFAULT_SPACE, SPLITS, sample_hparams, split_for_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("zoo") / "arch1-digits"
    summary = generate_zoo(out, arch="arch1", dataset="digits", n_runs=8, seed=0, save_epochs=(0, 1, 2), group_size=4, progress=True)
    return out, summary


def test_files_and_index_complete(tiny_zoo: tuple[Path, object]) -> None:
    out, summary = tiny_zoo
    rows = load_index(out)
    header = (out / "index.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == INDEX_COLUMNS
    assert summary.runs_trained == 8 and summary.n_checkpoints == len(rows)
    assert {r["run_id"] for r in rows} == set(range(8))
    for r in rows:
        assert set(r) == set(INDEX_COLUMNS)
        assert all(v != "" for v in r.values())
        assert (out / r["path"]).is_file()
        assert r["arch"] == "arch1" and r["dataset"] == "digits"
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["epoch"] <= r["hp_epochs"]
        assert r["split"] in SPLITS
    # every run has a checkpoint at each save epoch up to its length (no divergence on digits)
    for rid in range(8):
        epochs = sorted(r["epoch"] for r in rows if r["run_id"] == rid)
        length = next(r["hp_epochs"] for r in rows if r["run_id"] == rid)
        assert epochs == [e for e in (0, 1, 2) if e <= length]
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["test_acc"] for r in rows}) > 3, "accuracies should spread"
    assert max(r["test_acc"] for r in rows) > 0.3, "some model should learn within 2 epochs"
    cfg = json.loads((out / "zoo.json").read_text())
    for key in ("arch", "dataset", "dataset_description", "n_runs", "seed", "save_epochs", "wall_seconds", "torch_threads"):
        assert key in cfg
    assert cfg["n_runs"] == 8 and cfg["save_epochs"] == [0, 1, 2] and cfg["n_checkpoints"] == len(rows)


def test_checkpoints_load_strictly_and_match_index(tiny_zoo: tuple[Path, object]) -> None:
    out, _ = tiny_zoo
    ds = load_dataset("digits")
    for r in load_index(out):
        state = load_zoo_checkpoint(out, r)
        assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
        model = build_arch(r["arch"], activation=r["hp_activation"])
        model.load_state_dict(state, strict=True)
        model.eval()
        with torch.no_grad():
            acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
        # the batched zoo forward and the plain module agree (up to argmax ties)
        assert acc == pytest.approx(r["test_acc"], abs=1.5 / len(ds.y_test))


def test_resume_adds_nothing(tiny_zoo: tuple[Path, object]) -> None:
    out, _ = tiny_zoo
    before = (out / "index.csv").read_bytes()
    n_files = len(list((out / "checkpoints").iterdir()))
    again = generate_zoo(out, arch="arch1", dataset="digits", n_runs=8, seed=0, save_epochs=(0, 1, 2), group_size=4, progress=False)
    assert again.runs_trained == 0 and again.runs_skipped == 8
    assert (out / "index.csv").read_bytes() == before
    assert len(list((out / "checkpoints").iterdir())) == n_files


def test_conflicting_settings_rejected(tiny_zoo: tuple[Path, object]) -> None:
    out, _ = tiny_zoo
    with pytest.raises(ValueError, match="seed"):
        generate_zoo(out, arch="arch1", dataset="digits", n_runs=8, seed=1, save_epochs=(0, 1, 2), progress=False)


def test_split_integrity_and_extension(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    first = generate_zoo(out, arch="arch1", dataset="shapes", n_runs=12, seed=3, save_epochs=(0, 1), group_size=50, progress=False)
    assert first.runs_trained == 12
    second = generate_zoo(out, arch="arch1", dataset="shapes", n_runs=20, seed=3, save_epochs=(0, 1), group_size=50, progress=False)
    assert second.runs_trained == 8 and second.runs_skipped == 12  # extending trains only the new runs
    rows = load_index(out)
    assert sorted({r["run_id"] for r in rows}) == list(range(20))
    split_of: dict[int, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["run_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values()), "a run's checkpoints must share one split"
    counts = {s: sum(1 for v in split_of.values() if v == {s}) for s in SPLITS}
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert second.split_runs == counts


def test_split_and_hparams_are_pure_functions_of_seed_and_run() -> None:
    assert [split_for_run(i, 0) for i in range(40)] == [split_for_run(i, 0) for i in range(40)]
    assert [split_for_run(i, 0) for i in range(40)] != [split_for_run(i, 1) for i in range(40)]
    hps = [sample_hparams(i, 0) for i in range(300)]
    assert hps[5] == sample_hparams(5, 0)
    for hp in hps:
        lo, hi = DEFAULT_SPACE.lr_bounds(hp.optimizer)
        assert lo <= hp.lr <= hi
        assert 0.0 <= hp.dropout < 1.0 and 0.1 <= hp.train_fraction <= 1.0
    for attr in ("optimizer", "init", "activation", "batch_size", "epochs"):
        assert len({getattr(h, attr) for h in hps}) > 1, attr


@pytest.mark.parametrize("arch", ["arch1", "arch2"])
def test_grouped_engine_matches_vmap_reference(arch: str) -> None:
    """The fast grouped-conv engine gives the same per-model gradients as vmap(grad(functional_call))."""
    ds = load_dataset("digits", get_spec(arch).input_size)
    m, b = 5, 12
    states = [init_state(arch, sample_hparams(i, 0), 1, 10, torch.Generator().manual_seed(i)) for i in range(m)]
    params = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    for activation in ("relu", "tanh"):
        model = build_arch(arch, activation=activation)
        idx = torch.randint(0, ds.x_train.shape[0], (m, b), generator=torch.Generator().manual_seed(0))
        x, y = ds.x_train[idx], ds.y_train[idx]
        rates = torch.zeros(m)
        g_fast = per_model_grads(model, params, rates, x, y, engine="grouped")
        g_ref = per_model_grads(model, params, rates, x, y, engine="vmap")
        for k in params:
            torch.testing.assert_close(g_fast[k], g_ref[k], atol=1e-5, rtol=1e-4)
        model.eval()
        with torch.no_grad():
            logits = batched_forward(model, params, ds.x_test[:30])
            for i in range(m):
                model.load_state_dict({k: v[i] for k, v in params.items()})
                torch.testing.assert_close(logits[i], model(ds.x_test[:30]), atol=1e-5, rtol=1e-5)


def test_arch2_zoo_loads_strictly(tmp_path: Path) -> None:
    s = generate_zoo(tmp_path, arch="arch2", dataset="digits", n_runs=3, seed=0, save_epochs=(0, 1), progress=False, engine="vmap")
    rows = load_index(tmp_path)
    assert s.runs_trained == 3 and len(rows) == 6
    assert json.loads((tmp_path / "zoo.json").read_text())["image_size"] == 28
    for r in rows:
        model = build_arch("arch2")
        model.load_state_dict(load_zoo_checkpoint(tmp_path, r), strict=True)


def test_registries() -> None:
    assert set(ARCHS) == {"arch1", "arch2"} and {"digits", "shapes"} <= set(DATASETS)
    for name in DATASETS:
        ds = load_dataset(name)
        assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
        assert ds.x_train.dim() == 4 and ds.x_train.shape[1] == 1
        assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
        assert sorted(ds.y_test.unique().tolist()) == list(range(10))
        assert ds.description
    digits = load_dataset("digits")
    assert (len(digits.y_train), len(digits.y_test)) == (1400, 397)
    shapes = load_dataset("shapes", 28)
    assert shapes.x_test.shape[-2:] == (28, 28)
    assert torch.equal(load_dataset("shapes").x_train, load_dataset("shapes").x_train)
