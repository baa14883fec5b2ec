"""Kernel API requests and replies (DESIGN §3.1).

Requests are decoded strictly (unknown fields are a ``VALIDATION_ERROR``,
invariant 6); replies and everything else tolerate unknown fields so older
readers accept newer writers. Every reply is either the operation's reply
struct or :class:`Error`, told apart by the ``Rebuno-Type`` header.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from .events import Event
from .records import Execution, ExecutionSummary, HistoryEntry, ToolEntry, ToolSchema

__all__ = [
    "ErrorCode", "Error", "Ok", "CreateExecution", "GetExecution", "ListExecutions", "ListExecutionsReply",
    "CancelExecution", "SignalExecution", "ListEvents", "EventsReply", "ListTools", "ToolsReply",
    "Claim", "ClaimReply", "ReplayedCall", "InvokeTool", "Complete", "Fail", "Wait", "Intent", "IntentRequest", "IntentReply",
    "StepResult", "StepResultReply", "Renew", "RunnerRegister", "RunnerStarted", "StartedReply", "RunnerResult", "Health", "HealthReply",
    "REQUEST_TYPES", "REPLY_TYPES",
]

ErrorCode = Literal[
    "NOT_FOUND", "CONFLICT", "VALIDATION_ERROR", "FORBIDDEN", "UNAUTHORIZED", "RATE_LIMITED",
    "INTERNAL_ERROR", "SERVICE_UNAVAILABLE",
]

_Q = dict(kw_only=True, omit_defaults=True, frozen=True, forbid_unknown_fields=True)
_A = dict(kw_only=True, omit_defaults=True, frozen=True)

Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
ToolId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length=256)]
Key = Annotated[str, Meta(max_length=512)]
SignalType = Annotated[str, Meta(min_length=1, max_length=256)]
Labels = dict[Annotated[str, Meta(min_length=1, max_length=256)], Annotated[str, Meta(max_length=1024)]]


class Error(msgspec.Struct, **_A):
    """An error reply: the HTTP API's codes (``spec/http-api.md``), a message, optional details."""

    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None


class Ok(msgspec.Struct, **_A):
    """A reply that carries nothing but success."""

    status: str = "ok"


# ------------------------------------------------------------- executions --
class CreateExecution(msgspec.Struct, **_Q):
    """``executions.create``.

    Attributes:
        execution_id: optional client-chosen id; a repeat with the same id returns the
            existing execution instead of creating a second one (idempotent create).
    """

    agent_id: Id
    input: Any = None
    labels: Labels | None = None
    execution_id: Id | Literal[""] = ""


class GetExecution(msgspec.Struct, **_Q):
    execution_id: Id


class ListExecutions(msgspec.Struct, **_Q):
    """``executions.list``: newest first; ``limit`` 1-200 (0 means 50)."""

    status: Literal["", "pending", "running", "blocked", "completed", "failed", "cancelled"] = ""
    agent_id: str = ""
    labels: Labels = {}
    limit: Annotated[int, Meta(ge=0)] = 50
    cursor: str = ""


class ListExecutionsReply(msgspec.Struct, **_A):
    executions: list[ExecutionSummary]
    next_cursor: str = ""


class CancelExecution(msgspec.Struct, **_Q):
    execution_id: Id
    request_id: Key = ""


class SignalExecution(msgspec.Struct, **_Q):
    """``executions.signal``; ``request_id`` makes a retried signal count once."""

    execution_id: Id
    signal_type: SignalType
    payload: Any = None
    request_id: Key = ""


class ListEvents(msgspec.Struct, **_Q):
    """``executions.events``: events with ``sequence > after_sequence``, ascending; limit 1-1000."""

    execution_id: Id
    after_sequence: Annotated[int, Meta(ge=0)] = 0
    limit: Annotated[int, Meta(ge=0)] = 100


class EventsReply(msgspec.Struct, **_A):
    """Events of one execution, ascending by ``sequence``."""

    events: list[Event]
    latest_sequence: int = 0


