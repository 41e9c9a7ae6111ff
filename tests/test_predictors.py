"""Several predictors in one service: the directory, choosing per request, cache and metrics separation,
reload without dropping requests (admin route and SIGHUP), and `sne gate --predictor` remote and local.

Two real predictor folders (untrained `tiny` SNEs with different seeds, so they answer differently, each
with a card) live in a predictors directory next to two broken folders.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app as CLI
from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from tests.conftest import (
    ckpt_bytes,
    live_server,
    running_app,
    scrape,
    settings_for,
    unique_seed,
)

pytestmark = pytest.mark.anyio

NAMES = {"alpha": "sweep-alpha", "beta": "sweep-beta"}  # folder -> card name


def make_predictor(out: Path, card_name: str, seed: int, tau: float = 0.3) -> Predictor:
    """An untrained `tiny` SNE (seeded: its own weights and version) with a card, saved to `out`."""
    pred = Predictor.untrained("tiny", seed=seed)
    pred.card = pred.card.updated(
        name=card_name, note="test predictor: random weights",
        metrics={"kendall_tau": {"in_distribution": {"sne": tau, "statnn": 0.2}}},
    )
    pred.save(out)
    return pred


@pytest.fixture(scope="module")
def predictors_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predictors")
    make_predictor(root / "alpha", NAMES["alpha"], seed=1, tau=0.31)
    make_predictor(root / "beta", NAMES["beta"], seed=2, tau=0.42)
    (root / "broken").mkdir()
    (root / "broken" / "card.json").write_text("{not json")
    (root / "broken" / "model.safetensors").write_bytes(b"nope")
    (root / "half").mkdir()
    (root / "half" / "card.json").write_text("{}")
    (root / ".hidden").mkdir()
    return root


@pytest.fixture(scope="module")
def direct(predictors_dir) -> dict[str, Predictor]:
    return {folder: Predictor.load(predictors_dir / folder) for folder in NAMES}


def settings(default_dir: Path, predictors_dir: Path | None, **kw):
    return settings_for(default_dir, predictors_dir=predictors_dir, warmup=False, **kw)


# --------------------------------------------------------------------------------------------- listing


async def test_list_predictors_and_broken_folders(svc_predictor_dir, predictors_dir, svc_predictor):
    async with running_app(settings(svc_predictor_dir, predictors_dir)) as client:
        body = (await client.get("/v1/predictors")).json()
        page = (await client.get("/")).text
    assert f'href="/v1/predictor?name={NAMES["beta"]}"' in page  # the landing page lists the others
    assert body["default"] == svc_predictor.name
    got = {p["name"]: p for p in body["predictors"]}
    assert list(got) == [svc_predictor.name, *NAMES.values()]  # the default first
    assert got[svc_predictor.name]["default"] is True and got[svc_predictor.name]["aliases"] == ["default"]
    alpha = got[NAMES["alpha"]]
    assert alpha["default"] is False and alpha["aliases"] == ["alpha"] and alpha["trained"] is False
    assert alpha["config"]["name"] == "tiny" and alpha["config"]["chunk_size"] == 16
    assert alpha["kendall_tau"]["in_distribution"]["sne"] == pytest.approx(0.31)
    assert got[NAMES["beta"]]["kendall_tau"]["in_distribution"]["sne"] == pytest.approx(0.42)
    assert alpha["version"] != got[NAMES["beta"]]["version"]
    errors = {e["folder"]: e["error"] for e in body["errors"]}
    assert set(errors) == {"broken", "half"}  # .hidden is ignored, the service started anyway
    assert "JSONDecodeError" in errors["broken"]
    assert "missing model.safetensors" in errors["half"]


async def test_missing_directory_is_listed_not_fatal(svc_predictor_dir, tmp_path):
    async with running_app(settings(svc_predictor_dir, tmp_path / "nope")) as client:
        body = (await client.get("/v1/predictors")).json()
        assert [p["name"] for p in body["predictors"]] == [body["default"]]
        assert "is not a directory" in body["errors"][0]["error"]
        assert (await client.post("/v1/encode", content=ckpt_bytes("mlp", 3))).status_code == 200


# --------------------------------------------------------------------------------------------- choosing


async def test_choose_by_query_header_alias_and_card(svc_predictor_dir, predictors_dir, direct, svc_predictor):
    data = ckpt_bytes("cnn", unique_seed())
    want = {k: p.predict([load_checkpoint(data)])[0] for k, p in direct.items()}
    want_default = svc_predictor.predict([load_checkpoint(data)])[0]
    async with running_app(settings(svc_predictor_dir, predictors_dir)) as client:
        plain = (await client.post("/v1/encode", content=data)).json()
        by_query = (await client.post("/v1/encode?predictor=alpha", content=data)).json()
        by_header = (await client.post("/v1/encode", content=data, headers={"X-SNE-Predictor": NAMES["beta"]})).json()
        batch = (await client.post(f"/v1/encode/batch?predictor={NAMES['alpha']}",
                                   files=[("files", ("a.safetensors", data))])).json()
        both = await client.post("/v1/encode?predictor=alpha", content=data, headers={"X-SNE-Predictor": "alpha"})
        clash = await client.post("/v1/encode?predictor=alpha", content=data, headers={"X-SNE-Predictor": "beta"})
        card = (await client.get("/v1/predictor?name=beta")).json()
        default_card = (await client.get("/v1/predictor")).json()
    assert plain["predictor"]["name"] == svc_predictor.name
    assert plain["predicted_accuracy"] == pytest.approx(want_default.accuracy, abs=1e-5)
    assert by_query["predictor"] == {"name": NAMES["alpha"], "version": direct["alpha"].version, "trained": False}
    assert by_query["embedding"] == pytest.approx(want["alpha"].embedding, abs=1e-5)
    assert by_header["predictor"]["name"] == NAMES["beta"]
    assert by_header["embedding"] == pytest.approx(want["beta"].embedding, abs=1e-5)
    assert len(by_query["embedding"]) == 16 != len(plain["embedding"])  # really another model
    assert batch["results"][0]["result"]["predictor"]["name"] == NAMES["alpha"]
    assert batch["results"][0]["result"]["cached"] is True  # alpha answered this upload already
    assert both.status_code == 200
    assert clash.status_code == 400 and "disagree" in clash.json()["error"]["message"]
    assert card["name"] == NAMES["beta"] and card["version"] == direct["beta"].version
    assert default_card["name"] == svc_predictor.name


async def test_unknown_predictor_is_404_with_the_list(svc_predictor_dir, predictors_dir):
    async with running_app(settings(svc_predictor_dir, predictors_dir)) as client:
        answers = [
            await client.post("/v1/encode?predictor=mine", content=ckpt_bytes("mlp", 1)),
            await client.post("/v1/encode", content=ckpt_bytes("mlp", 1), headers={"X-SNE-Predictor": "mine"}),
            await client.post("/v1/encode/batch?predictor=mine", files=[("files", ("a", ckpt_bytes("mlp", 1)))]),
            await client.get("/v1/predictor?name=mine"),
            await client.post("/v1/encode?predictor=broken", content=ckpt_bytes("mlp", 1)),
        ]
        worker = client.app.state.worker
    for r in answers:
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["reason"] == "unknown_predictor"
        known = sorted(["default", "svc-fixture", *NAMES, *NAMES.values()])
        assert err["message"].endswith("; known: " + ", ".join(known))
    assert "no predictor named 'mine'" in answers[0].json()["error"]["message"]
    assert "no predictor named 'broken'" in answers[-1].json()["error"]["message"]  # a listed error is not served
    assert worker.encoded == 0  # refused before any encoding


# --------------------------------------------------------------------------------------------- cache and metrics


@pytest.mark.parametrize("backend", ["lru", "redis"])
async def test_same_upload_two_predictors_two_cached_answers(backend, request, svc_predictor_dir, predictors_dir, direct):
    extra = {}
    if backend == "redis":
        url, prefix = request.getfixturevalue("redis_url")
        extra = {"redis_url": url, "cache_prefix": prefix}
    data = ckpt_bytes("cnn", unique_seed())
    async with running_app(settings(svc_predictor_dir, predictors_dir, **extra)) as client:
        first = {k: (await client.post(f"/v1/encode?predictor={k}", content=data)).json() for k in NAMES}
        again = {k: (await client.post(f"/v1/encode?predictor={k}", content=data)).json() for k in NAMES}
        if backend == "redis":
            import redis

            keys = {k.decode() for k in redis.Redis.from_url(url).scan_iter(match=prefix + "*")}
            assert keys == {f"{prefix}{NAMES[k]}:{direct[k].version}:{first[k]['sha256']}" for k in NAMES}
    assert first["alpha"]["sha256"] == first["beta"]["sha256"]
    assert not first["alpha"]["cached"] and not first["beta"]["cached"]
    assert again["alpha"]["cached"] and again["beta"]["cached"]
    diff = np.abs(np.array(first["alpha"]["embedding"]) - np.array(first["beta"]["embedding"])).max()
    assert diff > 1e-2  # two models, two answers
    for k, name in NAMES.items():
        assert again[k]["predictor"]["name"] == name
        assert again[k]["embedding"] == pytest.approx(first[k]["embedding"], abs=1e-6)
        assert again[k]["predicted_accuracy"] == pytest.approx(first[k]["predicted_accuracy"], abs=1e-6)


async def test_metrics_carry_the_predictor(svc_predictor_dir, predictors_dir, svc_predictor):
    async with running_app(settings(svc_predictor_dir, predictors_dir)) as client:
        before = (await client.get("/metrics")).text
        for _ in range(3):
            await client.post("/v1/encode?predictor=alpha", content=ckpt_bytes("mlp", unique_seed()))
        await client.post("/v1/encode?predictor=beta", content=ckpt_bytes("mlp", unique_seed()))
        text = (await client.get("/metrics")).text

    def delta(metric: str, name: str) -> float:
        return scrape(text, metric, predictor=name) - scrape(before, metric, predictor=name)

    assert delta("sne_predicted_accuracy_count", NAMES["alpha"]) == 3
    assert delta("sne_predicted_accuracy_count", NAMES["beta"]) == 1
    assert delta("sne_batch_size_sum", NAMES["alpha"]) == 3 and delta("sne_batch_size_sum", NAMES["beta"]) == 1
    assert delta("sne_encode_duration_seconds_count", NAMES["beta"]) == 1
    assert delta("sne_predicted_accuracy_count", svc_predictor.name) == 0
    for name, default in ((NAMES["alpha"], "false"), (NAMES["beta"], "false"), (svc_predictor.name, "true")):
        assert scrape(text, "sne_predictor_info", predictor=name, default=default) == 1


# --------------------------------------------------------------------------------------------- reload


async def wait_until(condition, timeout: float = 60.0) -> None:
    """Poll a condition the code under test makes true (no fixed sleeps ordering events)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_reload_under_load_drops_nothing(svc_predictor_dir, tmp_path):
    root = tmp_path / "predictors"
    old_alpha = make_predictor(root / "alpha", NAMES["alpha"], seed=1)
    spare = tmp_path / "spare"
    make_predictor(spare / "beta", NAMES["beta"], seed=2)
    new_alpha = make_predictor(spare / "alpha", NAMES["alpha"], seed=3)
    blobs = [ckpt_bytes("cnn" if i % 2 else "mlp", unique_seed()) for i in range(8)]
    slow_blob = ckpt_bytes("cnn", unique_seed())
    release = asyncio.Event()

    async def slow_body():  # an upload still arriving when the reload happens: not yet queued anywhere
        yield slow_blob[:100]
        await release.wait()
        yield slow_blob[100:]

    # a long batch window: the requests are still queued while the reload runs
    async with running_app(settings(svc_predictor_dir, root, admin_open=True, max_wait_ms=3000)) as client:
        registry = client.app.state.registry
        old_served = registry.resolve("alpha")
        old_worker = old_served.worker
        inflight = [asyncio.create_task(client.post(f"/v1/encode?predictor={'alpha' if i % 2 else 'default'}",
                                                    content=b)) for i, b in enumerate(blobs)]
        slow = asyncio.create_task(client.post("/v1/encode?predictor=alpha", content=slow_body()))
        await wait_until(lambda: old_worker.depth == 4 and client.app.state.worker.depth == 4)
        await wait_until(lambda: old_served.leases == 5)  # the slow upload holds alpha too
        shutil.copytree(spare / "beta", root / "beta")  # a new predictor ...
        for f in ("model.safetensors", "card.json"):  # ... and a changed one
            shutil.copy2(spare / "alpha" / f, root / "alpha" / f)
        reload = await client.post("/v1/admin/reload")
        assert all(not t.done() for t in [*inflight, slow])  # the reload did not wait for (or fail) them
        release.set()
        after = await client.post("/v1/encode?predictor=alpha", content=blobs[1])
        beta = await client.post("/v1/encode?predictor=beta", content=blobs[0])
        done = await asyncio.gather(*inflight, slow)
        await wait_until(lambda: not old_worker.running)  # retired once its last request was answered
    assert reload.status_code == 200
    assert reload.json() == {"loaded": [NAMES["alpha"], NAMES["beta"]], "unchanged": ["svc-fixture"],
                             "removed": [], "errors": []}
    assert [r.status_code for r in done] == [200] * (len(blobs) + 1), [r.json() for r in done if r.status_code != 200]
    for i, r in enumerate(done):  # in-flight requests finished on the predictor they started with
        if i % 2:
            assert r.json()["predictor"]["version"] == old_alpha.version
    assert old_worker.encoded == 5  # the four queued and the slow upload
    assert after.json()["predictor"]["version"] == new_alpha.version != old_alpha.version
    assert after.json()["cached"] is False  # a new version never answers from the old one's cache
    assert beta.status_code == 200 and beta.json()["predictor"]["name"] == NAMES["beta"]


