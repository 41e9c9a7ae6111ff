"""The `serve` entry point in a real process: settings from `SNE_*`, answers, and a SIGTERM that lets the
request being encoded finish before the process exits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ckpt_bytes, free_port, scrape, unique_seed, wait_ready

REPO = Path(__file__).resolve().parents[1]


def test_serve_entry_point_and_sigterm(svc_predictor_dir):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SNE_")},
        "SNE_PREDICTOR_PATH": str(svc_predictor_dir),
        "SNE_DEVICE": "cpu",
        "SNE_MAX_WAIT_MS": "1500",  # the request below sits in the batch window when SIGTERM arrives
        "PYTHONPATH": str(REPO),
    }
    env.pop("SNE_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from app.cli.serve import serve; serve(None, {port})"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        assert httpx.get(url + "/v1/predictor").json()["name"] == "svc-fixture"

        result: dict = {}

        def upload() -> None:
            result["r"] = httpx.post(url + "/v1/encode", content=ckpt_bytes("cnn", unique_seed()), timeout=30)

        t = threading.Thread(target=upload)
        t.start()
        # SIGTERM only once the service reports the request queued, waiting in its batch window
        deadline = time.monotonic() + 10
        while scrape(httpx.get(url + "/metrics", timeout=5).text, "sne_queue_depth") < 1:
            assert t.is_alive() and time.monotonic() < deadline, "the upload never showed up in the queue"
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert result["r"].status_code == 200 and result["r"].json()["cached"] is False
        # uvicorn finishes the shutdown, then re-raises the signal it caught: exit status -SIGTERM (or 0)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert "Uvicorn running on http://127.0.0.1" in out
    assert "Application shutdown complete" in out and "Traceback" not in out
