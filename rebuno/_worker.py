"""What agents and runners share: a durable pull consumer on a work-queue stream, pulled
only as far as free capacity allows, with leases kept alive by in-progress acks
(DESIGN §3.2)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any, Callable, Coroutine

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas.subjects import Names

from schemas.ids import validate_token_id

from ._config import Settings
from ._connection import Requester, backoff_delay, connect
from ._logging import configure_logging
from .errors import ClientClosedError

__all__ = ["WorkLoop", "WorkerInstance", "keep_lease", "install_signal_handlers", "DEFAULT_LEASE_S"]

DEFAULT_LEASE_S = 30.0
"""Ack wait of notices and jobs: an instance silent this long loses its work (seconds)."""


async def keep_lease(msg: Msg, every: float) -> None:
    """Send in-progress acks every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):
            await msg.in_progress()


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop``; returns a function that removes the handlers."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def remove() -> None:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    return remove


class WorkLoop:
    """Pull messages from one durable consumer and hand each to ``handle`` in its own task,
    never holding more than ``max_concurrency`` at once.

    Args:
        nc: connection.
        stream: the work-queue stream (``<PREFIX>_ASSIGN`` / ``<PREFIX>_JOBS``).
        durable: the shared durable consumer name (``agent-<id>`` / ``runner-<id>``).
        filter_subject: the instance's subject (``<prefix>.assign.<agent_id>``...).
        handle: coroutine run for each message; it must ack/nak the message itself.
        max_concurrency: messages handled at once by this instance.
        lease: ack wait in seconds.
    """

    def __init__(self, nc: NATS, *, stream: str, durable: str, filter_subject: str,
                 handle: Callable[[Msg], Coroutine[Any, Any, None]], max_concurrency: int, lease: float,
                 reconnect_delay: float, max_reconnect_delay: float, log: structlog.BoundLogger) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.nc = nc
        self.js = nc.jetstream()
        self.stream, self.durable, self.filter_subject = stream, durable, filter_subject
        self.handle = handle
        self.max_concurrency = max_concurrency
        self.lease = lease
        self.reconnect_delay, self.max_reconnect_delay = reconnect_delay, max_reconnect_delay
        self.log = log
        self.tasks: set[asyncio.Task] = set()

    async def _bind(self, stop: asyncio.Event):
        failures = 0
        while not stop.is_set():
            try:
                await self.js.add_consumer(self.stream, ConsumerConfig(
                    durable_name=self.durable, filter_subject=self.filter_subject, ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL, ack_wait=self.lease, max_deliver=-1, max_ack_pending=-1,
                    description="Rebuno shared work consumer"))
                return await self.js.pull_subscribe_bind(self.durable, self.stream)
            except Exception as exc:  # noqa: BLE001 - stream missing until a kernel starts, broker away...
                failures += 1
                delay = backoff_delay(self.reconnect_delay, failures, self.max_reconnect_delay)
                self.log.warning("work queue not ready; is a kernel running?", stream=self.stream,
                                 error=repr(exc), retry_in_s=round(delay, 2))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until ``stop`` is set. Fetch errors (broker away) back off and re-bind."""
        psub = await self._bind(stop)
        failures = 0
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while psub is not None and not stop.is_set():
                if len(self.tasks) >= self.max_concurrency:
                    await asyncio.wait({*self.tasks, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await psub.fetch(1, timeout=1.0)
                    failures = 0
                except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.js.errors.FetchTimeoutError):
                    continue
                except Exception as exc:  # noqa: BLE001
                    failures += 1
                    delay = backoff_delay(self.reconnect_delay, failures, self.max_reconnect_delay)
                    self.log.warning("pull failed; retrying", error=repr(exc), retry_in_s=round(delay, 2))
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_wait), delay)
                    if isinstance(exc, nats.js.errors.NotFoundError):
                        psub = await self._bind(stop)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self.handle(msg))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        finally:
            stop_wait.cancel()
            if psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()

    async def drain(self, grace: float) -> None:
        """Give in-flight work ``grace`` seconds, then cancel it (its handlers nak for a quick handover)."""
        if self.tasks:
            done, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)


class WorkerInstance:
    """What an Agent and a Runner instance share: connect (retrying with backoff), pull from
    their work queue until stopped, then hand unfinished work back and disconnect."""

    settings: Settings
    names: Names
    consumer_id: str
    max_concurrency: int
    reconnect_delay: float
    max_reconnect_delay: float
    request_timeout: float
    lease: float
    log: structlog.BoundLogger
    _stop: asyncio.Event
    _nc: NATS | None
    _requester: Requester | None
    ready: asyncio.Event

    def _init_instance(self, kind: str, instance_id: str, *, kernel_url: str | None, api_key: str | None,
                       prefix: str | None, consumer_id: str, max_concurrency: int, reconnect_delay: float,
                       max_reconnect_delay: float, request_timeout: float, lease: float) -> str:
        """Validate the id, resolve settings, and set the fields both kinds share; returns the id.

        Raises:
            ValueError: empty or invalid id (``<kind>_id``), invalid URL or prefix.
        """
        if not instance_id:
            raise ValueError(f"{kind}_id must not be empty")
        configure_logging()  # before binding loggers, unless the application configured structlog
        validate_token_id(f"{kind}_id", instance_id)
        self.settings = Settings.resolve(kernel_url, api_key, prefix)
        self.names = Names(self.settings.prefix)
        self.consumer_id = consumer_id or f"{instance_id}-{uuid.uuid4().hex[:8]}"
        self.max_concurrency = max_concurrency
        self.reconnect_delay, self.max_reconnect_delay = reconnect_delay, max_reconnect_delay
        self.request_timeout = request_timeout
        self.lease = lease
        self.log = structlog.get_logger(f"rebuno.{kind}").bind(**{f"{kind}_id": instance_id},
                                                               consumer_id=self.consumer_id)
        self._stop = asyncio.Event()
        self._nc = None
        self._requester = None
        self.ready = asyncio.Event()
        return instance_id

    async def _handle(self, msg: Msg) -> None:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    async def _on_connected(self) -> list[asyncio.Task]:
        """Work to do once connected; returns background tasks to cancel at shutdown."""
        return []

    async def _on_stopped(self) -> None:
        """Cleanup after the work loop ended."""

    async def _serve(self, kind: str, *, stream: str, durable: str, subject: str) -> None:
        self._stop = asyncio.Event() if self._stop.is_set() else self._stop
        remove_handlers = install_signal_handlers(self._stop)
        try:
            self._nc = await connect(self.settings, f"rebuno-{kind} {self.consumer_id}",
                                     reconnect_delay=self.reconnect_delay,
                                     max_reconnect_delay=self.max_reconnect_delay, retry_initial=True, stop=self._stop)
        except ClientClosedError:
            remove_handlers()
            return
        self._requester = Requester(self._nc, self.names, timeout=self.request_timeout)
        background = await self._on_connected()
        loop = WorkLoop(self._nc, stream=stream, durable=durable, filter_subject=subject, handle=self._handle,
                        max_concurrency=self.max_concurrency, lease=self.lease,
                        reconnect_delay=self.reconnect_delay, max_reconnect_delay=self.max_reconnect_delay,
                        log=self.log)
        try:
            await loop.run(self._stop)
        finally:
            for task in background:
                task.cancel()
            await loop.drain(grace=5.0)
            remove_handlers()
            await self._on_stopped()
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self.ready.clear()
            self.log.info(f"{kind} instance stopped")