class ListTools(msgspec.Struct, **_Q):
    """``tools.list``: entries whose id equals ``prefix`` or starts with ``prefix.`` / ``prefix_``."""

    prefix: str = ""


class ToolsReply(msgspec.Struct, **_A):
    tools: list[ToolEntry]


# ------------------------------------------------------------------ agent --
class Claim(msgspec.Struct, **_Q):
    """``agent.claim``: turn a delivered assignment notice into a running session.

    Attributes:
        notice_seq: stream sequence of the notice in the assign stream.
        delivery: the notice's delivery count (1 on first delivery).
        lease_ms: how long the session stays alive without an ``agent.renew`` (milliseconds;
            0: the kernel's default agent lease). The kernel resets the execution when it lapses.
    """

    execution_id: Id
    agent_id: Id
    consumer_id: Annotated[str, Meta(min_length=1, max_length=256)]
    notice_seq: Annotated[int, Meta(ge=0)] = 0
    delivery: Annotated[int, Meta(ge=0)] = 1
    lease_ms: Annotated[int, Meta(ge=0, le=86_400_000)] = 0


class Renew(msgspec.Struct, **_Q):
    """``agent.renew``: keep a session's lease alive (sent every third of the lease).

    Attributes:
        lease_ms: the new lease from now (milliseconds; 0: the kernel's default).
    """

    execution_id: Id
    session_id: Id
    lease_ms: Annotated[int, Meta(ge=0, le=86_400_000)] = 0


class ReplayedCall(msgspec.Struct, **_A):
    """A tool call that finished in an earlier session: ``status`` is ``succeeded`` or ``failed``."""

    step_id: str
    status: str
    result: Any = None
    error: str = ""


class ClaimReply(msgspec.Struct, **_A):
    """A running session.

    Attributes:
        replay: for a re-claimed execution, the finished tool calls of earlier sessions by
            idempotency key; the handler runs again and gets these results instead of
            calling the tools again (durable resume, DESIGN §5.4).
    """

    execution_id: str
    session_id: str
    agent_id: str
    input: Any = None
    labels: dict[str, str] = {}
    history: list[HistoryEntry] = []
    last_sequence: int = 0
    replay: dict[str, ReplayedCall] = {}


class InvokeTool(msgspec.Struct, tag="invoke_tool", **_Q):
    tool_id: ToolId
    arguments: Any = None
    idempotency_key: Key = ""
    remote: bool = False


class Complete(msgspec.Struct, tag="complete", **_Q):
    output: Any = None


class Fail(msgspec.Struct, tag="fail", **_Q):
    error: Annotated[str, Meta(min_length=1, max_length=4096)]


class Wait(msgspec.Struct, tag="wait", **_Q):
    """Wait for a signal. ``idempotency_key`` (default: the request's ``request_id``) makes the
    wait durable: repeating a wait whose signal already arrived returns that signal's payload."""

    signal_type: SignalType
    idempotency_key: Key = ""


Intent = Union[InvokeTool, Complete, Fail, Wait]


class IntentRequest(msgspec.Struct, **_Q):
    """``agent.intent``: a proposal from the session's agent (``spec/kernel.md`` §8).

    Attributes:
        request_id: makes a retried ``complete`` / ``fail`` / ``wait`` count once
            (``invoke_tool`` is deduplicated by its ``idempotency_key``).
    """

    execution_id: Id
    session_id: Id
    intent: Intent
    request_id: Key = ""


class IntentReply(msgspec.Struct, **_A):
    """Answer to an accepted intent.

    Attributes:
        step_id: the step created (or found again by idempotency key) for ``invoke_tool``.
        pending_approval: the step waits for a human decision.
        step_status: the step's status when the reply was built; ``succeeded`` or
            ``failed`` for a repeated key whose step already finished (durable resume).
        result / error: that finished step's outcome.
        signal: for ``wait``, whether a pending signal was consumed at once, and its payload.
    """

    accepted: bool = True
    step_id: str = ""
    pending_approval: bool = False
    step_status: str = ""
    result: Any = None
    error: str = ""
    signal_received: bool = False
    signal_payload: Any = None


