"""The pages people open: `/docs` renders in a real headless Chromium from local assets (no CDN), and `/`
names the loaded predictor and its Kendall tau table."""
from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from app.main import create_app
from tests.conftest import live_server, settings_for

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium; .ci/run does)")
def test_docs_render_offline_in_headless_chromium(svc_predictor_dir, tmp_path):
    with live_server(create_app(settings_for(svc_predictor_dir))) as url:
        html = httpx.get(f"{url}/docs").text
        assert "cdn" not in html.lower() and "/static/swagger-ui/swagger-ui-bundle.js" in html
        assert httpx.get(f"{url}/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               "--dump-dom", f"{url}/docs"]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    # these strings exist only after Swagger UI's JavaScript fetched /openapi.json and rendered the operations
    assert 'class="swagger-ui' in dom and "opblock" in dom, dom[-2000:]
    for path in ("/v1/encode", "/v1/encode/batch", "/v1/predictor", "/readyz"):
        assert f'data-path="{path}"' in dom, path


@pytest.mark.anyio
async def test_landing_page_names_the_predictor_and_its_taus(svc_predictor_dir, svc_predictor):
    from tests.conftest import running_app

    async with running_app(settings_for(svc_predictor_dir)) as client:
        r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'href="/docs"' in page
    assert svc_predictor.name in page and svc_predictor.version in page
    # the fixture card: kendall_tau {"test": {"sne": 0.5, "stat_features": 0.4}}
    assert "<th>test</th><td>0.500</td><td>0.400</td>" in page and "<th>stat_features</th>" in page


@pytest.mark.anyio
async def test_landing_page_says_untrained(untrained_dir):
    from tests.conftest import running_app

    async with running_app(settings_for(untrained_dir)) as client:
        page = (await client.get("/")).text
    assert "UNTRAINED" in page and "records no Kendall tau" in page
