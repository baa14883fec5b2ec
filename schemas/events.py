"""Events: the envelope and every persisted event type of ``spec/events.md`` §4.

Events are a tagged union on the envelope's ``type`` field; each event class
carries its typed ``payload``. A transition's events travel together in one
:class:`EventBatch` message on ``<prefix>.events.<execution_id>`` (DESIGN §3.3),
so a batch is appended atomically and readers see all or none of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Union

import msgspec

__all__ = [
    "Event", "EventBatch", "EVENT_TYPES", "TERMINAL_EVENT_TYPES",
    "ExecutionCreated", "ExecutionStarted", "ExecutionBlocked", "ExecutionResumed",
    "ExecutionCompleted", "ExecutionFailed", "ExecutionCancelled", "ExecutionReset",
    "IntentAccepted", "IntentDenied",
    "StepCreated", "StepDispatched", "StepStarted", "StepCompleted", "StepFailed", "StepRetried",
    "StepTimedOut", "StepCancelled", "StepApprovalRequired", "SignalReceived", "AgentTimeout",
]

_P = dict(kw_only=True, omit_defaults=True, frozen=True)


# ---------------------------------------------------------------- payloads --
class ExecutionCreatedPayload(msgspec.Struct, **_P):
    agent_id: str
    input: Any = None
    labels: dict[str, str] | None = None


class ExecutionStartedPayload(msgspec.Struct, **_P):
    session_id: str
    consumer_id: str
    notice_seq: int = 0
    delivery: int = 0


class ExecutionBlockedPayload(msgspec.Struct, **_P):
    reason: str
    ref: str
    idempotency_key: str = ""
    tool_id: str = ""
    arguments: Any = None
    remote: bool = False


class ReasonPayload(msgspec.Struct, **_P):
    reason: str


class ExecutionResumedPayload(msgspec.Struct, **_P):
    """``signal_id``: the ``signal.received`` event consumed by the wait; ``idempotency_key``:
    the wait's key (both empty for approval decisions)."""

    reason: str
    signal_id: str = ""
    idempotency_key: str = ""


class ExecutionCompletedPayload(msgspec.Struct, **_P):
    output: Any = None


class ErrorPayload(msgspec.Struct, **_P):
    error: str


class ExecutionResetPayload(msgspec.Struct, **_P):
    reason: str
    from_status: str


class IntentAcceptedPayload(msgspec.Struct, **_P):
    intent_type: str
    details: dict[str, Any] | None = None
    rule_id: str = ""
    """For ``invoke_tool``: the policy rule that allowed the call."""
    policy_version: str = ""
    """For ``invoke_tool``: the version of the policy in force (``rebuno policy apply``)."""


class IntentDeniedPayload(msgspec.Struct, **_P):
    intent_type: str
    reason: str
    rule_id: str
    tool_id: str = ""
    arguments: Any = None
    idempotency_key: str = ""
    policy_version: str = ""


class StepCreatedPayload(msgspec.Struct, **_P):
    tool_id: str
    deadline: datetime
    arguments: Any = None
    tool_version: int = 0
    max_attempts: int = 1
    attempt: int = 1
    remote: bool = False
    idempotency_key: str = ""


class StepDispatchedPayload(msgspec.Struct, **_P):
    deadline: datetime
    runner_id: str = ""
    job_id: str = ""


class StepStartedPayload(msgspec.Struct, **_P):
    runner_id: str
    consumer_id: str = ""


class StepCompletedPayload(msgspec.Struct, **_P):
    result: Any = None


class StepFailedPayload(msgspec.Struct, **_P):
    error: str
    retryable: bool = False


class StepRetriedPayload(msgspec.Struct, **_P):
    next_attempt: int
    not_before: datetime | None = None
    """The next attempt starts no earlier than this (UTC; the retry delay)."""
    deadline: datetime | None = None
    """The next attempt's deadline when it is set here (a local step's retry)."""


class EmptyPayload(msgspec.Struct, **_P):
    pass


class StepApprovalRequiredPayload(msgspec.Struct, **_P):
    tool_id: str
    arguments: Any = None
    remote: bool = False
    reason: str = ""
    rule_id: str = ""
    policy_version: str = ""


class SignalReceivedPayload(msgspec.Struct, **_P):
    signal_type: str
    payload: Any = None


