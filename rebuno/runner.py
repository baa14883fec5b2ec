"""``Runner``: executes remote tool jobs for any agent (DESIGN §4 flow 4).

A runner instance publishes its tools — ``@tool`` functions of the process and
the tools of MCP servers it hosts (``runner.host(MCPServer(...))``) — to the
kernel's directory (``runner.register``), pulls jobs from the shared durable consumer
``runner-<runner_id>`` only as far as ``max_concurrency`` allows, tells the
kernel it starts each one (``runner.started`` — a job the kernel no longer
wants is dropped there), runs the tool body with the lease kept alive, reports
the outcome (``runner.result``) and acknowledges the job. It watches the
execution's events while the job runs and cancels the body when the step or the
execution is cancelled. Raise ``ToolError(..., retryable=True)`` from a body to
ask the kernel for another attempt.

Hosted MCP servers connect when the runner starts; one that cannot be reached is
retried in the background while the rest is served, and the runner registers
again whenever a hosted server connects, goes away or changes its tools
(``rebuno.mcp`` describes the calls, results and errors).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from typing import Any, Iterable

import msgspec
import structlog
from nats.aio.msg import Msg

from schemas import api, codec
from schemas import events as ev

from . import _loop
from ._config import redact_url
from ._execution import ExecutionState, reset_state, set_state
from ._follow import follow_events
from ._logging import configure_logging
from ._tools import ToolSpec, jsonable as _jsonable, registry, run_tool
from ._worker import DEFAULT_LEASE_S, WorkerInstance, keep_lease
from .errors import APIError, RebunoError
from .mcp import MCPServer, disconnect_servers

__all__ = ["Runner"]


class Runner(WorkerInstance):
    """Serve ``@tool`` functions of this process and the tools of hosted MCP servers as remote tools.

    Args:
        runner_id: the runner's id (1-128 characters of ``[A-Za-z0-9_-]``); instances with the
            same id share its job queue round-robin.
        kernel_url: NATS URL (default ``$REBUNO_URL``).
        api_key: NATS token (default ``$REBUNO_API_KEY``).
        capabilities: tool ids to advertise; default every non-stub ``@tool`` of the process plus
            every tool of the MCP servers added with :meth:`host`.
        consumer_id: this instance's id; ``<runner_id>-<8 hex>`` when empty.
        max_concurrency: jobs this instance runs at once; it pulls no more.
        reconnect_delay / max_reconnect_delay: reconnect backoff base and cap, seconds.
        prefix: deployment prefix.
        request_timeout: seconds to wait for each kernel reply before retrying.
        lease: job ack wait in seconds (kept alive every ``lease / 3`` while a job runs).
        heartbeat_interval: seconds between re-registrations (keeps "last seen" fresh).

    Raises:
        ValueError: invalid ``runner_id``.
    """

    def __init__(self, runner_id: str, *, kernel_url: str | None = None, api_key: str | None = None,
                 capabilities: Iterable[str] | None = None, consumer_id: str = "", max_concurrency: int = 8,
                 reconnect_delay: float = 2.0, max_reconnect_delay: float = 60.0, prefix: str | None = None,
                 request_timeout: float = 10.0, lease: float = DEFAULT_LEASE_S, heartbeat_interval: float = 30.0) -> None:
        self.runner_id = self._init_instance(
            "runner", runner_id, kernel_url=kernel_url, api_key=api_key, prefix=prefix, consumer_id=consumer_id,
            max_concurrency=max_concurrency, reconnect_delay=reconnect_delay, max_reconnect_delay=max_reconnect_delay,
            request_timeout=request_timeout, lease=lease)
        self.capabilities = list(capabilities) if capabilities is not None else None
        self.heartbeat_interval = heartbeat_interval
        self._tools: dict[str, ToolSpec] = {}
        self._static: dict[str, ToolSpec] = {}
        self._hosted: list[MCPServer] = []
        self._reregister = asyncio.Event()
        self._running = False
        self._collisions: set[str] = set()

    def host(self, server: MCPServer) -> "Runner":
        """Serve an MCP server's tools from this runner: when the runner starts it connects to
        the server (credentials — ``env``, ``headers`` — stay here), publishes the tools'
        schemas with its ``@tool`` functions, and forwards their jobs to the server. Call it
        before :meth:`run`.

        Returns:
            The runner (calls chain).

        Raises:
            TypeError: ``server`` is not an MCPServer.
            RuntimeError: the runner is already running.
            ValueError: the server is already hosted by a runner.
        """
        if not isinstance(server, MCPServer):
            raise TypeError(f"runner.host() takes an MCPServer, got {type(server).__name__}")
        if self._running:
            raise RuntimeError(f"runner {self.runner_id} is running; host MCP servers before run()")
        if server._host is not None:
            raise ValueError(f"MCPServer {server.name!r} is already hosted by runner {server._host!r}")
        server._host = self.runner_id
        server._log_context["runner_id"] = self.runner_id
        self._hosted.append(server)
        return self

    @property
    def hosted(self) -> list[MCPServer]:
        """The MCP servers added with :meth:`host`."""
        return list(self._hosted)

    def _resolve_tools(self) -> dict[str, ToolSpec]:
        """The ``@tool`` part of the capabilities.

        Raises:
            ValueError: a capability is neither a ``@tool`` of this process nor under the
                prefix of a hosted MCP server.
        """
        tools = {tid: spec for tid, spec in registry().items() if not spec.remote}
        if self.capabilities is None:
            return tools
        missing = [c for c in self.capabilities if c not in tools
                   and not any(c.startswith(server.prefix + ".") for server in self._hosted)]
        if missing:
            raise ValueError(f"runner {self.runner_id}: capabilities without a @tool or hosted MCP server in this "
                             f"process: {missing}")
        return {c: tools[c] for c in self.capabilities if c in tools}

    def _source(self, tool_id: str) -> str:
        spec = self._static.get(tool_id)
        if spec is not None:
            return f"@tool {spec.fn.__module__}.{spec.fn.__qualname__}"
        for server in self._hosted:
            if tool_id in server._live:
                return f"MCP server {server.name!r} (tool {server._mcp_name(tool_id)!r})"
        return "?"

    def _current_tools(self, *, strict: bool) -> dict[str, ToolSpec]:
        """``@tool`` functions plus the tools of the hosted servers connected now.

        Raises:
            ValueError: (``strict``) two sources provide one tool id; otherwise the later
                source's tool is left out and the collision logged.
        """
        tools = dict(self._static)
        for server in self._hosted:
            for tid, spec in server._live_specs().items():
                if self.capabilities is not None and tid not in self.capabilities:
                    continue
                if tid in tools:
                    message = (f"runner {self.runner_id}: tool id {tid!r} is provided by both {self._source(tid)} and "
                               f"MCP server {server.name!r} (tool {server._mcp_name(tid)!r}); pick one source per "
                               "tool id")
                    if strict:
                        raise ValueError(message)
                    if message not in self._collisions:  # once, not at every registration
                        self._collisions.add(message)
                        self.log.error(message + "; the MCP tool is not served")
                    continue
                tools[tid] = spec
        return tools

    def _on_mcp_change(self, server: MCPServer) -> None:
        self._reregister.set()

    def run(self) -> None:
        """Serve jobs until SIGINT/SIGTERM (blocks; ``asyncio.run``)."""
        _loop.run(self.run_async())

    def stop(self) -> None:
        """Ask the instance to stop: no new jobs; running ones get 5 s, then are handed back."""
        self._stop.set()

    async def run_async(self) -> None:
        """Serve jobs in the running loop until :meth:`stop` or a signal.

        Hosted MCP servers are connected first (concurrently, each bounded by its
        ``connect_timeout``); those that fail are retried in the background.

        Raises:
            ValueError: a capability has no ``@tool`` or hosted server in this process, or a tool
                id is provided by two sources (a ``@tool`` and an MCP tool, or two MCP servers,
                among those connected at startup) — the message names both.
        """
        configure_logging()
        self._static = self._resolve_tools()
        self._reregister = asyncio.Event()
        self._running = True
        for server in self._hosted:
            server._add_listener(self._on_mcp_change)
        try:
            if self._hosted:
                await asyncio.gather(*(server.connect() for server in self._hosted))
            self._tools = self._current_tools(strict=True)
            await self._serve("runner", stream=self.names.jobs_stream,
                              durable=self.names.runner_consumer(self.runner_id), subject=self.names.jobs(self.runner_id))
        finally:
            self._running = False
            for server in self._hosted:
                server._remove_listener(self._on_mcp_change)
            await disconnect_servers(self._hosted)

    async def _on_connected(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self._heartbeat())]

    async def _register(self) -> None:
        """Publish the current tools (replacing this runner's earlier registration)."""
        assert self._requester is not None
        previous = set(self._tools)
        self._tools = self._current_tools(strict=False)
        await self._requester.call("runner.register", api.RunnerRegister(
            runner_id=self.runner_id, consumer_id=self.consumer_id,
            tools=[spec.tool_schema() for spec in self._tools.values()],
            heartbeat_ms=int(self.heartbeat_interval * 1000)))
        if self.ready.is_set() and set(self._tools) != previous:
            self.log.info("capabilities updated", added=sorted(set(self._tools) - previous),
                          removed=sorted(previous - set(self._tools)))

    async def _heartbeat(self) -> None:
        """Register now, then every ``heartbeat_interval`` seconds and whenever a hosted MCP
        server connects, goes away or changes its tools."""
        failures = 0
        while not self._stop.is_set():
            self._reregister.clear()
            try:
                await self._register()
                if not self.ready.is_set():
                    self.log.info("runner registered", tools=sorted(self._tools), url=redact_url(self.settings.url))
                    self.ready.set()
                failures = 0
                delay = self.heartbeat_interval
            except RebunoError as exc:
                failures += 1
                delay = min(self.reconnect_delay * 2 ** (failures - 1), self.max_reconnect_delay)
                self.log.warning("registration failed; retrying", error=str(exc), retry_in_s=delay)
            waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._reregister.wait())]
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def _handle(self, msg: Msg) -> None:
        """One job: started → body → result → ack."""
        assert self._requester is not None and self._nc is not None
        try:
            job = codec.JOB_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            self.log.error("undecodable job; dropping it", data=msg.data[:200])
            await msg.term()
            return
        log = self.log.bind(execution_id=job.execution_id, step_id=job.step_id, tool_id=job.tool_id, job_id=job.id)
        if self._tools.get(job.tool_id) is None and self._hosted_spec(job.tool_id) is None:
            # Another instance of this runner has the tool (its capabilities are the union of
            # its instances'): hand the job back for it; the step's deadline bounds the wait.
            log.info("tool not served by this instance; handing the job back")
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        if job.not_before is not None:  # a retry: wait out its delay (``spec/kernel.md`` §11)
            wait = (job.not_before - datetime.now(timezone.utc)).total_seconds()
            if wait > 0:
                if wait > self.lease / 2:  # long delays go back to the broker rather than hold a slot
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=wait)
                    return
                await asyncio.sleep(wait)
        try:
            started: api.StartedReply = await self._requester.call("runner.started", api.RunnerStarted(
                runner_id=self.runner_id, consumer_id=self.consumer_id, job_id=job.id,
                execution_id=job.execution_id, step_id=job.step_id, delivery=msg.metadata.num_delivered))
        except RebunoError as exc:
            if getattr(exc, "code", "") in ("NOT_FOUND", "VALIDATION_ERROR"):
                log.warning("job refused by the kernel; dropping it", error=str(exc))
                await msg.term()
            else:
                log.warning("could not start job; it will be redelivered", error=str(exc))
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
            return
        if not started.proceed:
            log.info("kernel no longer wants this job; dropping it", reason=started.reason)
            await msg.ack()
            return
        lease = asyncio.create_task(keep_lease(msg, max(self.lease / 3, 0.5)))
        body = asyncio.create_task(self._run_body(job))
        watch = asyncio.create_task(self._watch_cancel(job, started.last_sequence, body))
        handover = False
        try:
            try:
                data = await body
                result = api.RunnerResult(runner_id=self.runner_id, consumer_id=self.consumer_id, job_id=job.id,
                                          execution_id=job.execution_id, step_id=job.step_id, success=True, data=data)
            except asyncio.CancelledError:
                if watch.done():  # the kernel cancelled the step: nothing to report
                    log.info("job cancelled by the kernel")
                    await msg.ack()
                    return
                handover = True
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("tool failed", error=str(exc), retryable=bool(getattr(exc, "retryable", False)))
                result = api.RunnerResult(runner_id=self.runner_id, consumer_id=self.consumer_id, job_id=job.id,
                                          execution_id=job.execution_id, step_id=job.step_id, success=False,
                                          error=(str(exc) or type(exc).__name__)[:65536],
                                          retryable=bool(getattr(exc, "retryable", False)))
            await self._report(result, log)
            await msg.ack()
        finally:
            lease.cancel()
            watch.cancel()
            if not body.done():
                body.cancel()
            if handover:
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _report(self, result: api.RunnerResult, log: structlog.BoundLogger) -> None:
        """Report a job's outcome, retrying while the kernel is unreachable (the report is
        idempotent by job id, and the lease is kept meanwhile): a finished tool is never run
        again just because its result could not be delivered at once."""
        assert self._requester is not None
        failures = 0
        err: RebunoError
        while True:
            try:
                await self._requester.call("runner.result", result)
                log.info("job done", success=result.success)
                return
            except APIError as exc:
                if exc.code not in ("SERVICE_UNAVAILABLE", "INTERNAL_ERROR"):
                    log.warning("kernel refused the result", error=str(exc))
                    return
                err = exc
            except RebunoError as exc:  # network trouble, timeouts
                err = exc
            failures += 1
            delay = min(self.reconnect_delay * 2 ** (failures - 1), 30.0)
            log.warning("could not report the result; retrying", error=str(err), retry_in_s=delay)
            await asyncio.sleep(delay)

    async def _run_body(self, job) -> Any:
        spec = self._tools.get(job.tool_id) or self._hosted_spec(job.tool_id)
        if spec is None:
            raise RuntimeError(f"No handler registered for tool '{job.tool_id}' on runner {self.runner_id}")
        token = set_state(ExecutionState(job.execution_id))
        try:
            return _jsonable(await run_tool(spec, job.arguments))
        finally:
            reset_state(token)

    def _hosted_spec(self, tool_id: str) -> ToolSpec | None:
        """A tool of a hosted MCP server that is not connected now (its call waits for the
        reconnection, then fails as retryable)."""
        if self.capabilities is not None and tool_id not in self.capabilities:
            return None
        for server in self._hosted:
            spec = server._known_spec(tool_id)
            if spec is not None:
                return spec
        return None

    async def _watch_cancel(self, job, after_sequence: int, body: asyncio.Task) -> None:
        """Cancel the body when the kernel cancels the step or ends the execution (DESIGN §4.6)."""
        assert self._nc is not None and self._requester is not None
        try:
            async for event in follow_events(self._nc, self._requester, self.names, job.execution_id,
                                             after_sequence=after_sequence, stop_at_terminal=False,
                                             backfill=False):
                if (event.terminal or (event.step_id == job.step_id and isinstance(
                        event, (ev.StepCancelled, ev.StepTimedOut)))):
                    body.cancel()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.log.debug("cancel watch stopped", error=repr(exc))
        await asyncio.Event().wait()  # keep "not done" so a cancelled body is not mistaken for a kernel cancel
