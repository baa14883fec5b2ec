"""Follow one execution's event log in order, gap-free (DESIGN §3.3).

Subscribes to ``<prefix>.events.<execution_id>`` *before* reading the backlog
through ``executions.events``, so nothing published in between is missed;
detects gaps by ``sequence`` and refills them from the stream; polls the
backlog after ``poll_interval`` seconds of silence, so a message the core
subscription dropped is still seen.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import msgspec
from nats.aio.client import Client as NATS

from schemas import api, codec
from schemas.events import Event
from schemas.subjects import Names

from ._connection import Requester

__all__ = ["follow_events"]

_PAGE = 1000


async def follow_events(nc: NATS, requester: Requester, names: Names, execution_id: str, *,
                        after_sequence: int = 0, stop_at_terminal: bool = True,
                        poll_interval: float = 5.0, backfill: bool = True) -> AsyncIterator[Event]:
    """Yield the execution's events with ``sequence > after_sequence``, ascending, forever
    (or up to and including the first terminal event when ``stop_at_terminal``).

    With ``backfill=False`` the first read of the backlog is skipped: for callers that know
    the log ends at ``after_sequence`` and only need what comes next (a gap or silence still
    triggers a read).

    Raises:
        APIError: the kernel refused the backlog read (e.g. invalid id).
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def on_msg(msg) -> None:
        queue.put_nowait(msg.data)

    sub = await nc.subscribe(names.feed(execution_id), cb=on_msg, pending_msgs_limit=65536)
    last = after_sequence
    try:
        while True:
            if backfill:
                backfill = False
                while True:
                    page = await requester.call("executions.events", api.ListEvents(
                        execution_id=execution_id, after_sequence=last, limit=_PAGE))
                    for event in page.events:
                        if event.sequence != last + 1:
                            continue
                        last = event.sequence
                        yield event
                        if stop_at_terminal and event.terminal:
                            return
                    if len(page.events) < _PAGE:
                        break
            try:
                data = await asyncio.wait_for(queue.get(), poll_interval)
            except asyncio.TimeoutError:
                backfill = True
                continue
            try:
                batch = codec.decode_batch(data)
            except msgspec.DecodeError:
                continue
            if not batch.events or batch.events[-1].sequence <= last:
                continue
            if batch.events[0].sequence > last + 1:
                backfill = True  # gap: refill from the stream, this batch included
                continue
            for event in batch.events:
                if event.sequence <= last:
                    continue
                last = event.sequence
                yield event
                if stop_at_terminal and event.terminal:
                    return
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - connection may be closing
            pass
