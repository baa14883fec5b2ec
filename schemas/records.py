"""Records kept in key-value buckets (DESIGN §3.4) and the public views built from them.

``ExecutionRecord`` is the projection of an execution's event stream; it is
produced only by folding events (``kernel.state``), never edited by hand, and
is stored in the ``<prefix>-executions`` bucket under the execution id.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "ExecutionStatus", "StepStatus", "TERMINAL_EXECUTION", "TERMINAL_STEP", "Session", "StepRecord",
    "PendingSignal", "WaitRecord", "HistoryEntry", "ExecutionRecord", "Execution", "ExecutionSummary",
    "ToolSchema", "ToolEntry", "RunnerRecord", "LeaseRecord", "PolicyBundle",
]


class ExecutionStatus(StrEnum):
    """Execution statuses (``spec/kernel.md`` §3)."""

    PENDING = "pending"
    RUNNING = "running"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    """Step statuses (``spec/kernel.md`` §4)."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


TERMINAL_EXECUTION = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
TERMINAL_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED})

_R = dict(kw_only=True, omit_defaults=True)


class Session(msgspec.Struct, **_R, frozen=True):
    """The binding of a running execution to one agent instance (``spec/kernel.md`` §6).

    Attributes:
        id: session id; every intent and step result must quote it.
        consumer_id: the agent instance holding the session.
        notice_seq: stream sequence of the assignment notice the instance holds.
        delivery: delivery count of that notice when it was claimed; a later claim of the
            same notice with a higher count means the previous holder lost its lease.
        started_at: when the session was created.
    """

    id: str
    consumer_id: str
    started_at: datetime
    notice_seq: int = 0
    delivery: int = 0


class StepRecord(msgspec.Struct, **_R):
    """One tool invocation inside an execution (``spec/kernel.md`` §4)."""

    id: str
    tool_id: str
    status: StepStatus
    created_at: datetime
    deadline: datetime
    arguments: Any = None
    remote: bool = False
    attempt: int = 1
    max_attempts: int = 1
    idempotency_key: str = ""
    runner_id: str = ""
    job_id: str = ""
    consumer_id: str = ""
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    error: str = ""
    retryable: bool = False
    approval: bool = False

    @property
    def active(self) -> bool:
        return self.status not in TERMINAL_STEP


class PendingSignal(msgspec.Struct, **_R, frozen=True):
    """A signal kept until a ``wait`` consumes it (``spec/kernel.md`` §15)."""

    id: str
    signal_type: str
    payload: Any = None


class WaitRecord(msgspec.Struct, **_R, frozen=True):
    """A wait by idempotency key: the awaited type, and the payload once a signal resolved it."""

    signal_type: str
    resolved: bool = False
    payload: Any = None


class HistoryEntry(msgspec.Struct, **_R, frozen=True):
    """A step that reached a terminal status (``spec/events.md`` §4.7)."""

    step_id: str
    tool_id: str
    status: StepStatus
    arguments: Any = None
    result: Any = None
    error: str = ""
    completed_at: datetime | None = None


