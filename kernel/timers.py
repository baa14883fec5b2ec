"""Deadlines and leases, enforced by every replica (DESIGN §4.7, ``spec/kernel.md`` §13).

Each replica keeps an index of when each live execution next has something due —
its execution deadline, its active steps' deadlines, its session's lease — fed by
watches on the ``<prefix>-executions`` and ``<prefix>-leases`` buckets, so the
index does not depend on which replica wrote a deadline. A loop ticking every
``timer_interval`` seconds (0.25 s by default) hands what is due to the kernel,
which decides on the current log (:func:`kernel.machine.expire`) and appends.
Every replica may fire the same deadline; the append guard lets one win and
turns the others into no-ops, so a deadline fires as long as any replica lives.

Known gap: a replica that dies after appending a transition but before writing
its record leaves the bucket behind the stream; a deadline created by that
transition is indexed only once anything touches the execution again (every
access repairs the record from the stream).
"""

from __future__ import annotations

import asyncio
import heapq
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import msgspec
import structlog
from nats.js.kv import KeyValue

from schemas.records import (
    TERMINAL_EXECUTION, TERMINAL_STEP, ExecutionStatus, LeaseRecord, Session, StepStatus,
)

from . import machine
from ._watch import watch_bucket

__all__ = ["Timers"]

log = structlog.get_logger("rebuno.kernel.timers")

_RETRY_AFTER = timedelta(seconds=1)
_LEASE_DECODER = msgspec.json.Decoder(LeaseRecord)


class _StepView(msgspec.Struct):
    status: StepStatus
    deadline: datetime

    @property
    def active(self) -> bool:
        return self.status not in TERMINAL_STEP


class _RecordView(msgspec.Struct):
    """The part of an execution record deadlines depend on. Every replica decodes every record
    write; decoding only these fields (the rest is skipped) keeps that cheap."""

    status: ExecutionStatus
    created_at: datetime
    session: Session | None = None
    steps: dict[str, _StepView] = {}

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_EXECUTION

    def active_steps(self) -> list[_StepView]:
        return [s for s in self.steps.values() if s.active]


_VIEW_DECODER = msgspec.json.Decoder(_RecordView)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Timers:
    """The deadline index and firing loop of one replica.

    Args:
        executions: the ``<prefix>-executions`` bucket.
        leases: the ``<prefix>-leases`` bucket.
        limits: the replica's timeouts (execution timeout, step timeout).
        fire: called with an execution id when something of it is due; it decides on the
            current log and appends. Exceptions are logged and the execution is checked
            again a second later.
        interval: seconds between checks.
    """

    def __init__(self, executions: KeyValue, leases: KeyValue, limits: machine.Limits,
                 fire: Callable[[str], Awaitable[None]], interval: float = 0.25,
                 default_lease: timedelta = timedelta(seconds=30)) -> None:
        self.executions = executions
        self.default_lease = default_lease
        self.started_at = _now()
        self.leases = leases
        self.limits = limits
        self.fire = fire
        self.interval = interval
        self._base: dict[str, tuple[datetime | None, str]] = {}
        """execution id → (next due of execution and step deadlines, current session id)."""
        self._leases: dict[str, machine.Lease] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._firing: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._fires: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(self.executions, self._on_record), name="timers-records"),
                       asyncio.create_task(self._watch(self.leases, self._on_lease), name="timers-leases"),
                       asyncio.create_task(self._loop(), name="timers-loop")]

    async def stop(self) -> None:
        for task in (*self._tasks, *self._fires):
            task.cancel()
        pending = {*self._tasks, *self._fires}
        if pending:
            await asyncio.wait(pending, timeout=5)
        self._tasks = []

    def due(self, execution_id: str) -> datetime | None:
        """When the execution next has something due, as this replica knows it (None: nothing)."""
        base, session_id = self._base.get(execution_id, (None, ""))
        lease = self._leases.get(execution_id)
        times = [t for t in (base, lease.expires_at if lease and session_id and lease.session_id == session_id
                             else None) if t is not None]
        return min(times) if times else None

    def lease(self, execution_id: str) -> machine.Lease | None:
        return self._leases.get(execution_id)

    def effective_lease(self, stored: LeaseRecord) -> machine.Lease:
        """A stored lease as this replica enforces it: never before one lease length has passed
        since the replica started. Agents keep renewing while no kernel answers, so after an
        outage of every replica, live agents get a lease's time to renew before anything of
        theirs is reset (without this, every running execution was reset on restart)."""
        length = timedelta(milliseconds=stored.lease_ms) if stored.lease_ms else self.default_lease
        return machine.Lease(session_id=stored.session_id,
                             expires_at=max(stored.expires_at, self.started_at + length))

    # -- index ----------------------------------------------------------------------
    async def _watch(self, kv: KeyValue, apply: Callable[[str, bytes | None], None]) -> None:
        def on_entry(entry: Any) -> None:
            if entry is not None:
                deleted = entry.operation in ("DEL", "PURGE") or not entry.value
                apply(entry.key, None if deleted else entry.value)

        await watch_bucket(kv, on_entry, what=f"timer index ({kv._name})")

    def _on_record(self, execution_id: str, value: bytes | None) -> None:
        if value is None:
            self._base.pop(execution_id, None)
            return
        try:
            rec = _VIEW_DECODER.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # repaired from the stream when next touched
        if rec.terminal:
            self._base.pop(execution_id, None)
            self._leases.pop(execution_id, None)
            return
        self._base[execution_id] = (machine.next_due(rec, self.limits, None),  # type: ignore[arg-type]
                                    rec.session.id if rec.session else "")
        self._schedule(execution_id)

    def _on_lease(self, execution_id: str, value: bytes | None) -> None:
        if value is None:
            self._leases.pop(execution_id, None)
            return
        try:
            lease = _LEASE_DECODER.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self._leases[execution_id] = self.effective_lease(lease)
        self._schedule(execution_id)

    def _schedule(self, execution_id: str, at: datetime | None = None) -> None:
        when = at or self.due(execution_id)
        if when is not None:
            heapq.heappush(self._heap, (when, execution_id))

    # -- firing ---------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = _now()
            while self._heap and self._heap[0][0] <= now:
                when, execution_id = heapq.heappop(self._heap)
                current = self.due(execution_id)
                if current is None or current > now or execution_id in self._firing:
                    continue  # stale heap entry (rescheduled, finished) or already being handled
                self._firing.add(execution_id)
                task = asyncio.create_task(self._fire(execution_id))
                self._fires.add(task)
                task.add_done_callback(self._fires.discard)

    async def _fire(self, execution_id: str) -> None:
        try:
            await self.fire(execution_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("could not fire a deadline; trying again", execution_id=execution_id, error=repr(exc))
        finally:
            self._firing.discard(execution_id)
        # Whatever the outcome, look again shortly: a record update will usually have
        # rescheduled it already; this covers a firing that changed nothing.
        self._schedule(execution_id, _now() + _RETRY_AFTER)
