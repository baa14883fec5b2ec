"""``Agent``: claims executions of one ``agent_id`` and runs the user's handler (DESIGN §4).

Each instance pulls assignment notices from the shared durable consumer
``agent-<agent_id>`` only as far as ``max_concurrency`` allows, claims each
execution (``agent.claim``), keeps the notice's lease alive with in-progress
acks while the handler runs, follows the execution's events (remote results,
signals, cancellation), and acknowledges the notice when the execution is
over. If the instance dies, the lease lapses, the broker redelivers the notice
to another instance, and the kernel re-claims the execution under a new session
(invariant 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from typing import Any, Callable

import msgspec
from nats.aio.msg import Msg

from schemas import api, codec
from schemas import events as ev

from . import mcp as _mcp
from . import remote as _remote
from ._binding import InputBinder
from . import _loop
from ._config import redact_url
from ._connection import Requester
from ._execution import ExecutionState, reset_state, set_state
from ._follow import follow_events
from ._logging import configure_logging
from ._tools import call_body, get_tool, jsonable as _jsonable, run_tool
from ._worker import DEFAULT_LEASE_S, WorkerInstance, keep_lease
from .errors import (
    ClientClosedError, ConflictError, NotFoundError, PolicyError, RebunoError, StepTimeoutError, ToolError,
    UnauthorizedError,
)

__all__ = ["Agent"]

_SIGNAL_RESUME = "signal received: "


class _Run:
    """One claimed execution inside an agent instance: the backend of ``execution.*``."""

    def __init__(self, agent: "Agent", claim: api.ClaimReply) -> None:
        self.claim = claim
        self.id = claim.execution_id
        self.session_id = claim.session_id
        self.req: Requester = agent._requester  # type: ignore[assignment]
        self.log = agent.log.bind(execution_id=self.id, session_id=self.session_id)
        self.outcomes: dict[str, ev.Event] = {}
        self.step_waiters: dict[str, asyncio.Future] = {}
        self.signal_payloads: dict[str, Any] = {}
        self.signal_waiters: dict[str, asyncio.Future] = {}
        self.dispatched: dict[str, ev.Event] = {}
        """``step.dispatched`` of steps not finished yet (an approval's grant)."""
        self.approval_waiters: dict[str, asyncio.Future] = {}
        self.resumed_waits: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.task: asyncio.Task | None = None
        self.end_reason = ""
        self.state = ExecutionState(self.id, session_id=self.session_id, agent_id=claim.agent_id, input=claim.input,
                                    labels=claim.labels, history=claim.history, backend=self)

    # -- events from the execution's log -------------------------------------------------
    def on_event(self, event: ev.Event) -> None:
        match event:
            case ev.StepDispatched():
                self.dispatched[event.step_id] = event
                fut = self.approval_waiters.pop(event.step_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
            case ev.StepCompleted() | ev.StepTimedOut() | ev.StepCancelled():
                self._resolve_step(event)
            case ev.StepFailed(payload=p) if not p.retryable:
                self._resolve_step(event)
            case ev.SignalReceived(payload=p):
                self.signal_payloads[event.id] = p.payload
            case ev.ExecutionResumed(payload=p) if p.reason.startswith(_SIGNAL_RESUME) and p.idempotency_key:
                payload = self.signal_payloads.get(p.signal_id or event.causation_id)
                fut = self.signal_waiters.pop(p.idempotency_key, None)
                if fut is not None and not fut.done():
                    fut.set_result(payload)
                else:
                    self.resumed_waits[p.idempotency_key] = payload
            case ev.ExecutionCancelled() | ev.ExecutionFailed() | ev.ExecutionCompleted():
                if self.task is not None and not self.task.done() and not self.end_reason:
                    self.end_reason = event.type
                    self.log.info("execution ended outside the handler; cancelling it", event_type=event.type)
                    self.task.cancel()
            case ev.ExecutionStarted(payload=p) if p.session_id != self.session_id:
                if self.task is not None and not self.task.done():
                    self.end_reason = "fenced"
                    self.log.warning("session taken over by another instance; stopping", consumer=p.consumer_id)
                    self.task.cancel()
            case _:
                pass

    def _resolve_step(self, event: ev.Event) -> None:
        self.outcomes[event.step_id] = event
        self.dispatched.pop(event.step_id, None)
        for waiters in (self.step_waiters, self.approval_waiters):
            fut = waiters.pop(event.step_id, None)
            if fut is not None and not fut.done():
                fut.set_result(event)

    def _step_end(self, step_id: str) -> asyncio.Future:
        """A future resolved with the step's final event (completed, failed for good, timed out,
        cancelled) as it reaches this instance's log follower."""
        fut = self.step_waiters.get(step_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            if step_id in self.outcomes:
                fut.set_result(self.outcomes[step_id])
            else:
                self.step_waiters[step_id] = fut
        return fut

    async def _await_step(self, step_id: str) -> ev.Event:
        return await asyncio.shield(self._step_end(step_id))

    async def _await_approval(self, step_id: str) -> ev.Event:
        """The decision on a step held for approval: its ``step.dispatched`` (granted) or its end
        (``step.failed`` when denied; cancelled or timed out otherwise)."""
        if step_id in self.outcomes:
            return self.outcomes[step_id]
        if step_id in self.dispatched:
            return self.dispatched[step_id]
        fut = self.approval_waiters.setdefault(step_id, asyncio.get_running_loop().create_future())
        return await asyncio.shield(fut)

    # -- execution.* backend ---------------------------------------------------------------
    async def invoke_tool(self, tool_id: str, arguments: Any, *, idempotency_key: str = "",
                          local_fn: Callable[..., Any] | None = None, force_remote: bool = False) -> Any:
        spec = get_tool(tool_id) or _mcp.local_spec(tool_id)
        if local_fn is None and not force_remote and spec is not None and not spec.remote:
            local_fn = spec.fn
        n = self.calls.get(tool_id, 0) + 1
        self.calls[tool_id] = n
        key = idempotency_key or f"{self.id}:{tool_id}:{n}"
        done = self.claim.replay.get(key)
        if done is not None:  # finished in an earlier session of this execution (durable resume)
            if done.status == "succeeded":
                return done.result
            raise ToolError(done.error or f"tool {tool_id} failed", tool_id, done.step_id)
        remote = local_fn is None
        arguments = _jsonable(arguments)
        reply: api.IntentReply = await self.req.call("agent.intent", api.IntentRequest(
            execution_id=self.id, session_id=self.session_id,
            intent=api.InvokeTool(tool_id=tool_id, arguments=arguments, idempotency_key=key, remote=remote)))
        step_id = reply.step_id
        log = self.log.bind(tool_id=tool_id, step_id=step_id)
        if reply.step_status == "succeeded":
            log.debug("tool call answered from the log (durable resume)")
            return reply.result
        if reply.step_status in ("failed", "cancelled", "timed_out"):
            raise ToolError(reply.error or f"tool {tool_id} {reply.step_status}", tool_id, step_id)
        if reply.pending_approval:
            log.info("tool call waits for human approval")
            decided = await self._await_approval(step_id)
            if isinstance(decided, ev.StepFailed):
                reason = decided.payload.error
                raise PolicyError(f"Tool invocation denied by human approval: {reason}", "FORBIDDEN",
                                  {"tool_id": tool_id, "step_id": step_id, "reason": reason})
            if not isinstance(decided, ev.StepDispatched):
                raise self._step_error(decided, tool_id, step_id)
            log.info("tool call approved")
            if not remote:
                return await self._run_local(spec, local_fn, tool_id, step_id, arguments, log)  # type: ignore[arg-type]
        elif not remote and reply.step_status in ("pending", "dispatched"):
            return await self._run_local(spec, local_fn, tool_id, step_id, arguments, log)  # type: ignore[arg-type]
        outcome = await self._await_step(step_id)
        if isinstance(outcome, ev.StepCompleted):
            return outcome.payload.result
        raise self._step_error(outcome, tool_id, step_id)

    @staticmethod
    def _step_error(outcome: ev.Event, tool_id: str, step_id: str) -> ToolError:
        match outcome:
            case ev.StepFailed(payload=p):
                return ToolError(p.error or "tool execution failed", tool_id, step_id)
            case ev.StepTimedOut():
                return StepTimeoutError(f"tool {tool_id} timed out (step {step_id})", tool_id, step_id)
            case _:
                reason = getattr(getattr(outcome, "payload", None), "reason", "") or "cancelled"
                return ToolError(f"tool {tool_id} was cancelled (step {step_id}): {reason}", tool_id, step_id)

    async def _run_local(self, spec: Any, local_fn: Callable[..., Any], tool_id: str, step_id: str,
                         arguments: Any, log: Any) -> Any:
        """Run a local step's body and report its outcome, racing the step's end in the log: a
        deadline (``step.timed_out``) or a cancellation stops the body. A failure the body marks
        retryable (``ToolError(retryable=True)``) is retried as the kernel says (§11)."""
        ended = self._step_end(step_id)
        while True:
            if spec is not None and spec.fn is local_fn:
                body = asyncio.ensure_future(run_tool(spec, arguments))
            else:
                body = asyncio.ensure_future(call_body(local_fn, arguments))
            try:
                await asyncio.wait({body, ended}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                body.cancel()
                raise
            if not body.done():
                body.cancel()
                with contextlib.suppress(BaseException):
                    await body
                log.warning("local tool stopped: its step ended in the kernel", event_type=ended.result().type)
                raise self._step_error(ended.result(), tool_id, step_id)
            if body.cancelled():
                raise asyncio.CancelledError()
            exc = body.exception()
            if exc is None:
                result = _jsonable(body.result())
                await self.req.call("agent.step_result", api.StepResult(
                    execution_id=self.id, session_id=self.session_id, step_id=step_id, success=True, data=result))
                return result
            retryable = bool(getattr(exc, "retryable", False))
            log.warning("local tool failed", error=str(exc), retryable=retryable)
            reply: api.StepResultReply = await self.req.call("agent.step_result", api.StepResult(
                execution_id=self.id, session_id=self.session_id, step_id=step_id, success=False,
                error=str(exc)[:65536] or type(exc).__name__, retryable=retryable))
            if not reply.retry_attempt:
                if isinstance(exc, ToolError):
                    exc.tool_id, exc.step_id = exc.tool_id or tool_id, exc.step_id or step_id
                    raise exc
                raise ToolError(str(exc) or type(exc).__name__, tool_id, step_id) from exc
            log.info("retrying local tool", attempt=reply.retry_attempt, delay_ms=reply.retry_delay_ms)
            await asyncio.wait({ended}, timeout=reply.retry_delay_ms / 1000)
            if ended.done():
                raise self._step_error(ended.result(), tool_id, step_id)

    async def wait_signal(self, signal_type: str, timeout: float | None = None) -> Any:
        n = self.calls.get(f"wait:{signal_type}", 0) + 1
        self.calls[f"wait:{signal_type}"] = n
        key = f"{self.id}:wait:{signal_type}:{n}"  # deterministic: a re-run handler gets the same payload
        reply: api.IntentReply = await self.req.call("agent.intent", api.IntentRequest(
            execution_id=self.id, session_id=self.session_id,
            intent=api.Wait(signal_type=signal_type, idempotency_key=key)))
        if reply.signal_received:
            return reply.signal_payload
        if key in self.resumed_waits:  # the resuming signal's events arrived before this line
            return self.resumed_waits.pop(key)
        fut = self.signal_waiters.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RebunoError(f"Timed out waiting for signal: {signal_type}") from None

    async def complete(self, output: Any = None) -> None:
        await self._finish("completed", api.Complete(output=_jsonable(output)))

    async def fail(self, error: str) -> None:
        await self._finish("failed", api.Fail(error=(error or "failed")[:4096]))

    async def _finish(self, reason: str, intent: Any) -> None:
        """Submit the terminal intent. ``end_reason`` is set first, so the terminal event —
        which can arrive before the reply — is not mistaken for an end from outside."""
        if self.end_reason:
            raise ConflictError(f"execution {self.id} already {self.end_reason}", "CONFLICT")
        self.end_reason = reason
        try:
            await self.req.call("agent.intent", api.IntentRequest(
                execution_id=self.id, session_id=self.session_id, request_id=uuid.uuid4().hex, intent=intent))
        except BaseException:
            self.end_reason = ""
            raise

    # -- the handler ---------------------------------------------------------------------------
    async def run_handler(self, binder: InputBinder) -> None:
        token = set_state(self.state)
        try:
            try:
                args, kwargs = binder.bind(self.claim.input)
            except ValueError as exc:
                self.log.warning("input does not fit the handler", error=str(exc))
                await self.fail(str(exc))
                return
            try:
                result = binder.handler(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except asyncio.CancelledError:
                raise
            except (PolicyError, ToolError) as exc:
                self.log.warning("handler failed", error=str(exc))
                await self._finish_fail(str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                self.log.exception("handler raised")
                await self._finish_fail(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
                return
            if self.end_reason:
                return  # the handler called execution.complete()/fail() itself
            try:
                await self.complete(result)
            except ConflictError as exc:
                # e.g. the handler returned while tool calls it started were still running
                self.log.error("the kernel refused to complete the execution", error=str(exc))
                raise
            self.log.info("execution completed")
        finally:
            reset_state(token)

    async def _finish_fail(self, error: str) -> None:
        if self.end_reason:
            return
        try:
            await self.fail(error)
        except UnauthorizedError:
            raise
        except (ConflictError, ClientClosedError) as exc:
            self.log.warning("could not record the failure", error=str(exc))


class Agent(WorkerInstance):
    """Serve executions of one ``agent_id`` with a handler.

    Args:
        agent_id: the agent's id, as used by policy and execution creation
            (1-128 characters of ``[A-Za-z0-9_-]``).
        kernel_url: NATS URL of the broker (default ``$REBUNO_URL``, else ``nats://127.0.0.1:4222``).
        api_key: NATS token (default ``$REBUNO_API_KEY``).
        consumer_id: this instance's id; generated as ``<agent_id>-<8 hex>`` when empty.
        reconnect_delay: initial reconnect delay in seconds (backoff base).
        max_reconnect_delay: cap of the reconnect backoff in seconds.
        max_concurrency: executions this instance runs at once; it pulls no more.
        prefix: deployment prefix (default ``$REBUNO_PREFIX`` or ``rebuno``).
        request_timeout: seconds to wait for each kernel reply before retrying.
        lease: seconds this instance may go silent before its executions move to another
            instance (the notice's ack wait; kept alive every ``lease / 3``).

    Raises:
        ValueError: empty or invalid ``agent_id``; an ``http://`` URL.
    """

    def __init__(self, agent_id: str, *, kernel_url: str | None = None, api_key: str | None = None,
                 consumer_id: str = "", reconnect_delay: float = 3.0, max_reconnect_delay: float = 60.0,
                 max_concurrency: int = 16, prefix: str | None = None, request_timeout: float = 10.0,
                 lease: float = DEFAULT_LEASE_S) -> None:
        self.agent_id = self._init_instance(
            "agent", agent_id, kernel_url=kernel_url, api_key=api_key, prefix=prefix, consumer_id=consumer_id,
            max_concurrency=max_concurrency, reconnect_delay=reconnect_delay, max_reconnect_delay=max_reconnect_delay,
            request_timeout=request_timeout, lease=lease)
        self._binder: InputBinder | None = None
        self._runs: dict[str, _Run] = {}
        self._mcp_servers: list[_mcp.MCPServer] = []

    def run(self, handler: Callable[..., Any]) -> None:
        """Serve executions with ``handler`` until SIGINT/SIGTERM (blocks; ``asyncio.run``)."""
        _loop.run(self.run_async(handler))

    def stop(self) -> None:
        """Ask the instance to stop: no new work; in-flight handlers get 5 s, then are handed over."""
        self._stop.set()

    async def run_async(self, handler: Callable[..., Any]) -> None:
        """Serve executions with ``handler`` in the running loop until :meth:`stop` or a signal.

        At start the MCP servers of the process that no runner hosts are connected (each bounded
        by its ``connect_timeout``; one that fails keeps retrying in the background) and
        ``remote.Tools`` handles fetch their schemas; at shutdown the servers are disconnected.

        Raises:
            TypeError: ``handler`` is not callable.
        """
        configure_logging()
        self._binder = InputBinder(handler)
        await self._serve("agent", stream=self.names.assign_stream, durable=self.names.agent_consumer(self.agent_id),
                          subject=self.names.assign(self.agent_id))

    async def _on_connected(self) -> list[asyncio.Task]:
        assert self._requester is not None
        self._mcp_servers = await _mcp.connect_local()  # each keeps retrying in the background if down
        await _remote.connect_all(self._requester, self.log)
        self.log.info("agent instance started", url=redact_url(self.settings.url), max_concurrency=self.max_concurrency)
        self.ready.set()
        return []

    async def _on_stopped(self) -> None:
        await _remote.disconnect_all()
        await _mcp.disconnect_servers(self._mcp_servers)
        self._mcp_servers = []

    async def _keep_session(self, run: _Run, msg: Msg) -> None:
        """Keep the notice's lease (in-progress acks) and the session's lease (``agent.renew``)
        alive every third of the lease. A renewal refused as UNAUTHORIZED means the kernel gave
        the execution to another instance: the handler is stopped (fenced)."""
        assert self._requester is not None
        every = max(self.lease / 3, 0.5)
        notice = asyncio.create_task(keep_lease(msg, every))
        try:
            while True:
                await asyncio.sleep(every)
                try:
                    await self._requester.call("agent.renew", api.Renew(
                        execution_id=run.id, session_id=run.session_id, lease_ms=int(self.lease * 1000)))
                except UnauthorizedError:
                    if run.task is not None and not run.task.done() and not run.end_reason:
                        run.end_reason = "fenced"
                        run.log.warning("session lease lost; another instance takes the execution over")
                        run.task.cancel()
                    return
                except ConflictError:
                    return  # the execution ended
                except RebunoError as exc:
                    run.log.warning("could not renew the session lease", error=str(exc))
        finally:
            notice.cancel()

    async def _handle(self, msg: Msg) -> None:
        """One assignment notice: claim, run, acknowledge (or hand over)."""
        assert self._requester is not None and self._nc is not None and self._binder is not None
        try:
            notice = codec.NOTICE_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            self.log.error("undecodable assignment notice; dropping it", data=msg.data[:200])
            await msg.term()
            return
        meta = msg.metadata
        log = self.log.bind(execution_id=notice.execution_id)
        # Claim first (the reply says where the log stands), then follow from there;
        # the follower subscribes before reading the backlog, so nothing is missed.
        try:
            claim: api.ClaimReply = await self._requester.call("agent.claim", api.Claim(
                execution_id=notice.execution_id, agent_id=self.agent_id, consumer_id=self.consumer_id,
                notice_seq=meta.sequence.stream, delivery=meta.num_delivered, lease_ms=int(self.lease * 1000)))
        except (ConflictError, NotFoundError) as exc:
            log.info("notice is no longer claimable; dropping it", reason=str(exc))
            await msg.ack()
            return
        except RebunoError as exc:
            log.warning("claim failed; the notice will be redelivered", error=str(exc))
            with contextlib.suppress(Exception):
                await msg.nak(delay=2)
            return
        run = _Run(self, claim)
        self._runs[run.id] = run

        nc, requester = self._nc, self._requester

        async def follow_run() -> None:
            try:
                async for event in follow_events(nc, requester, self.names, run.id,
                                                 after_sequence=claim.last_sequence, stop_at_terminal=False):
                    run.on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("event follower stopped", error=repr(exc))

        follower = asyncio.create_task(follow_run())
        lease = asyncio.create_task(self._keep_session(run, msg))
        log.info("execution claimed", session_id=claim.session_id, delivery=meta.num_delivered)
        handover = False
        try:
            run.task = asyncio.create_task(run.run_handler(self._binder))
            try:
                await run.task
            except asyncio.CancelledError:
                if not run.end_reason:  # our own shutdown, not the execution's end
                    handover = True
                    if not run.task.done():
                        run.task.cancel()
                    raise
            except UnauthorizedError as exc:
                run.end_reason = "fenced"
                log.warning("session no longer valid; another instance owns the execution", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - kernel unreachable, complete() refused...
                log.warning("could not finish the execution; it will be retried", error=str(exc))
        finally:
            lease.cancel()
            follower.cancel()
            for fut in [*run.step_waiters.values(), *run.signal_waiters.values()]:
                fut.cancel()
            self._runs.pop(run.id, None)
            with contextlib.suppress(Exception):
                if run.end_reason == "fenced":
                    pass  # the notice now belongs to the instance that took over
                elif handover:
                    await msg.nak()
                elif not run.end_reason:
                    # Not recorded as finished (e.g. the kernel was unreachable): have the notice
                    # redelivered; the re-claim resets the execution and the re-run handler gets
                    # its finished calls from the replay.
                    await msg.nak(delay=min(self.lease, 10.0))
                else:
                    await msg.ack()
