"""SIGHUP reloads the predictors (as `POST /v1/admin/reload` does): the operator's `kill -HUP <pid>` after
copying a predictor folder into SNE_PREDICTORS_DIR."""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from app.registry import Registry

log = logging.getLogger("sne.reload")


def reload_on_sighup(registry: Registry) -> Callable[[], None]:
    """Install the handler on the running loop; returns the function that removes it. Where signals cannot
    be handled (not the main thread, no SIGHUP on this platform) only the admin route reloads."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    async def run() -> None:
        try:
            result = await registry.reload()
        except Exception:
            log.exception("reload on SIGHUP failed; the predictors served before keep serving")
            return
        log.info("reload on SIGHUP: loaded %s, unchanged %s, removed %s, %d problem(s)",
                 result.loaded, result.unchanged, result.removed, len(result.problems))

    def on_hup() -> None:
        task = loop.create_task(run(), name="sighup-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sig = getattr(signal, "SIGHUP", None)
    try:
        if sig is None:
            raise NotImplementedError("no SIGHUP on this platform")
        loop.add_signal_handler(sig, on_hup)
    except (NotImplementedError, RuntimeError, ValueError) as e:
        log.info("SIGHUP reload not available here (%s); use POST /v1/admin/reload", e)
        return lambda: None

    def unhook() -> None:
        loop.remove_signal_handler(sig)

    return unhook