async def test_reload_keeps_the_old_version_when_the_new_one_is_broken(svc_predictor_dir, tmp_path):
    root = tmp_path / "predictors"
    alpha = make_predictor(root / "alpha", NAMES["alpha"], seed=1)
    async with running_app(settings(svc_predictor_dir, root, admin_open=True)) as client:
        (root / "alpha" / "model.safetensors").write_bytes(b"truncated")
        body = (await client.post("/v1/admin/reload")).json()
        still = (await client.post("/v1/encode?predictor=alpha", content=ckpt_bytes("mlp", 5))).json()
        listed = (await client.get("/v1/predictors")).json()
    assert body["loaded"] == [] and body["errors"][0]["folder"] == "alpha"
    assert still["predictor"]["version"] == alpha.version
    assert listed["errors"][0]["folder"] == "alpha" and NAMES["alpha"] in [p["name"] for p in listed["predictors"]]


async def test_sighup_reloads(svc_predictor_dir, tmp_path):
    root = tmp_path / "predictors"
    root.mkdir()
    async with running_app(settings(svc_predictor_dir, root)) as client:
        registry = client.app.state.registry
        assert (await client.post("/v1/encode?predictor=beta", content=ckpt_bytes("mlp", 2))).status_code == 404
        make_predictor(root / "beta", NAMES["beta"], seed=2)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: any(s.name == NAMES["beta"] for s in registry.served))
        r = await client.post("/v1/encode?predictor=beta", content=ckpt_bytes("mlp", 2))
        beta_worker = registry.resolve("beta").worker
        shutil.rmtree(root / "beta")  # and removing a folder stops serving it
        result = await registry.reload()
        gone = await client.post("/v1/encode?predictor=beta", content=ckpt_bytes("mlp", 2))
        await wait_until(lambda: not beta_worker.running)
    assert r.status_code == 200 and r.json()["predictor"]["name"] == NAMES["beta"]
    assert result.removed == [NAMES["beta"]] and result.loaded == []
    assert gone.status_code == 404


