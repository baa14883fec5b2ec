"""One way to follow a key-value bucket for as long as a replica runs."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import structlog
from nats.js.kv import KeyValue

__all__ = ["watch_bucket"]

log = structlog.get_logger("rebuno.kernel")


async def watch_bucket(kv: KeyValue, on_entry: Callable[[Any], None], *, what: str, keys: str = ">") -> None:
    """Call ``on_entry`` with every entry of ``kv`` matching ``keys`` (latest values first, then
    each update; ``None`` marks the end of the initial values), until cancelled.

    A failed watch is logged and opened again a second later. A cancellation always ends it,
    also when nats-py turns a cancellation during the watch's setup into another error
    (swallowing that kept a stopping replica's task alive forever).
    """
    while True:
        try:
            watcher = await kv.watch(keys)
            async for entry in watcher:
                on_entry(entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep watching whatever happens
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError() from exc
            log.warning("bucket watch failed; restarting", watch=what, error=repr(exc))
            await asyncio.sleep(1.0)
