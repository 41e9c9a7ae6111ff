"""After real traffic (good, cached and bad uploads), `/metrics` exposes every metric the Grafana dashboard
reads and every metric of app.metrics, with the values the traffic implies."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

import app.metrics as app_metrics
from tests.conftest import ckpt_bytes, running_app, scrape, settings_for, unique_seed

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/sne.json"


def sample_names(exposition: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(exposition) for s in fam.samples}


def dashboard_metric_names() -> set[str] | None:
    """The dashboard's `sne_*` names via tests/deploy_checks.py when both exist, else None."""
    if not DASHBOARD.exists():
        return None
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import deploy_checks
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    fn = getattr(deploy_checks, "dashboard_metric_names", None)
    return fn(DASHBOARD) if fn else None


def app_metric_samples() -> dict[str, set[str]]:
    """metric object name -> the sample names its type exposes."""
    out = {}
    for obj in vars(app_metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        name = obj._name
        out[name] = {
            "counter": {name + "_total"},
            "gauge": {name},
            "histogram": {name + "_bucket", name + "_sum", name + "_count"},
            "info": {name + "_info"},
        }[obj._type]
    return out


async def test_metrics_after_real_traffic(svc_predictor_dir):
    s = unique_seed()
    async with running_app(settings_for(svc_predictor_dir, max_wait_ms=30)) as client:
        good = [ckpt_bytes("cnn", s), ckpt_bytes("mlp", s + 1)]
        before = (await client.get("/metrics")).text
        for data in good:
            assert (await client.post("/v1/encode", content=data)).status_code == 200
        assert (await client.post("/v1/encode", content=good[0])).json()["cached"] is True
        assert (await client.post("/v1/encode", content=b"\x80\x04 pickle")).status_code == 415
        assert (await client.post("/v1/encode", content=good[1][:-10])).status_code == 422
        assert (await client.get("/nowhere")).status_code == 404
        resp = await client.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        text = resp.text
        exported = sample_names(text)

        # every metric of app.metrics is exposed
        for name, samples in app_metric_samples().items():
            assert samples <= exported, f"{name}: {samples - exported} missing from /metrics"
        # every metric the Grafana dashboard reads is exposed
        wanted = dashboard_metric_names()
        if wanted is not None:
            assert wanted, "the dashboard reads no sne_* metric?"
            assert wanted <= exported, f"dashboard metrics missing from /metrics: {sorted(wanted - exported)}"

        def delta(name: str, **labels: str) -> float:
            return scrape(text, name, **labels) - scrape(before, name, **labels)

        assert delta("sne_http_requests_total", route="/v1/encode", method="POST", status="200") == 3
        assert delta("sne_http_requests_total", route="/v1/encode", method="POST", status="415") == 1
        assert delta("sne_http_requests_total", route="unmatched", method="GET", status="404") == 1
        assert delta("sne_http_request_duration_seconds_count", route="/v1/encode") == 5
        assert delta("sne_parse_failures_total", reason="pickle") == 1
        assert delta("sne_parse_failures_total", reason="truncated") == 1
        assert delta("sne_cache_hits_total") == 1
        assert delta("sne_cache_misses_total") == 4
        assert delta("sne_batch_size_count") >= 1 and delta("sne_batch_size_sum") == 2
        assert delta("sne_encode_duration_seconds_count") == delta("sne_batch_size_count")
        assert delta("sne_predicted_accuracy_count") == 2
        assert scrape(text, "sne_queue_depth") == 0
        predictor = client.app.state.predictor
        assert scrape(text, "sne_predictor_info", name=predictor.name, version=predictor.version, trained="true") == 1