class StepResult(msgspec.Struct, **_Q):
    """``agent.step_result``: outcome of a local step (requires the session)."""

    execution_id: Id
    session_id: Id
    step_id: Id
    success: bool
    data: Any = None
    error: Annotated[str, Meta(max_length=65536)] = ""
    retryable: bool = False
    """With ``success=False``: ask for another attempt (``ToolError(retryable=True)``)."""


class StepResultReply(msgspec.Struct, **_A):
    """Answer to ``agent.step_result``.

    Attributes:
        retry_attempt: non-zero when the kernel recorded ``step.retried``: the agent runs the
            body again as this attempt, after ``retry_delay_ms`` milliseconds.
    """

    retry_attempt: int = 0
    retry_delay_ms: int = 0


# ----------------------------------------------------------------- runner --
class RunnerRegister(msgspec.Struct, **_Q):
    """``runner.register``: publish a runner instance's tools. The runner's capabilities are the
    union of the tools of its live instances (a rolling upgrade may run two versions at once)."""

    runner_id: Id
    consumer_id: Annotated[str, Meta(min_length=1, max_length=256)]
    tools: list[ToolSchema] = []
    heartbeat_ms: Annotated[int, Meta(ge=0, le=86_400_000)] = 0
    """How often this instance registers (milliseconds; 0: 30 s). An instance silent for three
    of these no longer counts towards its runner's capabilities."""


class RunnerStarted(msgspec.Struct, **_Q):
    """``runner.started``: a runner instance is about to run a job.

    Attributes:
        delivery: the job message's delivery count; a redelivered job means an earlier
            instance lost it (``runner_lost``).
    """

    runner_id: Id
    consumer_id: Annotated[str, Meta(min_length=1, max_length=256)]
    job_id: Id
    execution_id: Id
    step_id: Id
    delivery: Annotated[int, Meta(ge=1)] = 1


class StartedReply(msgspec.Struct, **_A):
    """``proceed`` False tells the runner to drop the job (step cancelled or finished)."""

    proceed: bool
    attempt: int = 1
    reason: str = ""
    last_sequence: int = 0


class RunnerResult(msgspec.Struct, **_Q):
    runner_id: Id
    consumer_id: Annotated[str, Meta(min_length=1, max_length=256)]
    job_id: Id
    execution_id: Id
    step_id: Id
    success: bool
    data: Any = None
    error: Annotated[str, Meta(max_length=65536)] = ""
    retryable: bool = False


class Health(msgspec.Struct, **_Q):
    pass


class HealthReply(msgspec.Struct, **_A):
    status: str
    kernel_id: str
    jetstream: bool
    started_at: datetime | None = None
    policy: str = ""
    """One line describing the policy in force on the answering replica."""
    policy_version: str = ""


REQUEST_TYPES: dict[str, type] = {
    "executions.create": CreateExecution, "executions.get": GetExecution,
    "executions.list": ListExecutions, "executions.cancel": CancelExecution,
    "executions.signal": SignalExecution, "executions.events": ListEvents, "tools.list": ListTools,
    "agent.claim": Claim, "agent.intent": IntentRequest, "agent.step_result": StepResult,
    "agent.renew": Renew, "runner.register": RunnerRegister, "runner.started": RunnerStarted, "runner.result": RunnerResult,
    "health": Health,
}
"""Request struct of every API operation (see ``schemas.subjects.API_OPERATIONS``)."""

REPLY_TYPES: dict[str, type] = {
    "executions.create": Execution, "executions.get": Execution,
    "executions.list": ListExecutionsReply, "executions.cancel": Execution,
    "executions.signal": Ok, "executions.events": EventsReply, "tools.list": ToolsReply,
    "agent.claim": ClaimReply, "agent.intent": IntentReply, "agent.step_result": StepResultReply,
    "agent.renew": Ok, "runner.register": Ok, "runner.started": StartedReply, "runner.result": Ok, "health": HealthReply,
}
"""Reply struct of every API operation (an :class:`Error` may come instead)."""
