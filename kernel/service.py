"""The kernel actor: serves ``<prefix>.api.>`` in queue group ``kernel`` (DESIGN §3.1).

Every mutation of an execution is a transaction (``_transact``): decide on the
current record (``kernel.machine``), append the transition's events as one
batch guarded by the log's last stream sequence, fold them into the record
(``kernel.state``), compare-and-set the record, then publish the jobs and
notices the transition produced. A failed guard means another replica moved
the log: the record is repaired from the stream and the decision is made
again. No input can crash the replica: every failure becomes an ``Error`` reply.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import msgspec
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import api, codec
from schemas.events import EventBatch, ExecutionResumed
from schemas.ids import InvalidIdError, new_id
from schemas.records import ExecutionRecord, ExecutionStatus, LeaseRecord
from schemas.subjects import HEADER_SCHEMA, HEADER_TYPE, KERNEL_QUEUE, Names

from . import machine
from .config import KernelConfig
from .errors import KernelError
from ._watch import watch_bucket
from .policy import Policy, PolicyError
from .policy_store import ACTIVE_KEY, bundle_policy
from .ratelimit import RateLimitUnavailable, RateLimiter
from .state import FoldError, apply_batch, replay_calls
from .directory import ToolDirectory
from .store import SequenceConflict, Store
from .timers import Timers

__all__ = ["Kernel"]

log = structlog.get_logger("rebuno.kernel")

_ERROR_HEADERS = {HEADER_TYPE: "Error", HEADER_SCHEMA: str(codec.SCHEMA_VERSION)}
_CACHE_SIZE = 10_000
_MAX_TRANSACT_ATTEMPTS = 10
_HEADROOM = 1024
"""Bytes kept free under the broker's max payload for headers and record growth."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _encode_cursor(rec_created: datetime, rec_id: str) -> str:
    return base64.urlsafe_b64encode(f"{rec_created.isoformat()}|{rec_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, _, rid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(ts), rid
    except Exception as exc:  # noqa: BLE001
        raise KernelError("VALIDATION_ERROR", f"invalid cursor {cursor[:64]!r}") from exc


class Kernel:
    """One kernel replica.

    Args:
        nc: a connected NATS client (the replica does not own it).
        names: broker names for the deployment prefix.
        policy: the policy engine in force.
        config: timeouts and resource settings.
    """

    def __init__(self, nc: NATS, names: Names, policy: Policy, config: KernelConfig | None = None) -> None:
        self.nc = nc
        self.names = names
        self.policy = policy
        self.config = config or KernelConfig()
        self.kernel_id = self.config.kernel_id or f"kernel-{new_id()[-12:]}"
        c = self.config
        self.limits = machine.Limits(step_timeout=c.step_timeout, execution_timeout=c.execution_timeout,
                                     retry_base_delay=c.retry_base_delay, retry_max_delay=c.retry_max_delay)
        self.store = Store(nc, names, self.config)
        self.directory = ToolDirectory(self.store)
        self.started_at = _now()
        self._cache: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._saves: dict[str, asyncio.Task] = {}
        self._rr = itertools.count()
        self._sub: Any = None
        self.timers: Timers | None = None
        self.limiter: RateLimiter | None = None
        self._policy_watch: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(self.config.request_concurrency)
        self.log = log.bind(kernel_id=self.kernel_id)
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "executions.create": self._create, "executions.get": self._get, "executions.list": self._list,
            "executions.cancel": self._cancel, "executions.signal": self._signal,
            "executions.events": self._events, "tools.list": self._tools_list, "agent.claim": self._claim,
            "agent.intent": self._intent, "agent.step_result": self._step_result, "agent.renew": self._renew,
            "runner.register": self._register, "runner.started": self._runner_started,
            "runner.result": self._runner_result, "health": self._health,
        }

    # ------------------------------------------------------------ lifecycle --
    async def start(self) -> None:
        """Create streams and buckets (idempotent), load the tool directory, start serving."""
        await self.store.start()
        await self.directory.start()
        self.limiter = RateLimiter(self.store.kv["ratelimit"])
        await self._adopt_applied_policy()
        self._policy_watch = asyncio.create_task(self._watch_policy(), name="rebuno-kernel-policy-watch")
        self.timers = Timers(self.store.kv["executions"], self.store.kv["leases"], self.limits, self._fire,
                             self.config.timer_interval, self.config.agent_lease)
        await self.timers.start()
        self._sub = await self.nc.subscribe(self.names.api_wildcard, queue=KERNEL_QUEUE, cb=self._on_msg,
                                            pending_msgs_limit=65536)
        self.log.info("kernel replica serving", subject=self.names.api_wildcard, queue=KERNEL_QUEUE,
                      policy=self.policy.describe(), policy_version=self.policy.version)
        for warning in getattr(self.policy, "warnings", ()):
            self.log.warning("policy warning", warning=warning)

    async def stop(self) -> None:
        """Stop taking requests, finish the ones in flight (up to 10 s), stop background work."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        if self._saves:
            await asyncio.wait(set(self._saves.values()), timeout=10)
        if self.timers is not None:
            await self.timers.stop()
        if self._policy_watch is not None:
            self._policy_watch.cancel()
            await asyncio.wait({self._policy_watch}, timeout=5)
        await self.directory.stop()
        self.log.info("kernel replica stopped")

    # ------------------------------------------------------------- dispatch --
    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, msg: Msg) -> None:
        op = self.names.api_operation(msg.subject)
        try:
            if op is None:
                raise KernelError("NOT_FOUND", f"unknown API subject {msg.subject}")
            try:
                req = codec.REQUEST_DECODERS[op].decode(msg.data)
            except msgspec.ValidationError as exc:
                raise KernelError("VALIDATION_ERROR", f"invalid {op} request: {exc}") from exc
            except msgspec.DecodeError as exc:
                raise KernelError("VALIDATION_ERROR", f"malformed {op} request: {exc}") from exc
            reply = await self._handlers[op](req)
            data, headers = codec.encode(reply), codec.type_headers(reply)
        except KernelError as err:
            data, headers = self._error(err), _ERROR_HEADERS
        except (InvalidIdError, msgspec.ValidationError) as exc:
            data, headers = self._error(KernelError("VALIDATION_ERROR", str(exc))), _ERROR_HEADERS
        except FoldError as exc:
            self.log.error("execution log is tainted", op=op, error=str(exc))
            data, headers = self._error(KernelError("CONFLICT", f"execution is tainted: {exc}")), _ERROR_HEADERS
        except Exception as exc:  # noqa: BLE001 - invariant 6: never crash on input
            self.log.exception("request failed", op=op, error=repr(exc))
            data, headers = self._error(KernelError("INTERNAL_ERROR", "internal error")), _ERROR_HEADERS
        try:
            await self.nc.publish(msg.reply, data, headers=headers)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("could not send reply", op=op, error=repr(exc))

    @staticmethod
    def _error(err: KernelError) -> bytes:
        return codec.encode(api.Error(code=err.code, message=err.message, details=err.details))  # type: ignore[arg-type]

    # ---------------------------------------------------------- transactions --
    @contextlib.asynccontextmanager
    async def _locked(self, execution_id: str):
        """Serialize this replica's transactions on one execution (never across executions)."""
        lock, users = self._locks.get(execution_id) or (asyncio.Lock(), 0)
        self._locks[execution_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[execution_id]
            if users <= 1:
                del self._locks[execution_id]
            else:
                self._locks[execution_id] = (lock, users - 1)

    def _remember(self, execution_id: str, data: bytes, revision: int) -> None:
        self._cache[execution_id] = (data, revision)
        self._cache.move_to_end(execution_id)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _load(self, execution_id: str, *, fresh: bool = False) -> tuple[ExecutionRecord, int]:
        """The record and its bucket revision.

        Not ``fresh``: this replica's cached copy (its own writes; a stale copy is caught by
        the append guard). ``fresh``: the bucket's record brought up to the event stream —
        other replicas write records after replying, so only the stream is current
        (DESIGN §3.4: the stream wins). Used before refusing a request or answering a read.

        Raises:
            KernelError: NOT_FOUND when neither the bucket nor the stream knows the id.
        """
        pending = self._saves.get(execution_id)
        if pending is not None:  # this replica's own write of the record is still in flight
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        cached = None if fresh else self._cache.get(execution_id)
        if cached is None:
            return await self._repair(execution_id)
        data, revision = cached
        return codec.RECORD_DECODER.decode(data), revision

    async def _stored(self, execution_id: str) -> tuple[ExecutionRecord | None, int]:
        """The bucket's record and revision; an undecodable value counts as missing (it is
        rebuilt from the stream) rather than breaking every read of the execution."""
        stored = await self.store.get_record(execution_id)
        if stored is None:
            return None, 0
        try:
            return codec.RECORD_DECODER.decode(stored[0]), stored[1]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.error("undecodable execution record; rebuilding it from the stream",
                           execution_id=execution_id, error=str(exc))
            return None, stored[1]

    async def _repair(self, execution_id: str) -> tuple[ExecutionRecord, int]:
        """Bring the record up to the stream (DESIGN §3.4: the stream wins) and store it if it
        was behind."""
        rec, revision = await self._stored(execution_id)
        changed = False
        async for seq, batch in self.store.batches(execution_id, rec.stream_seq if rec else 0):
            rec = apply_batch(rec, batch, seq)
            changed = True
        if rec is None:
            raise KernelError("NOT_FOUND", f"not found: execution {execution_id}", {"execution_id": execution_id})
        data = codec.encode(rec)
        if changed:
            revision = await self._save(execution_id, rec, data, revision)
        else:
            self._remember(execution_id, data, revision)
        return rec, revision

    async def _save(self, execution_id: str, rec: ExecutionRecord, data: bytes, revision: int) -> int:
        """CAS the record; when another replica wrote meanwhile keep whichever is further along."""
        for _ in range(_MAX_TRANSACT_ATTEMPTS):
            try:
                revision = await self.store.put_record(execution_id, data, revision)
                self._remember(execution_id, data, revision)
                return revision
            except nats.js.errors.KeyWrongLastSequenceError:
                other, other_revision = await self._stored(execution_id)
                if other is not None and other.stream_seq >= rec.stream_seq:
                    self._cache.pop(execution_id, None)  # theirs is as far along: read it next time
                    return other_revision
                revision = other_revision
        raise KernelError("SERVICE_UNAVAILABLE", f"could not store record of execution {execution_id}")

    def _save_later(self, execution_id: str, rec: ExecutionRecord, revision: int) -> None:
        """Write the record in the background: the events are stored, so the caller may have its
        reply now (DESIGN §9). This replica's next transaction on the execution waits for the
        write; other replicas that read the older record fail their append guard and repair
        from the stream; a crash before the write is repaired the same way."""
        data = codec.encode(rec)
        self._remember(execution_id, data, revision)
        task = asyncio.create_task(self._save(execution_id, rec, data, revision))
        self._saves[execution_id] = task

        def done(t: asyncio.Task) -> None:
            if self._saves.get(execution_id) is t:
                del self._saves[execution_id]
            if not t.cancelled() and t.exception() is not None:
                self._cache.pop(execution_id, None)  # reload from the bucket (and repair) next time
                self.log.warning("record write failed; it will be repaired from the stream",
                                 execution_id=execution_id, error=repr(t.exception()))

        task.add_done_callback(done)

    def _check_size(self, what: str, size: int) -> None:
        """Refuse a transition whose message would not fit the broker's max payload (minus headroom
        for headers): the event batch, or the record it grows into (``size`` in bytes)."""
        limit = self.nc.max_payload - _HEADROOM
        if size > limit:
            raise KernelError("VALIDATION_ERROR", f"{what} would be {size} bytes, over the broker's max payload "
                              f"of {self.nc.max_payload} bytes less {_HEADROOM} bytes of headroom",
                              {"size_bytes": size, "limit_bytes": limit})

    async def _transact(self, execution_id: str, decide: Callable[[ExecutionRecord], machine.Decision],
                        request_key: str = "") -> tuple[ExecutionRecord, machine.Decision]:
        """Decide, append, fold, store, publish — retried on a lost append race.

        Returns:
            the record after the transition, and the decision.

        Raises:
            KernelError: from the decision, or NOT_FOUND / VALIDATION_ERROR / SERVICE_UNAVAILABLE.
        """
        async with self._locked(execution_id):
            fresh = False
            for _ in range(_MAX_TRANSACT_ATTEMPTS):
                rec, revision = await self._load(execution_id, fresh=fresh)
                try:
                    decision = decide(rec)
                except KernelError:
                    if fresh:
                        raise
                    fresh = True  # never refuse on a cached record: another replica may have moved it
                    continue
                if not decision.events:
                    if not fresh:
                        fresh = True
                        continue
                    return rec, decision
                batch = EventBatch(execution_id=execution_id, events=decision.events, request_key=request_key)
                data = codec.encode(batch)
                self._check_size("the event batch", len(data))
                self._check_size(f"the record of execution {execution_id}",
                                 len(data) + len(self._cache.get(execution_id, (b"", 0))[0]))
                try:
                    seq = await self.store.append(execution_id, data, rec.stream_seq)
                except SequenceConflict:
                    await self._repair(execution_id)
                    fresh = False  # _repair refreshed the cache
                    continue
                apply_batch(rec, batch, seq)
                self._save_later(execution_id, rec, revision)
                if decision.notices or decision.jobs:
                    await self.store.publish_all(decision.notices, decision.jobs, decision.notice_msg_id)
                return rec, decision
        raise KernelError("SERVICE_UNAVAILABLE", f"execution {execution_id} is too contended; retry")

    # -------------------------------------------------------------- handlers --
    async def _create(self, req: api.CreateExecution) -> Any:
        execution_id = req.execution_id or new_id()
        now = _now()
        decision = machine.create(execution_id, req, now)
        batch = EventBatch(execution_id=execution_id, events=decision.events, request_key=execution_id)
        data = codec.encode(batch)
        self._check_size("the execution's first event", len(data))
        self._check_size("the execution's record", 2 * len(data))
        async with self._locked(execution_id):
            try:
                seq = await self.store.append(execution_id, data, 0)
            except SequenceConflict:
                rec, _ = await self._repair(execution_id)
                if rec.agent_id != req.agent_id or rec.input != req.input or (rec.labels or None) != (req.labels or None):
                    raise KernelError("CONFLICT", f"execution {execution_id} already exists with other content") from None
                if rec.status is ExecutionStatus.PENDING:  # the first create may have died before enqueueing
                    await self.store.publish_all(decision.notices[:1], [], notice_msg_id=execution_id)
                return rec.view()
            rec = apply_batch(None, batch, seq)
            self._save_later(execution_id, rec, 0)
            await self.store.publish_all(decision.notices, [], notice_msg_id=execution_id)
        self.log.info("execution created", execution_id=execution_id, agent_id=req.agent_id)
        return rec.view()

    async def _get(self, req: api.GetExecution) -> Any:
        """The record, brought up to the stream: a reader who saw an event must see its effect."""
        rec, _ = await self._load(req.execution_id, fresh=True)
        return rec.view()

    async def _list(self, req: api.ListExecutions) -> Any:
        limit = 50 if req.limit == 0 else min(req.limit, 200)
        rows = [r for r in await self.store.all_records()
                if (not req.status or r.status.value == req.status)
                and (not req.agent_id or r.agent_id == req.agent_id)
                and all((r.labels or {}).get(k) == v for k, v in req.labels.items())]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        if req.cursor:
            after = _decode_cursor(req.cursor)
            rows = [r for r in rows if (r.created_at, r.id) < after]
        page = rows[:limit]
        cursor = _encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else ""
        return api.ListExecutionsReply(executions=[r.summary() for r in page], next_cursor=cursor)

    async def _events(self, req: api.ListEvents) -> Any:
        limit = 100 if req.limit == 0 else min(req.limit, 1000)
        out: list = []
        try:
            rec, _ = await self._load(req.execution_id, fresh=True)
        except KernelError:
            return api.EventsReply(events=[])  # unknown execution: empty (spec/kernel.md §18)
        start = 0  # read from the last mark at or before the wanted sequence, not from the start
        for first_sequence, stream_seq in rec.batch_marks:
            if first_sequence > req.after_sequence + 1:
                break
            start = stream_seq - 1
        async for _, batch in self.store.batches(req.execution_id, start):
            for event in batch.events:
                if event.sequence > req.after_sequence:
                    out.append(event)
            if len(out) >= limit:
                break
        out = out[:limit]
        return api.EventsReply(events=out, latest_sequence=out[-1].sequence if out else 0)

    async def _cancel(self, req: api.CancelExecution) -> Any:
        rec, decision = await self._transact(req.execution_id, lambda r: machine.cancel(r, req, _now()),
                                             req.request_id)
        if decision.events:
            self.log.info("execution cancelled", execution_id=rec.id)
        return rec.view()

    async def _signal(self, req: api.SignalExecution) -> Any:
        rec, decision = await self._transact(
            req.execution_id, lambda r: machine.signal(r, req, _now(), limits=self.limits, pick_runner=self._pick),
            req.request_id)
        for event in decision.events:
            if isinstance(event, ExecutionResumed):
                self.log.info("execution resumed", execution_id=rec.id, reason=event.payload.reason)
        return decision.reply

    def _pick(self, tool_id: str) -> str | None:
        """A runner for ``tool_id`` from this replica's directory view (round-robin)."""
        candidates = self.directory.cached_runner_ids(tool_id)
        return candidates[next(self._rr) % len(candidates)] if candidates else None

    async def _claim(self, req: api.Claim) -> Any:
        rec, decision = await self._transact(req.execution_id, lambda r: machine.claim(r, req, _now()))
        if rec.session is not None:
            await self._put_lease(rec.id, rec.session.id, self._lease_for(req.lease_ms))
        if decision.events:
            self.log.info("execution claimed", execution_id=rec.id, consumer_id=req.consumer_id,
                     session_id=rec.session.id if rec.session else "", delivery=req.delivery)
        history = machine.history_for_claim(rec, lambda e: len(codec.encode(e)))
        reply = machine.claim_reply(rec, history)
        if any(e.type == "execution.reset" for e in decision.events) or (not decision.events and rec.step_count):
            reply = msgspec.structs.replace(reply, replay=await self._replay(rec))
        return reply

    async def _replay(self, rec: ExecutionRecord) -> dict[str, api.ReplayedCall]:
        """Finished calls of earlier sessions, newest kept when they would not fit one reply."""
        batches = [b async for _, b in self.store.batches(rec.id)]
        calls = {k: api.ReplayedCall(step_id=s, status=st, result=r, error=e)
                 for k, (s, st, r, e) in replay_calls(batches).items()}
        budget = self.nc.max_payload // 2
        size = len(codec.encode(calls))
        while calls and size > budget:  # drop the oldest: those calls simply run again
            size -= len(codec.encode(calls.pop(next(iter(calls)))))
        return calls

    async def _intent(self, req: api.IntentRequest) -> Any:
        candidates: list[str] = []
        if isinstance(req.intent, api.InvokeTool) and req.intent.remote:
            candidates = await self.directory.runner_ids(req.intent.tool_id)

        def pick(_tool_id: str) -> str | None:
            return candidates[next(self._rr) % len(candidates)] if candidates else None

        now = _now()
        policy = self.policy
        limited = await self._rate_limited(req, policy, now)
        rec, decision = await self._transact(
            req.execution_id,
            lambda r: machine.intent(r, req, now, policy=policy, limits=self.limits, pick_runner=pick,
                                     rate_limited=limited),
            req.request_id)
        if decision.error is not None:
            self.log.info("intent denied", execution_id=rec.id, error=decision.error.message)
            raise decision.error
        if decision.reply is not None and getattr(decision.reply, "pending_approval", False) and decision.events:
            self.log.info("tool call held for approval", execution_id=rec.id, step_id=decision.reply.step_id,
                          tool_id=req.intent.tool_id)  # type: ignore[union-attr]
        return decision.reply

    async def _rate_limited(self, req: api.IntentRequest, policy: Any, now: datetime) -> bool:
        """The shared rate-limit verdict for a tool call that would create a step (``spec/policy.md``
        §7): only for an ``allow`` by a rule with a ``rate_limit``. A call that will not create a
        step (wrong session, repeated key, blocked or finished execution) takes no slot."""
        it = req.intent
        if not isinstance(it, api.InvokeTool) or self.limiter is None or not policy.has_rate_limits:
            return False
        def creates_step(r: ExecutionRecord) -> bool:
            return (r.session is not None and r.session.id == req.session_id and r.status is ExecutionStatus.RUNNING
                    and not (it.idempotency_key and it.idempotency_key in r.step_keys))

        rec, _ = await self._load(req.execution_id)
        if not creates_step(rec):  # perhaps only this replica's copy is behind: ask the stream
            rec, _ = await self._load(req.execution_id, fresh=True)
            if not creates_step(rec):
                return False
        decision = policy.evaluate(machine.policy_input(rec, it.tool_id, it.arguments, now))
        limit = decision.rate_limit
        if not decision.allowed or limit is None:
            return False
        try:
            passed = await self.limiter.acquire(rec.agent_id, it.tool_id, limit.max, limit.window_ns, now)
        except RateLimitUnavailable as exc:
            raise KernelError("SERVICE_UNAVAILABLE", f"rate limit could not be checked: {exc}") from exc
        return not passed

    async def _step_result(self, req: api.StepResult) -> Any:
        _, decision = await self._transact(req.execution_id,
                                           lambda r: machine.step_result(r, req, _now(), limits=self.limits))
        return decision.reply

    # ---------------------------------------------------------------- leases --
    def _lease_for(self, lease_ms: int) -> timedelta:
        return timedelta(milliseconds=lease_ms) if lease_ms > 0 else self.config.agent_lease

    async def _put_lease(self, execution_id: str, session_id: str, lease: timedelta) -> None:
        record = LeaseRecord(session_id=session_id, expires_at=_now() + lease,
                             lease_ms=int(lease.total_seconds() * 1000))
        await self.store.kv["leases"].put(execution_id, msgspec.json.encode(record))

    async def _renew(self, req: api.Renew) -> Any:
        """``agent.renew``: extend the session's lease (the session must be current)."""
        rec, _ = await self._load(req.execution_id)
        if rec.session is None or rec.session.id != req.session_id:
            rec, _ = await self._load(req.execution_id, fresh=True)
        if rec.terminal:
            raise KernelError("CONFLICT", f"execution is in terminal state: execution {rec.id} is "
                              f"{rec.status.value}", {"execution_id": rec.id, "status": rec.status.value})
        if rec.session is None or rec.session.id != req.session_id:
            raise KernelError("UNAUTHORIZED", f"session not found: session {req.session_id}",
                              {"execution_id": rec.id, "session_id": req.session_id})
        await self._put_lease(rec.id, req.session_id, self._lease_for(req.lease_ms))
        return api.Ok()

    # ---------------------------------------------------------------- timers --
    async def _fire(self, execution_id: str) -> None:
        """Whatever of ``execution_id`` is due now (called by :class:`Timers` on any replica)."""
        try:
            entry = await self.store.kv["leases"].get(execution_id)
            stored = msgspec.json.decode(entry.value, type=LeaseRecord) if entry.value else None
            lease = self.timers.effective_lease(stored) if stored and self.timers else None
        except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            lease = None
        rec, decision = await self._transact(
            execution_id, lambda r: machine.expire(r, _now(), limits=self.limits, lease=lease))
        for event in decision.events:
            if event.type in ("step.timed_out", "execution.failed", "execution.reset"):
                self.log.info("deadline fired", execution_id=execution_id, event_type=event.type,
                              step_id=event.step_id or None)

    async def _runner_started(self, req: api.RunnerStarted) -> Any:
        rec, decision = await self._transact(req.execution_id, lambda r: machine.runner_started(r, req, _now()))
        return msgspec.structs.replace(decision.reply, last_sequence=rec.last_sequence)

    async def _runner_result(self, req: api.RunnerResult) -> Any:
        _, decision = await self._transact(
            req.execution_id, lambda r: machine.runner_result(r, req, _now(), limits=self.limits))
        return decision.reply

    async def _register(self, req: api.RunnerRegister) -> Any:
        await self.directory.register(req)
        return api.Ok()

    async def _tools_list(self, req: api.ListTools) -> Any:
        return api.ToolsReply(tools=await self.directory.list(req.prefix))

    async def _health(self, req: api.Health) -> Any:
        try:
            await asyncio.wait_for(self.store.js.account_info(), 2.0)
            js_ok = True
        except Exception:  # noqa: BLE001
            js_ok = False
        return api.HealthReply(status="ok" if js_ok else "degraded", kernel_id=self.kernel_id, jetstream=js_ok,
                               started_at=self.started_at, policy=self.policy.describe(),
                               policy_version=self.policy.version)

    # ---------------------------------------------------------------- policy --
    async def _adopt_applied_policy(self) -> None:
        """Use the policy in ``<prefix>-policy`` when one was applied: every replica enforces
        the same rules, whatever policy it was started with."""
        try:
            entry = await self.store.kv["policy"].get(ACTIVE_KEY)
        except nats.js.errors.KeyNotFoundError:
            return
        if not entry.value:
            return
        try:
            policy = bundle_policy(entry.value)
        except (PolicyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.error("the applied policy is invalid; keeping the configured one", error=str(exc))
            return
        if policy.version != self.policy.version:
            self.log.warning("using the applied policy instead of the one this replica was started with",
                             applied=policy.describe(), applied_version=policy.version,
                             configured=self.policy.describe(), configured_version=self.policy.version)
        self.policy = policy

    async def _watch_policy(self) -> None:
        """Switch to each newly applied policy without a restart (``rebuno policy apply``)."""
        await watch_bucket(self.store.kv["policy"], self._on_policy, what="policy", keys=ACTIVE_KEY)

    def _on_policy(self, entry: Any) -> None:
        if entry is None or not entry.value or entry.operation in ("DEL", "PURGE"):
            return
        try:
            policy = bundle_policy(entry.value)
        except (PolicyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.error("ignoring an invalid applied policy", error=str(exc))
            return
        if policy.version != self.policy.version:
            self.policy = policy
            self.log.info("policy switched", policy=policy.describe(), version=policy.version)
