"""Reading and encoding at once (model.overlap): the same predictions as reading, then encoding."""
import threading

import pytest
import torch
from safetensors.torch import save_file

from app.local import encode_parsed, parse_file
from model import overlap
from model.admission import Limits
from model.chunking import chunk_file
from model.errors import CheckpointError
from model.packing import pack
from model.predictor import Predictor


def _mlp(path, widths=(64, 96, 64, 80, 48, 10), seed=0) -> None:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        state[f"layers.{i}.weight"] = torch.randn(b, a, generator=g) / a**0.5
        state[f"layers.{i}.bias"] = torch.randn(b, generator=g) * 0.1
    save_file(state, path)


@pytest.fixture(scope="module")
def pred() -> Predictor:
    return Predictor.load(None)


def _both(path, pred):
    c = pred.config.chunk_size
    ck = chunk_file(path, c, Limits(), "seed")
    with torch.no_grad():
        plain = pred.model(pack([ck.layers]))
    ck2, vectors = overlap.read_with_vectors(path, pred.model, c, Limits(), "seed")
    with torch.no_grad():
        both = pred.model(pack([ck2.layers]), vectors)
    return plain, both, vectors


def test_one_piece_gives_the_bits_of_the_plain_forward(tmp_path, pred):
    _mlp(tmp_path / "m.safetensors")
    plain, both, vectors = _both(tmp_path / "m.safetensors", pred)
    assert vectors.shape[:2] == (pred.config.members, 10)  # [members, parts, hidden]
    assert torch.equal(plain.embedding, both.embedding) and torch.equal(plain.logit, both.logit)


def test_many_pieces_equal_the_plain_forward_to_rounding(tmp_path, pred, monkeypatch):
    monkeypatch.setattr(overlap, "PIECE_CHUNKS", 200)  # ~2,000 chunks: about ten pieces
    _mlp(tmp_path / "m.safetensors", widths=(128, 96, 128, 80, 64, 10))
    plain, both, _ = _both(tmp_path / "m.safetensors", pred)
    assert torch.allclose(plain.embedding, both.embedding, atol=1e-5)
    assert abs(float(plain.accuracy[0]) - float(both.accuracy[0])) < 1e-5
    # a vector in the wrong place would not pass: the parts' order matters
    shuffled = pred.model(pack([chunk_file(tmp_path / "m.safetensors", 16, Limits(), "seed").layers]),
                          _both(tmp_path / "m.safetensors", pred)[2].flip(-2))
    assert not torch.allclose(plain.embedding, shuffled.embedding, atol=1e-3)


def test_a_bad_tensor_is_refused_and_the_worker_stops(tmp_path, pred):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 64, generator=g)
    w[5, 5] = float("nan")
    save_file({"a.weight": torch.randn(64, 64, generator=g), "b.weight": w, "c.weight": torch.randn(10, 64)},
              tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError) as e:
        overlap.read_with_vectors(tmp_path / "nan.safetensors", pred.model, 16, Limits(), "s")
    assert e.value.reason == "non_finite"
    assert not [t for t in threading.enumerate() if t.name == "sne-pieces"]


def test_an_encoder_failure_reaches_the_caller(tmp_path, pred, monkeypatch):
    _mlp(tmp_path / "m.safetensors")

    def boom(batch):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(pred.model, "part_vectors", boom)
    with pytest.raises(RuntimeError, match="encoder failed"):
        overlap.read_with_vectors(tmp_path / "m.safetensors", pred.model, 16, Limits(), "s")
    assert not [t for t in threading.enumerate() if t.name == "sne-pieces"]


def test_the_cli_path_overlaps_large_files_with_the_same_answer(tmp_path, pred, monkeypatch):
    _mlp(tmp_path / "m.safetensors")
    (plain,) = encode_parsed([parse_file(tmp_path / "m.safetensors", pred)], pred)
    assert parse_file(tmp_path / "m.safetensors", pred).vectors is None  # small: read, then encode
    monkeypatch.setattr(overlap, "OVERLAP_PARAMS", 1_000)
    parsed = parse_file(tmp_path / "m.safetensors", pred)
    assert parsed.vectors is not None
    (both,) = encode_parsed([parsed], pred)
    assert both.sha256 == plain.sha256 and abs(both.predicted_accuracy - plain.predicted_accuracy) < 1e-6
    assert both.embedding == pytest.approx(plain.embedding, abs=1e-6)


