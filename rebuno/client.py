"""``Client``: create, read, watch, cancel and signal executions (services, CLIs, dashboards).

Talks to the kernel over NATS request/reply; every request is idempotent under
retry (``create`` proposes the execution id itself, ``cancel`` and
``send_signal`` carry request ids), so a request whose reply was lost is
retried safely.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import uuid
from typing import Any, AsyncIterator, Callable, Mapping

from nats.aio.client import Client as NATS

from schemas import api
from schemas.events import Event
from schemas.ids import new_id, validate_token_id
from schemas.records import Execution, ExecutionStatus, ToolEntry
from schemas.subjects import Names

from ._config import Settings
from ._connection import Requester, connect
from ._follow import follow_events
from .errors import ClientClosedError, ConflictError

__all__ = ["Client"]


class Client:
    """An async client of the kernel API.

    Args:
        base_url: NATS URL (default ``$REBUNO_URL``, else ``nats://127.0.0.1:4222``).
        api_key: NATS token (default ``$REBUNO_API_KEY``).
        timeout: seconds to wait for each reply before retrying.
        max_retries: retries of a request that got no reply (or found no kernel).
        prefix: deployment prefix (default ``$REBUNO_PREFIX`` or ``rebuno``).

    Use as ``async with Client() as client: ...`` or call :meth:`close`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 35.0,
                 max_retries: int = 3, prefix: str | None = None) -> None:
        self.settings = Settings.resolve(base_url, api_key, prefix)
        self.names = Names(self.settings.prefix)
        self.timeout = timeout
        self.max_retries = max_retries
        self._nc: NATS | None = None
        self._requester: Requester | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _req(self) -> Requester:
        if self._closed:
            raise ClientClosedError("this Client was closed")
        if self._requester is None:
            async with self._lock:
                if self._requester is None:
                    self._nc = await connect(self.settings, "rebuno-client")
                    self._requester = Requester(self._nc, self.names, timeout=self.timeout,
                                                max_retries=self.max_retries)
        return self._requester

    async def close(self) -> None:
        """Close the connection; later calls raise ClientClosedError."""
        self._closed = True
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:  # noqa: BLE001
                pass
        self._nc = self._requester = None

    async def __aenter__(self) -> "Client":
        await self._req()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- executions ------------------------------------------------------------------------
    async def create(self, agent_id: str, input: Any = None, labels: Mapping[str, str] | None = None, *,
                     execution_id: str | None = None) -> Execution:
        """Create an execution for ``agent_id`` (``pending`` until an instance claims it).

        Args:
            input: any JSON value, routed to the agent's handler.
            labels: string → string, visible to policy and list filters.
            execution_id: the id to use (default: a new UUIDv7); repeating a create with the
                same id returns the existing execution.

        Raises:
            ValidationError: invalid ids, labels, or an input over the broker's max payload.
            ConflictError: ``execution_id`` exists with another agent or input.
        """
        validate_token_id("agent_id", agent_id)
        return await (await self._req()).call("executions.create", api.CreateExecution(
            agent_id=agent_id, input=input, labels=dict(labels) if labels else None,
            execution_id=execution_id or new_id()))

    async def get(self, execution_id: str) -> Execution:
        """The execution's current state.

        Raises:
            NotFoundError: unknown id.
        """
        return await (await self._req()).call("executions.get", api.GetExecution(execution_id=execution_id))

    async def list(self, *, status: ExecutionStatus | str | None = None, agent_id: str = "",
                   labels: Mapping[str, str] | None = None, limit: int = 50, cursor: str = "") -> api.ListExecutionsReply:
        """One page of executions, newest first (``limit`` 1-200); pass ``next_cursor`` on."""
        st = status.value if isinstance(status, ExecutionStatus) else (status or "")
        return await (await self._req()).call("executions.list", api.ListExecutions(
            status=st, agent_id=agent_id, labels=dict(labels or {}), limit=limit, cursor=cursor))  # type: ignore[arg-type]

    async def cancel(self, execution_id: str) -> Execution:
        """Cancel a non-terminal execution: its open steps are cancelled and its agent and
        runners stop work on it.

        Raises:
            NotFoundError: unknown id.
            ConflictError: the execution already ended.
        """
        return await (await self._req()).call("executions.cancel", api.CancelExecution(
            execution_id=execution_id, request_id=uuid.uuid4().hex))

    async def send_signal(self, execution_id: str, signal_type: str, payload: Any = None) -> api.Ok:
        """Send a signal; a handler waiting in ``execution.wait_signal(signal_type)`` gets
        ``payload``, and a signal sent before the wait is kept for it.

        Raises:
            NotFoundError: unknown id.
            ConflictError: the execution already ended.
        """
        return await (await self._req()).call("executions.signal", api.SignalExecution(
            execution_id=execution_id, signal_type=signal_type, payload=payload, request_id=uuid.uuid4().hex))

    async def approve(self, execution_id: str, step_id: str | None = None, *, reason: str = "") -> api.Ok:
        """Grant the tool call an execution is holding for approval (``spec/kernel.md`` §16):
        the agent's call goes on and runs the tool.

        Args:
            step_id: the held step; None looks it up (the execution must be blocked on approval).

        Raises:
            NotFoundError: unknown id.
            ConflictError: the execution is not waiting for an approval, or already ended.
            ValidationError: ``step_id`` is not the step being held.
        """
        return await self._decide(execution_id, step_id, True, reason)

    async def deny(self, execution_id: str, step_id: str | None = None, *, reason: str = "") -> api.Ok:
        """Refuse the tool call an execution is holding for approval: the step fails with
        ``reason`` and the agent's call raises ``PolicyError``. Arguments and errors as
        :meth:`approve`."""
        return await self._decide(execution_id, step_id, False, reason)

    async def _decide(self, execution_id: str, step_id: str | None, approved: bool, reason: str) -> api.Ok:
        if step_id is None:
            ex = await self.get(execution_id)
            if ex.status is not ExecutionStatus.BLOCKED or ex.blocked_reason != "approval":
                raise ConflictError(f"execution {execution_id} is not waiting for an approval "
                                    f"(status {ex.status.value})", "CONFLICT")
            step_id = ex.blocked_ref
        payload: dict[str, Any] = {"step_id": step_id, "approved": approved}
        if reason:
            payload["reason"] = reason
        return await self.send_signal(execution_id, "step.approve", payload)

    async def events_snapshot(self, execution_id: str, *, after_sequence: int = 0, limit: int = 100) -> builtins.list[Event]:
        """Events with ``sequence > after_sequence``, ascending, at most ``limit`` (≤ 1000); no waiting."""
        reply = await (await self._req()).call("executions.events", api.ListEvents(
            execution_id=execution_id, after_sequence=after_sequence, limit=limit))
        return reply.events

    async def events(self, execution_id: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        """Stream the execution's events in order; ends after the first terminal event
        (``execution.completed`` / ``failed`` / ``cancelled``). For an execution that already
        ended it replays the log and ends.

        Raises:
            NotFoundError: unknown id.
        """
        req = await self._req()
        await self.get(execution_id)  # NotFoundError early
        assert self._nc is not None
        async for event in follow_events(self._nc, req, self.names, execution_id, after_sequence=after_sequence):
            yield event

    async def run(self, agent_id: str, input: Any = None, labels: Mapping[str, str] | None = None) -> AsyncIterator[Event]:
        """Create an execution and stream its events, the terminal one included."""
        ex = await self.create(agent_id, input, labels)
        async for event in self.events(ex.id):
            yield event

    async def run_until_complete(self, agent_id: str, input: Any = None, labels: Mapping[str, str] | None = None,
                                 on_event: Callable[[Event], Any] | None = None) -> Execution:
        """Create an execution, call ``on_event`` (sync or async) for each event, and return the
        final execution once it ended."""
        ex = await self.create(agent_id, input, labels)
        async for event in self.events(ex.id):
            if on_event is not None:
                res = on_event(event)
                if inspect.isawaitable(res):
                    await res
        return await self.get(ex.id)

    # -- tools and health ------------------------------------------------------------------
    async def list_tools(self, prefix: str = "") -> builtins.list[ToolEntry]:
        """The tool directory: entries whose id equals ``prefix`` or starts with ``prefix.`` or
        ``prefix_`` (all when empty), sorted by id."""
        reply = await (await self._req()).call("tools.list", api.ListTools(prefix=prefix))
        return reply.tools

    async def health(self) -> api.HealthReply:
        """Ask one kernel replica whether it and JetStream are healthy."""
        return await (await self._req()).call("health", api.Health(), max_retries=0)

