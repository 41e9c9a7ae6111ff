"""Spooling a large upload: written by a background thread, and a storage failure is a 507, not a 500.

The failure is real, not mocked: the server runs in its own process under a file size limit (RLIMIT_FSIZE;
Python ignores SIGXFSZ, so a write past the limit fails with EFBIG like a full disk would fail with ENOSPC).
"""
from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ckpt_bytes, free_port, unique_seed, wait_ready

REPO = Path(__file__).resolve().parents[1]
FSIZE = 256 * 1024  # largest file the server process may write


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))


def test_spool_failure_is_507_and_the_server_goes_on(svc_predictor_dir, tmp_path):
    port = free_port()
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SNE_")},
        "SNE_PREDICTOR_PATH": str(svc_predictor_dir), "SNE_DEVICE": "cpu", "SNE_TORCH_THREADS": "1",
        "SNE_SPOOL_BYTES": "1024", "SNE_UPLOAD_DIR": str(spool), "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from app.cli.serve import serve; serve(None, {port})"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_limit_file_size,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        too_big = os.urandom(4 * FSIZE)  # spooled past 1 KiB, then the write past FSIZE fails
        for send in (
            lambda: httpx.post(url + "/v1/encode", content=too_big, timeout=30),
            lambda: httpx.post(url + "/v1/encode/batch", files=[("files", ("a", too_big))], timeout=30),
        ):
            r = send()
            assert r.status_code == 507, r.text
            assert r.json()["error"]["reason"] == "insufficient_storage" and "SNE_UPLOAD_DIR" in r.json()["error"]["message"]
            assert list(spool.iterdir()) == []  # the partial file is gone
        # a spooled upload under the limit is written (by the writer thread), hashed and encoded as before
        data = ckpt_bytes("cnn", unique_seed())
        assert 1024 < len(data) < FSIZE
        r = httpx.post(url + "/v1/encode", content=data, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert list(spool.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()