@pytest.mark.parametrize("threads, worker_threads", [(1, 1), (2, 1), (3, 2)])
def test_the_worker_leaves_the_reader_a_core(tmp_path, pred, monkeypatch, threads, worker_threads):
    """On two cores the encoder must not run two torch threads beside the reader (three threads, two cores)."""
    _mlp(tmp_path / "m.safetensors")
    seen: list[int] = []
    part_vectors = pred.model.part_vectors

    def counting(batch):
        seen.append(torch.get_num_threads())
        return part_vectors(batch)

    monkeypatch.setattr(pred.model, "part_vectors", counting)
    reader: list[int] = []

    def reading(*args):
        reader.append(torch.get_num_threads())
        return chunk_file(*args)

    monkeypatch.setattr(overlap, "chunk_file", reading)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        overlap.read_with_vectors(tmp_path / "m.safetensors", pred.model, 16, Limits(), "s")
        assert seen and set(seen) == {worker_threads} and reader == [1]  # two threads on two cores, not three
        assert torch.get_num_threads() == threads  # the caller's count is untouched
        later: list[int] = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [threads]  # and so is the count a new thread starts with
    finally:
        torch.set_num_threads(old)


def _split_run(path, pred, monkeypatch, slow: str) -> tuple[torch.Tensor, dict[str, int]]:
    """`read_with_vectors` with the thread named `slow` sleeping before each piece it encodes; returns the
    vectors and how many pieces each thread encoded."""
    done: dict[str, int] = {}
    part_vectors = pred.model.part_vectors

    def timed(batch):
        name = "worker" if threading.current_thread().name == "sne-pieces" else "reader"
        done[name] = done.get(name, 0) + 1
        if name == slow:
            threading.Event().wait(0.2)
        return part_vectors(batch)

    monkeypatch.setattr(pred.model, "part_vectors", timed)
    _, vectors = overlap.read_with_vectors(path, pred.model, 16, Limits(), "seed")
    monkeypatch.setattr(pred.model, "part_vectors", part_vectors)
    return vectors, done


def test_the_reader_takes_queued_pieces_when_the_read_ends_with_the_same_bits(tmp_path, pred, monkeypatch):
    """After the read, the reader's core is free: it encodes the pieces the worker has not reached, each on
    the worker's thread count, so the vectors do not depend on which thread took which piece."""
    monkeypatch.setattr(overlap, "PIECE_CHUNKS", 200)
    path = tmp_path / "m.safetensors"
    _mlp(path, widths=(128, 96, 128, 80, 64, 10))
    helped, by_helped = _split_run(path, pred, monkeypatch, slow="worker")
    alone, by_alone = _split_run(path, pred, monkeypatch, slow="reader")
    pieces = sum(by_helped.values())
    assert pieces >= 5 and sum(by_alone.values()) == pieces  # each piece encoded once
    assert by_helped.get("reader", 0) >= 2  # a slow worker: the reader took pieces
    assert by_alone.get("worker", 0) > by_helped.get("worker", 0)  # a slow reader: the worker took more
    assert torch.equal(helped, alone)
    plain, _, _ = _both(path, pred)
    with torch.no_grad():
        both = pred.model(pack([chunk_file(path, 16, Limits(), "seed").layers]), helped)
    assert torch.allclose(plain.embedding, both.embedding, atol=1e-5)


