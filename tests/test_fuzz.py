"""Property: whatever bytes arrive as a checkpoint, the answer is 200 or a 4xx with a reason, never a 5xx,
and it comes quickly.

The bulk drives the upload parse path directly (`app.parsing.parse_upload`, which is what the service runs
in its parse thread); a few hundred examples go through the real ASGI app (lifespan, worker, cache). The
generator builds safetensors files from a header JSON it controls: dtypes (real, integer, unknown, not a
string), shapes (empty, zeros, more than 64 dimensions, huge integers, negative, not a list), offsets
(consistent, lying, out of range), metadata, payloads with NaN/Inf/overflowing values, and byte-level
damage (a lying header length, a cut header or data section, flipped bytes).

`SNE_FUZZ_EXAMPLES` scales the parse-path run (default 2000); the `slow` test runs >= 10,000 and is left
out of `.ci/run` (`pytest -m slow tests/test_fuzz.py` runs it).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import checkpoint_status
from app.parsing import ParsedCheckpoint, parse_upload
from model.admission import Limits
from model.errors import CheckpointError
from model.predictor import Predictor
from tests.conftest import settings_for

EXAMPLES = int(os.environ.get("SNE_FUZZ_EXAMPLES", "2000"))
ASGI_EXAMPLES = 200
SLOW_EXAMPLES = 10_000
#: per-example bound: generous for a shared 2-core CI box; a frozen parser takes tens of seconds
SECONDS = 5.0
LIMITS = Limits()

SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
NP = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
DTYPES = st.sampled_from(
    ["F32", "F32", "F32", "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "C64", "f32", "", None, 0, ["F32"]]
)
GOOD_DTYPES = st.sampled_from(["F32", "F32", "F16", "BF16", "F64", "I64"])
SMALL_DIM = st.integers(0, 5)
WEIRD_DIM = st.one_of(
    st.integers(-3, -1), st.integers(2**31, 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)
)
SHAPES = st.one_of(
    st.lists(SMALL_DIM, max_size=5),  # ordinary
    st.builds(lambda n, k: [1] * n + [2] * k, st.integers(60, 400), st.integers(0, 3)),  # > 64 dimensions
    st.lists(st.one_of(SMALL_DIM, WEIRD_DIM), max_size=8),  # huge, negative, non-integer sizes
    st.lists(st.integers(10**20, 10**60), min_size=1, max_size=40),  # big integers whose product is huge
    st.one_of(st.none(), st.text(max_size=4), st.integers(0, 9)),  # not a list at all
)
GOOD_SHAPES = st.one_of(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.builds(lambda n, k: [1] * n + [2] * k, st.integers(60, 400), st.integers(0, 3)),  # > 64 dimensions
)
NAMES = st.one_of(
    st.sampled_from(["0.weight", "0.bias", "1.weight", "fc.weight", "bn.running_mean", "embed.weight", "cls_token"]),
    st.text(min_size=0, max_size=12),
)
#: how a float payload is filled: plain values, a NaN or an Inf somewhere, values whose sum overflows, zeros
FILLS = st.sampled_from(["normal", "normal", "normal", "nan", "inf", "overflow", "zeros"])


def prod_or_none(shape: object) -> int | None:
    if isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**20 for d in shape):
        n = math.prod(shape)
        return n if n <= 4096 else None
    return None


def payload(dtype: object, n: int, fill: str, seed: int) -> bytes:
    """`n` elements of `dtype` (random bytes for dtypes numpy has no float for)."""
    rng = np.random.default_rng(seed)
    if not isinstance(dtype, str):
        return rng.bytes(n)
    if dtype in NP:
        x = rng.standard_normal(n)
        if n and fill in ("nan", "inf"):
            x[rng.integers(n)] = np.nan if fill == "nan" else np.inf
        elif fill == "overflow":
            x = np.full(n, np.finfo(NP[dtype]).max)
        elif fill == "zeros":
            x = np.zeros(n)
        return x.astype(NP[dtype]).tobytes()
    return rng.bytes(n * SIZES.get(dtype, 4))


@st.composite
def checkpoints(draw: st.DrawFn) -> bytes:
    """A safetensors file (or something close to one) built from a drawn header."""
    header: dict = {}
    data = bytearray()
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 3)):  # mostly a well-formed entry, so the deep paths (grouping, NaN check, chunking) run
            dtype, shape, lying = draw(GOOD_DTYPES), draw(GOOD_SHAPES), False
        else:
            dtype, shape, lying = draw(DTYPES), draw(SHAPES), True
        n = prod_or_none(shape)
        n = draw(st.integers(0, 16)) if n is None else n
        begin = len(data)
        data += payload(dtype, n, draw(FILLS), draw(st.integers(0, 2**16)))
        offsets = [begin, len(data)] if not lying else draw(st.one_of(
            st.just([begin, len(data)]),
            st.lists(st.one_of(st.integers(-5, 10**4), st.integers(2**63, 2**70)), max_size=3),
            st.just([len(data), begin]), st.just("0,4"),
        ))
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if lying and draw(st.integers(0, 4)) == 0:
            entry.pop(draw(st.sampled_from(sorted(entry))))
        header[draw(NAMES)] = entry
    meta = draw(st.one_of(
        st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=5),
        st.just("not an object"), st.lists(st.integers(), max_size=2),
        st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.integers(100, 5000)),
    ))
    if meta is not None:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode() if draw(st.booleans()) or header else draw(st.binary(max_size=64))
    n = len(raw)
    damage = draw(st.sampled_from(["none"] * 6 + ["length", "cut_header", "cut_data", "flip", "prefix"]))
    if damage == "length":
        n = draw(st.one_of(st.integers(0, 2 * len(raw) + 16), st.integers(2**40, 2**64 - 1)))
    blob = struct.pack("<Q", n) + raw + bytes(data)
    if damage == "cut_header":
        blob = blob[: draw(st.integers(0, 8 + len(raw)))]
    elif damage == "cut_data" and data:
        blob = blob[: -draw(st.integers(1, len(data)))]
    elif damage == "flip" and len(blob) > 8:
        i = draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1 :]
    elif damage == "prefix":
        blob = draw(st.sampled_from([b"\x80\x02", b"PK\x03\x04", b"", b"{}"])) + blob
    return blob


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.untrained()


def check_parse(blob: bytes, predictor: Predictor) -> None:
    """The parse path either accepts the file or refuses it with a 4xx `CheckpointError`, within SECONDS."""
    sha = hashlib.sha256(blob).hexdigest()
    t0 = time.perf_counter()
    try:
        parsed = parse_upload(blob, sha, predictor, LIMITS)
    except CheckpointError as e:
        assert checkpoint_status(e) in (415, 422), (e.reason, checkpoint_status(e))
        assert e.reason and e.message
    else:
        assert isinstance(parsed, ParsedCheckpoint) and parsed.layers and parsed.n_chunks >= len(parsed.layers)
    elapsed = time.perf_counter() - t0
    assert elapsed < SECONDS, f"parse took {elapsed:.1f} s"


FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


def fuzz(n: int) -> settings:
    """Deterministic (derandomized, no example database), no per-example deadline: SECONDS is asserted."""
    return settings(FUZZ, max_examples=n)


@fuzz(EXAMPLES)
@given(blob=checkpoints())
def test_parse_path_never_fails_unexpectedly(blob: bytes, predictor: Predictor) -> None:
    check_parse(blob, predictor)


@pytest.mark.slow
@fuzz(max(SLOW_EXAMPLES, EXAMPLES))
@given(blob=checkpoints())
def test_parse_path_ten_thousand(blob: bytes, predictor: Predictor) -> None:
    check_parse(blob, predictor)


@pytest.fixture(scope="module")
def client(svc_predictor_dir):
    with warnings.catch_warnings():  # starlette deprecates its TestClient on httpx (at import)
        warnings.simplefilter("ignore", DeprecationWarning)
        from starlette.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings_for(svc_predictor_dir, lru_size=0))) as c:
        yield c


@fuzz(ASGI_EXAMPLES)
@given(blob=checkpoints(), multipart=st.booleans())
def test_app_answers_200_or_4xx(blob: bytes, multipart: bool, client) -> None:
    t0 = time.perf_counter()
    if multipart:
        r = client.post("/v1/encode", files={"file": ("x.safetensors", blob, "application/octet-stream")})
    else:
        r = client.post("/v1/encode", content=blob, headers={"Content-Type": "application/octet-stream"})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.json()["error"]["reason"]
    else:
        assert len(r.json()["embedding"]) > 0
    assert elapsed < SECONDS, f"request took {elapsed:.1f} s"


# ------------------------------------------------------------------ the rows of issue 11, one file each


def st_file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def huge_int_shape(n: int, digits: int = 4299) -> bytes:
    big = "9" * digits
    raw = ('{"w":{"dtype":"F32","shape":[' + ",".join([big] * n) + '],"data_offsets":[0,4]}}').encode()
    return struct.pack("<Q", len(raw)) + raw + f32(1.0)


ROWS = {
    "nan_in_65_dims": lambda: st_file({"w": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, f32(np.nan)),
    "overflowing_sum_in_65_dims": (
        lambda: st_file({"w": {"dtype": "F32", "shape": [2] + [1] * 64, "data_offsets": [0, 8]}}, f32(3e38, 3e38))),
    "huge_ints_in_shape": lambda: huge_int_shape(150),
    "shape_of_30000_ones": (
        lambda: st_file({"w": {"dtype": "F32", "shape": [1] * 30_000, "data_offsets": [0, 4]}}, f32(1.0))),
    "40000_tiny_tensors": (  # over SNE_MAX_TENSORS (the issue's row had 100,000)
        lambda: st_file({f"l{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i in range(40_000)}, np.ones(40_000, dtype="<f4").tobytes())),
    "200000_metadata_keys": (
        lambda: st_file({"__metadata__": {f"k{i}": "v" for i in range(200_000)},
                         "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, f32(1.0, 2.0))),
}
ROW_SECONDS = 2.0


@pytest.mark.parametrize("row", list(ROWS))
def test_issue_rows_are_refused_quickly(row: str, predictor: Predictor) -> None:
    """Each pathological upload of the issue is a 4xx (never a 5xx) within ROW_SECONDS on the parse path."""
    blob = ROWS[row]()
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        parse_upload(blob, hashlib.sha256(blob).hexdigest(), predictor, LIMITS)
    elapsed = time.perf_counter() - t0
    assert checkpoint_status(info.value) in (413, 415, 422)
    assert elapsed < ROW_SECONDS, f"refused after {elapsed:.1f} s"
