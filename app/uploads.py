"""Receive uploads without ever holding a huge one in memory: stream, hash, count, spool, refuse early.

Both ways of sending a checkpoint end here:

* a raw body (`Content-Type: application/octet-stream`, or anything that is not multipart), and
* `multipart/form-data` with one or more file parts, parsed incrementally with python-multipart's
  streaming parser as the body arrives (Starlette's `request.form()` would spool every file whole first).

The size limit is enforced twice: a `Content-Length` above it is refused with 413 before one body byte is
read, and the bytes actually received are counted, so a chunked (or lying) upload is cut off with 413 as
soon as it passes the limit. The sha256 is computed while streaming. A file stays in memory up to
`spool_bytes` and goes to a temporary file past that, written and hashed by a background thread
(`app.spool`; a storage failure is a 507); `Upload.close()` removes the file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import APIError
from app.spool import DEPTH, SpoolWriter

#: allowance for multipart boundaries, part headers and small form fields on top of the file bytes
MULTIPART_OVERHEAD = 64 * 1024
#: names of multipart parts taken as checkpoint files even without a `filename`
FILE_FIELDS = frozenset({"file", "files"})


@dataclass
class Upload:
    """One received file: in memory (`data`) or spooled to disk (`path`), with its size and sha256."""

    filename: str | None
    size: int
    sha256: str
    data: bytes | None = None
    path: Path | None = None

    @property
    def source(self) -> bytes | Path:
        """What `model.checkpoint.load_checkpoint` reads."""
        if self.path is not None:
            return self.path
        if self.data is None:
            raise RuntimeError("upload already closed")  # a bug, not bad input: closed uploads are never parsed
        return self.data

    def close(self) -> None:
        """Forget the bytes; delete the spooled file if there is one."""
        self.data = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


#: a refused body with more than this left unsent is not drained: the 413 closes the connection instead
DRAIN_BYTES = 1024 * 1024


def _close_if_big(remaining: int | None) -> dict[str, str]:
    """`Connection: close` when the client still has much (or an unknown amount) to send, so the server does
    not spend time reading and discarding gigabytes just to keep the connection alive."""
    return {"Connection": "close"} if remaining is None or remaining > DRAIN_BYTES else {}


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise APIError(400, "bad_request", f"Content-Length {value!r} is not a number") from None
    if n < 0:
        raise APIError(400, "bad_request", f"Content-Length {value!r} is negative")
    return n


def too_large(limit: int, what: str = "upload", remaining: int | None = None) -> APIError:
    return APIError(
        413,
        "too_large",
        f"{what} exceeds the limit of {limit} bytes (SNE_MAX_UPLOAD_BYTES); nothing past the limit was read",
        _close_if_big(remaining),
    )


class _Sink:
    """Accumulates one file: counts and hashes the bytes, keeps them in memory, spills to disk when big.

    Past `spool_bytes` the file is written (and the rest hashed) by a `SpoolWriter` thread; the async readers
    call `drain` after each received chunk so that at most a few blocks wait for it.
    """

    def __init__(self, filename: str | None, limit: int, spool_bytes: int, upload_dir: Path | None) -> None:
        self.filename = filename
        self.limit = limit
        self.spool_bytes = spool_bytes
        self.upload_dir = upload_dir
        self.size = 0
        self.hash = hashlib.sha256()
        self.buf = bytearray()
        self.writer: SpoolWriter | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            # remaining=0: whoever streams the body decides whether the connection must close
            raise too_large(self.limit, f"file {self.filename!r}" if self.filename else "upload", remaining=0)
        if self.writer is None and len(self.buf) + len(data) > self.spool_bytes:
            self.writer = SpoolWriter(self.upload_dir, self.hash)
            if self.buf:
                self.writer.submit(bytes(self.buf), hash_it=False)  # hashed as it arrived
            self.buf = bytearray()
        if self.writer is not None:
            self.writer.submit(data)
        else:
            self.hash.update(data)
            self.buf += data

    async def drain(self, depth: int = DEPTH) -> None:
        """Wait until at most `depth` spooled blocks are queued (0: all written, so `finish` will not wait)."""
        if self.writer is not None:
            await self.writer.drain(depth)

    def finish(self) -> Upload:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()  # waits for the last few blocks: the hash is complete after this
            return Upload(self.filename, self.size, self.hash.hexdigest(), path=writer.path)
        return Upload(self.filename, self.size, self.hash.hexdigest(), data=bytes(self.buf))

    def discard(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.abort()
        self.buf = bytearray()


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def check_content_length(request: Request, limit: int, what: str = "upload") -> int | None:
    """413 up front when the declared body is bigger than `limit` (the body is then never read)."""
    n = declared_length(request)
    if n is not None and n > limit:
        raise APIError(
            413, "too_large", f"{what} of {n} bytes exceeds the limit of {limit} bytes (SNE_MAX_UPLOAD_BYTES)",
            _close_if_big(n),
        )
    return n


def _remaining(declared: int | None, received: int) -> int | None:
    return None if declared is None else max(0, declared - received)


async def read_raw(request: Request, limit: int, spool_bytes: int, upload_dir: Path | None = None) -> Upload:
    """The request body as one upload (no filename)."""
    declared = check_content_length(request, limit)
    sink = _Sink(None, limit, spool_bytes, upload_dir)
    try:
        async for chunk in request.stream():
            try:
                sink.write(chunk)
            except APIError as e:
                if e.status != 413:
                    raise
                raise too_large(limit, remaining=_remaining(declared, sink.size)) from None
            await sink.drain()
        await sink.drain(0)  # so that finish() does not wait on the event loop
    except ClientDisconnect:
        sink.discard()
        raise APIError(400, "incomplete_upload", "the client disconnected before the upload finished") from None
    except BaseException:
        sink.discard()
        raise
    return sink.finish()


class _MultipartReader:
    """python-multipart callbacks that route each file part's bytes into its own `_Sink`."""

    def __init__(self, max_file_bytes: int, max_files: int, spool_bytes: int, upload_dir: Path | None) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.spool_bytes = spool_bytes
        self.upload_dir = upload_dir
        self.uploads: list[Upload] = []
        self.sink: _Sink | None = None
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.n_files = 0

    def callbacks(self) -> Any:  # multipart's MultipartCallbacks (a TypedDict)
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.sink = None
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None and name not in FILE_FIELDS:
            return  # an ordinary form field: its bytes only count towards the request limit
        self.n_files += 1
        if self.n_files > self.max_files:
            hint = "send several with POST /v1/encode/batch" if self.max_files == 1 else "SNE_MAX_BATCH_FILES"
            raise APIError(413, "too_many_files", f"more than {self.max_files} file(s) in one request ({hint})")
        label = filename.decode("utf-8", "replace") if filename is not None else name
        self.sink = _Sink(label, self.max_file_bytes, self.spool_bytes, self.upload_dir)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is not None:
            self.sink.write(bytes(data[start:end]))

    def on_part_end(self) -> None:
        if self.sink is not None:
            self.uploads.append(self.sink.finish())
            self.sink = None

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.discard()
        for u in self.uploads:
            u.close()
        self.uploads = []


