"""Write a large upload to its spool file (and hash it) in a background thread, so the event loop only receives.

sha256 on large blocks and file writes both release the GIL: with the writing in its own thread, receiving
the next block overlaps with hashing and writing the last ones (on the 1.1 B-parameter upload of the
real-checkpoint benchmark they were 4.6 s of work on the event loop). Blocks are written in arrival order by
one worker; at most `depth` wait, so memory stays bounded and a slow disk slows the sender down (the loop
awaits `drain`). A storage failure (disk full, file size limit, unwritable directory) is a 507 to the client.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.errors import APIError, Reason

#: blocks (one per received chunk, up to a few hundred KiB each) that may wait for the writer
DEPTH = 16


def storage_error(e: OSError) -> APIError:
    return APIError(
        507, Reason.insufficient_storage,
        f"the server could not store the upload ({e.strerror or e}); nothing was kept (SNE_UPLOAD_DIR)",
    )


class SpoolWriter:
    """One spooled upload: a temporary file written, and optionally hashed, block by block, in order."""

    def __init__(self, upload_dir: Path | None, digest: Any) -> None:
        try:
            fd, name = tempfile.mkstemp(prefix="sne-upload-", suffix=".safetensors", dir=upload_dir)
        except OSError as e:
            raise storage_error(e) from None
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._digest = digest  # a hashlib object; only this writer's thread touches it from now on
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sne-spool")
        self._pending: deque[Future[None]] = deque()

    def _write(self, data: bytes, hash_it: bool) -> None:
        if hash_it:
            self._digest.update(data)
        self._file.write(data)

    def submit(self, data: bytes, hash_it: bool = True) -> None:
        """Queue `data` (hashed first unless it already was); `drain` bounds how many wait."""
        self._pending.append(self._pool.submit(self._write, data, hash_it))

    async def drain(self, depth: int = DEPTH) -> None:
        """Wait until at most `depth` blocks are queued; a failed write raises here (as a 507)."""
        while len(self._pending) > depth:
            try:
                await asyncio.wrap_future(self._pending.popleft())
            except OSError as e:
                raise storage_error(e) from None

    def close(self) -> None:
        """Wait for every queued block and close the file (it stays on disk: the upload owns it now)."""
        try:
            while self._pending:
                self._pending.popleft().result()
            self._file.close()
        except OSError as e:
            self.abort()
            raise storage_error(e) from None
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Drop what is queued, wait for the block being written, close and delete the file."""
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self._file.close()
        except OSError:
            pass  # the buffered tail could not be written: the file is deleted anyway
        self.path.unlink(missing_ok=True)
