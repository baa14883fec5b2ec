"""The tool directory (``<prefix>-tools``) and runner records (``<prefix>-runners``).

Runners publish their tools with ``runner.register``; every replica keeps an in-memory
copy of the directory in step with the bucket through a watcher, so dispatch (which
runners advertise a tool) costs no broker round trip. Entries are changed with
compare-and-set, so concurrent registrations through different replicas never lose one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from datetime import datetime, timedelta, timezone

import msgspec
import nats.js.errors
import structlog

from schemas import api, codec
from schemas.ids import validate_tool_id
from schemas.records import RunnerRecord, ToolEntry

from .errors import KernelError
from ._watch import watch_bucket
from .store import Store

__all__ = ["ToolDirectory"]

_CAS_ATTEMPTS = 10
_INSTANCES_KEPT = 32
_DEFAULT_HEARTBEAT_MS = 30_000
"""Instances remembered per runner id (most recently seen first)."""

log = structlog.get_logger("rebuno.kernel.directory")


class ToolDirectory:
    """This replica's view of the tool directory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tools: dict[str, ToolEntry] = {}
        self._task: asyncio.Task | None = None
        self._loaded = asyncio.Event()
        """Set once the watch delivered the bucket's initial values."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="rebuno-kernel-tools-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)  # bounded: see _watch

    async def _watch(self) -> None:
        """Keep the in-memory directory in step with the bucket."""
        await watch_bucket(self.store.kv["tools"], self._apply, what="tool directory")

    def _apply(self, entry: Any) -> None:
        if entry is None:
            self._loaded.set()
            return
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._tools.pop(entry.key, None)
        else:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                self._tools[entry.key] = codec.TOOL_DECODER.decode(entry.value)
        if not entry.delta:
            self._loaded.set()

    def cached_runner_ids(self, tool_id: str) -> list[str]:
        """Runners advertising ``tool_id`` in this replica's view (no broker read)."""
        entry = self._tools.get(tool_id)
        return entry.runner_ids if entry else []

    async def runner_ids(self, tool_id: str) -> list[str]:
        """Runners advertising ``tool_id`` (read from the bucket when the watcher has not seen it yet)."""
        entry = self._tools.get(tool_id)
        if entry is None:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
                raw = await self.store.kv["tools"].get(tool_id)
                entry = codec.TOOL_DECODER.decode(raw.value or b"")
                self._tools[tool_id] = entry
        return entry.runner_ids if entry else []

    async def list(self, prefix: str = "") -> list[ToolEntry]:
        """Entries advertised by at least one runner whose id equals ``prefix`` or starts with
        ``prefix.`` or ``prefix_`` (all when empty), sorted by id."""
        if not self._loaded.is_set():  # right after start: give the watch a moment to catch up
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), 2.0)
        entries = list(self._tools.values())
        p = prefix
        return sorted((e for e in entries if e.runner_ids and (
            not p or e.id == p or e.id.startswith(p + ".") or e.id.startswith(p + "_"))), key=lambda e: e.id)

    async def register(self, req: api.RunnerRegister) -> None:
        """Publish a runner instance's tools and record the instance in ``<prefix>-runners``.

        The runner's capabilities become the union of the tools of its live instances (seen
        within three heartbeats), so instances that differ — a rolling upgrade, an MCP server
        up on one instance only — do not overwrite each other. Tools no live instance
        advertises any more are dropped from the directory.

        Raises:
            KernelError: VALIDATION_ERROR for invalid or duplicate tool ids;
                SERVICE_UNAVAILABLE when the runner's record stays contended.
        """
        now = datetime.now(timezone.utc)
        runners_kv = self.store.kv["runners"]
        ids = [validate_tool_id(t.id) for t in req.tools]
        if len(set(ids)) != len(ids):
            raise KernelError("VALIDATION_ERROR", "duplicate tool ids in registration")
        heartbeat = timedelta(milliseconds=req.heartbeat_ms or _DEFAULT_HEARTBEAT_MS)
        for _ in range(_CAS_ATTEMPTS):
            previous: RunnerRecord | None = None
            prev_rev = 0
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                raw = await runners_kv.get(req.runner_id)
                previous, prev_rev = codec.RUNNER_DECODER.decode(raw.value or b""), raw.revision or 0
            instances = dict(previous.instances) if previous else {}
            tools = dict(previous.instance_tools) if previous else {}
            instances[req.consumer_id] = now
            tools[req.consumer_id] = ids
            live = {c for c, seen in instances.items() if now - seen <= 3 * heartbeat}
            kept = dict(sorted(instances.items(), key=lambda kv: kv[1], reverse=True)[:_INSTANCES_KEPT])
            union = sorted({t for c in live for t in tools.get(c, ())})
            record = RunnerRecord(id=req.runner_id, capabilities=union, instances=kept, last_heartbeat=now,
                                  instance_tools={c: t for c, t in tools.items() if c in kept},
                                  heartbeat_ms=int(heartbeat.total_seconds() * 1000))
            try:
                if prev_rev:
                    await runners_kv.update(req.runner_id, codec.encode(record), last=prev_rev)
                else:
                    await runners_kv.create(req.runner_id, codec.encode(record))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another instance registered meanwhile: merge with its record
            dropped = set(previous.capabilities) - set(union) if previous else set()
            await asyncio.gather(*(self._upsert(req.runner_id, t.id, t, now) for t in req.tools),
                                 *(self._upsert(req.runner_id, t, None, now) for t in dropped))
            log.info("runner registered", runner_id=req.runner_id, consumer_id=req.consumer_id, tools=len(ids),
                     capabilities=len(union), live_instances=len(live))
            return
        raise KernelError("SERVICE_UNAVAILABLE", f"runner {req.runner_id} record is too contended; retry")

    async def _upsert(self, runner_id: str, tool_id: str, schema: api.ToolSchema | None, now: datetime) -> None:
        """Add (``schema`` given) or remove ``runner_id`` on one entry, by compare-and-set."""
        tools_kv = self.store.kv["tools"]
        for _ in range(_CAS_ATTEMPTS):
            try:
                raw = await tools_kv.get(tool_id)
                cur, rev = codec.TOOL_DECODER.decode(raw.value or b""), raw.revision or 0
            except nats.js.errors.KeyNotFoundError:
                cur, rev = None, 0
            runners = set(cur.runner_ids) if cur else set()
            if schema is None:
                if cur is None or runner_id not in runners:
                    return
                runners.discard(runner_id)
                entry = msgspec.structs.replace(cur, runner_ids=sorted(runners))
            else:
                runners.add(runner_id)
                entry = ToolEntry(id=tool_id, description=schema.description, input_schema=schema.input_schema,
                                  runner_ids=sorted(runners), registered_at=now)
            try:
                if rev:
                    await tools_kv.update(tool_id, codec.encode(entry), last=rev)
                else:
                    await tools_kv.create(tool_id, codec.encode(entry))
                self._tools[tool_id] = entry
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise KernelError("SERVICE_UNAVAILABLE", f"tool directory entry {tool_id} is too contended; retry")