async def test_admin_reload_needs_a_key_or_an_explicit_opt_in(svc_predictor_dir, tmp_path):
    async with running_app(settings(svc_predictor_dir, tmp_path)) as client:
        refused = await client.post("/v1/admin/reload")
    assert refused.status_code == 403 and "SNE_ADMIN_OPEN" in refused.json()["error"]["message"]
    async with running_app(settings(svc_predictor_dir, tmp_path, api_keys=["k1"])) as client:
        anonymous = await client.post("/v1/admin/reload")
        keyed = await client.post("/v1/admin/reload", headers={"X-API-Key": "k1"})
    assert anonymous.status_code == 401
    assert keyed.status_code == 200 and keyed.json()["unchanged"] == ["svc-fixture"]


# --------------------------------------------------------------------------------------------- files and the gate


def test_saved_predictor_is_readable_by_other_users(tmp_path):
    old = os.umask(0o077)
    try:
        make_predictor(tmp_path / "p", "p", seed=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o755
    for f in ("card.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "p" / f).stat().st_mode) == 0o644


def gate(*args: object, **env: str | None):
    clean = {"GITHUB_STEP_SUMMARY": None, "SNE_API_KEY": None, "SNE_URL": None, "SNE_PREDICTOR_PATH": None}
    return CliRunner().invoke(CLI, ["gate", *map(str, args)], env={**clean, **env}, catch_exceptions=False)


def test_gate_predictor_remote_and_local(svc_predictor_dir, predictors_dir, direct, tmp_path):
    from app.main import create_app

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(ckpt_bytes("cnn", 7))
    want = direct["beta"].predict([load_checkpoint(ckpt)])[0].accuracy
    with live_server(create_app(settings(svc_predictor_dir, predictors_dir))) as url:
        remote = gate(ckpt, "--min-accuracy", 0, "--url", url, "--predictor", "beta", "--json")
        unknown = gate(ckpt, "--min-accuracy", 0, "--url", url, "--predictor", "mine", "--json")
    local = gate(ckpt, "--min-accuracy", 0, "--local", "--predictor", NAMES["beta"], "--json",
                 SNE_PREDICTORS_DIR=str(predictors_dir))
    by_path = gate(ckpt, "--min-accuracy", 0, "--local", "--predictor", predictors_dir / "beta", "--json")
    local_unknown = gate(ckpt, "--min-accuracy", 0, "--local", "--predictor", "mine", "--json",
                         SNE_PREDICTORS_DIR=str(predictors_dir))
    results = [json.loads(r.stdout)["results"][0] for r in (remote, local, by_path)]
    assert [r.exit_code for r in (remote, local, by_path)] == [0, 0, 0]
    for r in results:
        assert r["predictor"]["name"] == NAMES["beta"]
        assert r["predicted_accuracy"] == pytest.approx(want, abs=1e-4)
    assert unknown.exit_code == 2
    assert json.loads(unknown.stdout)["results"][0]["error"]["reason"] == "unknown_predictor"
    assert local_unknown.exit_code == 2
    message = json.loads(local_unknown.stdout)["results"][0]["error"]["message"]
    assert "no predictor 'mine'" in message and "alpha" in message and NAMES["beta"] in message