class ExecutionRecord(msgspec.Struct, **_R):
    """Current state of one execution: the fold of its events (DESIGN §3.4).

    Attributes:
        last_sequence: ``sequence`` of the last event folded in (0 before any).
        stream_seq: stream sequence of the last event batch folded in; the next append
            is guarded with ``Nats-Expected-Last-Subject-Sequence: stream_seq``.
        request_keys: idempotency keys of recent mutating requests, oldest first
            (at most 256), with the id of the first event each caused.
        waits: waits by idempotency key (at most 256, oldest dropped first): a repeated or
            re-run wait whose signal already arrived gets the recorded payload (durable resume).
        batches: number of event batches folded in.
        batch_marks: ``(first sequence, stream sequence)`` of every 32nd batch, so a reader
            can start reading the log near a sequence instead of at its beginning.
    """

    id: str
    agent_id: str
    status: ExecutionStatus
    created_at: datetime
    updated_at: datetime
    input: Any = None
    labels: dict[str, str] | None = None
    output: Any = None
    error: str = ""
    session: Session | None = None
    steps: dict[str, StepRecord] = {}
    step_keys: dict[str, str] = {}
    step_count: int = 0
    pending_signals: list[PendingSignal] = []
    blocked_reason: str = ""
    blocked_ref: str = ""
    blocked_key: str = ""
    waits: dict[str, WaitRecord] = {}
    history: list[HistoryEntry] = []
    request_keys: dict[str, str] = {}
    last_sequence: int = 0
    stream_seq: int = 0
    batches: int = 0
    batch_marks: list[tuple[int, int]] = []

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_EXECUTION

    def active_steps(self) -> list[StepRecord]:
        """Non-terminal steps, in creation order."""
        return [s for s in self.steps.values() if s.active]

    def view(self) -> "Execution":
        """The public resource of ``spec/kernel.md`` §21."""
        return Execution(
            id=self.id, status=self.status, agent_id=self.agent_id, labels=self.labels or {},
            input=self.input, output=self.output, error=self.error, created_at=self.created_at,
            updated_at=self.updated_at, last_sequence=self.last_sequence,
            blocked_reason=self.blocked_reason, blocked_ref=self.blocked_ref,
        )

    def summary(self) -> "ExecutionSummary":
        return ExecutionSummary(
            id=self.id, status=self.status, agent_id=self.agent_id, labels=self.labels or {},
            created_at=self.created_at, updated_at=self.updated_at,
        )


class Execution(msgspec.Struct, **_R, frozen=True):
    """An execution as returned by create / get / cancel (``spec/kernel.md`` §21).

    ``error`` carries the failure text of a failed execution, and ``blocked_reason`` /
    ``blocked_ref`` what a blocked one waits for (``approval`` and the held step id, or
    ``signal`` and the awaited type) — additions to the original.
    """

    id: str
    status: ExecutionStatus
    agent_id: str
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = {}
    input: Any = None
    output: Any = None
    error: str = ""
    last_sequence: int = 0
    blocked_reason: str = ""
    blocked_ref: str = ""


class ExecutionSummary(msgspec.Struct, **_R, frozen=True):
    """A row of ``executions.list``."""

    id: str
    status: ExecutionStatus
    agent_id: str
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = {}


class ToolSchema(msgspec.Struct, **_R, frozen=True):
    """A tool as a runner publishes it: id, description and JSON Schema of its input."""

    id: str
    description: str = ""
    input_schema: dict[str, Any] = {}


class ToolEntry(msgspec.Struct, **_R, frozen=True):
    """A tool directory entry in ``<prefix>-tools`` (DESIGN §3.4), keyed by tool id.

    Attributes:
        runner_ids: runners advertising the tool, sorted.
        registered_at: last time a runner published the tool.
    """

    id: str
    registered_at: datetime
    description: str = ""
    input_schema: dict[str, Any] = {}
    runner_ids: list[str] = []


class RunnerRecord(msgspec.Struct, **_R, frozen=True):
    """A runner in ``<prefix>-runners``: its capabilities and instances (consumer id → last seen).

    Attributes:
        capabilities: the union of the tools of the live instances.
        instance_tools: the tool ids each instance last registered.
        heartbeat_ms: the registration interval the instances last announced (milliseconds).
    """

    id: str
    capabilities: list[str]
    instances: dict[str, datetime]
    last_heartbeat: datetime
    instance_tools: dict[str, list[str]] = {}
    heartbeat_ms: int = 0


class LeaseRecord(msgspec.Struct, **_R, frozen=True):
    """A session's lease in ``<prefix>-leases``, keyed by execution id (``agent.claim`` and
    ``agent.renew`` write it; any kernel replica resets the execution once it lapses)."""

    session_id: str
    expires_at: datetime
    lease_ms: int = 0
    """The lease's length (milliseconds) as the agent asked for it."""


class PolicyBundle(msgspec.Struct, **_R, frozen=True):
    """The policy in force, in ``<prefix>-policy`` under key ``active`` (``rebuno policy apply``).

    Attributes:
        version: content hash of ``files`` (what ``intent.*`` events record).
        files: policy source by file name, as read from the applied file or directory.
        origin: the path it was applied from, for operators.
        applied_at: when it was applied (UTC).
    """

    version: str
    files: dict[str, str]
    origin: str = ""
    applied_at: datetime | None = None