class AgentTimeoutPayload(msgspec.Struct, **_P):
    session_id: str = ""


# --------------------------------------------------------------- envelope --
class _Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True, frozen=True):
    """Fields shared by every event (``spec/events.md`` §1)."""

    id: str
    execution_id: str
    timestamp: datetime
    sequence: int
    causation_id: str
    correlation_id: str
    step_id: str = ""
    schema_version: int = 1
    idempotency_key: str = ""

    terminal: ClassVar[bool] = False

    @property
    def type(self) -> str:
        """The event type, e.g. ``"step.completed"``."""
        return self.__struct_config__.tag  # type: ignore[return-value]

    @property
    def tool_id(self) -> str:
        """The payload's ``tool_id``, or ``""`` when the event has none."""
        return getattr(getattr(self, "payload", None), "tool_id", "") or ""

    @property
    def arguments(self) -> Any:
        """The payload's ``arguments``, or None."""
        return getattr(getattr(self, "payload", None), "arguments", None)


class ExecutionCreated(_Event, tag="execution.created"):
    payload: ExecutionCreatedPayload


class ExecutionStarted(_Event, tag="execution.started"):
    payload: ExecutionStartedPayload


class ExecutionBlocked(_Event, tag="execution.blocked"):
    payload: ExecutionBlockedPayload


class ExecutionResumed(_Event, tag="execution.resumed"):
    payload: ExecutionResumedPayload


class ExecutionCompleted(_Event, tag="execution.completed"):
    payload: ExecutionCompletedPayload
    terminal: ClassVar[bool] = True


class ExecutionFailed(_Event, tag="execution.failed"):
    payload: ErrorPayload
    terminal: ClassVar[bool] = True


class ExecutionCancelled(_Event, tag="execution.cancelled"):
    payload: ReasonPayload
    terminal: ClassVar[bool] = True


class ExecutionReset(_Event, tag="execution.reset"):
    payload: ExecutionResetPayload


class IntentAccepted(_Event, tag="intent.accepted"):
    payload: IntentAcceptedPayload


class IntentDenied(_Event, tag="intent.denied"):
    payload: IntentDeniedPayload


class StepCreated(_Event, tag="step.created"):
    payload: StepCreatedPayload


class StepDispatched(_Event, tag="step.dispatched"):
    payload: StepDispatchedPayload


class StepStarted(_Event, tag="step.started"):
    payload: StepStartedPayload


class StepCompleted(_Event, tag="step.completed"):
    payload: StepCompletedPayload


class StepFailed(_Event, tag="step.failed"):
    payload: StepFailedPayload


class StepRetried(_Event, tag="step.retried"):
    payload: StepRetriedPayload


class StepTimedOut(_Event, tag="step.timed_out"):
    payload: EmptyPayload


class StepCancelled(_Event, tag="step.cancelled"):
    payload: ReasonPayload


class StepApprovalRequired(_Event, tag="step.approval_required"):
    payload: StepApprovalRequiredPayload


class SignalReceived(_Event, tag="signal.received"):
    payload: SignalReceivedPayload


class AgentTimeout(_Event, tag="agent.timeout"):
    payload: AgentTimeoutPayload


Event = Union[
    ExecutionCreated, ExecutionStarted, ExecutionBlocked, ExecutionResumed, ExecutionCompleted,
    ExecutionFailed, ExecutionCancelled, ExecutionReset, IntentAccepted, IntentDenied, StepCreated,
    StepDispatched, StepStarted, StepCompleted, StepFailed, StepRetried, StepTimedOut, StepCancelled,
    StepApprovalRequired, SignalReceived, AgentTimeout,
]
"""Any persisted event; decode with :data:`schemas.codec.decode_event`."""

EVENT_TYPES: dict[str, type] = {cls.__struct_config__.tag: cls for cls in Event.__args__}  # type: ignore[attr-defined]
TERMINAL_EVENT_TYPES = frozenset(t for t, cls in EVENT_TYPES.items() if cls.terminal)


class EventBatch(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The events of one transition, appended atomically as one stream message.

    Attributes:
        execution_id: the execution the events belong to.
        events: the events, ``sequence`` consecutive and ascending.
        request_key: idempotency key of the request that caused the transition (``""`` if none).
    """

    execution_id: str
    events: list[Event]
    request_key: str = ""