def test_a_mixed_batch_reuses_the_overlapped_vectors(tmp_path, pred, monkeypatch):
    """A batch of one large upload (read overlapped) and one small: the large one's vectors are used as they
    are, only the small one's chunk path runs in the forward's stage, and each answer equals its solo one."""
    from app.parsing import parse_upload
    from app.worker import BatchWorker

    monkeypatch.setattr(overlap, "OVERLAP_PARAMS", 1_000)
    _mlp(tmp_path / "big.safetensors", widths=(128, 96, 128, 80, 64, 10))
    _mlp(tmp_path / "small.safetensors", seed=1)
    big = parse_upload(tmp_path / "big.safetensors", "a" * 64, pred, Limits(), overlap=True)
    small = parse_upload(tmp_path / "small.safetensors", "b" * 64, pred, Limits(), overlap=False)
    assert big.vectors is not None and small.vectors is None
    assert overlap.batch_vectors(pred.model, [small.chunked], [None], pred.device) is None  # none: the forward's job
    worker = BatchWorker(pred)
    solo = [worker._forward([p])[0] for p in (big, small)]
    calls = []
    part_vectors = pred.model.part_vectors
    monkeypatch.setattr(pred.model, "part_vectors", lambda batch: calls.append(batch.n_checkpoints) or part_vectors(batch))
    together = worker._forward([big, small])
    assert calls == [1]  # the small checkpoint's chunk path alone; the big one's vectors were reused
    for got, want in zip(together, solo):
        assert not isinstance(got, BaseException) and not isinstance(want, BaseException)
        assert abs(got.accuracy - want.accuracy) < 1e-5
        assert got.embedding == pytest.approx(want.embedding, abs=1e-5)
    swapped = worker._forward([small, big])  # the vectors follow their checkpoint, whatever the order
    assert swapped[0].embedding == pytest.approx(solo[1].embedding, abs=1e-5)
    assert swapped[1].embedding == pytest.approx(solo[0].embedding, abs=1e-5)


@pytest.mark.anyio
async def test_the_service_reads_large_uploads_overlapped_with_the_cli_answer(tmp_path, pred, monkeypatch):
    """`POST /v1/encode` of a large file (here: over a lowered threshold) runs its chunk path beside the read, as
    `sne encode` does, and answers what the CLI answers; SNE_OVERLAP_READS=false reads, then encodes."""
    from tests.conftest import running_app, settings_for

    monkeypatch.setattr(overlap, "OVERLAP_PARAMS", 1_000)
    monkeypatch.setattr(overlap, "PIECE_CHUNKS", 200)  # several pieces
    path = tmp_path / "m.safetensors"
    _mlp(path, widths=(128, 96, 128, 80, 64, 10))
    (cli,) = encode_parsed([parse_file(path, pred)], pred)
    reads = []
    read_with_vectors = overlap.read_with_vectors
    monkeypatch.setattr(overlap, "read_with_vectors", lambda *a, **k: reads.append(1) or read_with_vectors(*a, **k))
    headers = {"Content-Type": "application/octet-stream"}
    async with running_app(settings_for(None, warmup=False)) as client:
        r = await client.post("/v1/encode", content=path.read_bytes(), headers=headers)
    assert r.status_code == 200, r.text
    assert reads == [1]
    body = r.json()
    assert body["sha256"] == cli.sha256 and abs(body["predicted_accuracy"] - cli.predicted_accuracy) < 1e-6
    assert body["embedding"] == pytest.approx(cli.embedding, abs=1e-6)
    async with running_app(settings_for(None, warmup=False, overlap_reads=False)) as client:
        off = await client.post("/v1/encode", content=path.read_bytes(), headers=headers)
    assert off.status_code == 200 and reads == [1]  # not read overlapped
    assert off.json()["embedding"] == pytest.approx(cli.embedding, abs=1e-5)  # the same answer, to rounding


def test_the_encoder_running_out_of_device_memory_while_reading_is_a_422(tmp_path, pred, monkeypatch):
    """An overlapped read runs the encoder in the parse stage: its out-of-memory is the service's
    `too_large_to_encode` (422), as in the forward, not `unparseable`."""
    from app.parsing import parse_upload

    monkeypatch.setattr(overlap, "OVERLAP_PARAMS", 1_000)
    _mlp(tmp_path / "m.safetensors")

    def oom(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pred.model, "part_vectors", oom)
    with pytest.raises(CheckpointError) as e:
        parse_upload(tmp_path / "m.safetensors", "c" * 64, pred, Limits(), overlap=True)
    assert e.value.reason == "too_large_to_encode"
    assert not [t for t in threading.enumerate() if t.name == "sne-pieces"]