async def read_multipart(
    request: Request,
    *,
    max_file_bytes: int,
    max_files: int,
    spool_bytes: int,
    upload_dir: Path | None = None,
) -> list[Upload]:
    """Every file part of a multipart body, streamed; 413 as soon as a file or the body passes its limit."""
    total_limit = max_file_bytes * max_files + MULTIPART_OVERHEAD
    declared = check_content_length(request, total_limit, "request body")
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(400, "bad_multipart", "multipart/form-data without a boundary parameter")
    reader = _MultipartReader(max_file_bytes, max_files, spool_bytes, upload_dir)
    parser = MultipartParser(boundary, reader.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > total_limit:
                raise too_large(total_limit, "request body", _remaining(declared, received))
            try:
                parser.write(chunk)
            except APIError as e:
                if e.status == 413:  # a file past its limit: say so, and stop the transfer if much is left
                    e.headers.update(_close_if_big(_remaining(declared, received)))
                raise
            if reader.sink is not None:
                await reader.sink.drain()
        parser.finalize()
    except ClientDisconnect:
        reader.discard()
        raise APIError(400, "incomplete_upload", "the client disconnected before the upload finished") from None
    except MultipartParseError as e:
        reader.discard()
        raise APIError(400, "bad_multipart", f"malformed multipart body: {e}") from None
    except BaseException:
        reader.discard()
        raise
    if reader.sink is not None:  # the body ended inside a file part
        reader.discard()
        raise APIError(400, "bad_multipart", "malformed multipart body: it ends inside a file part")
    return reader.uploads
