"""The execution state machine as a pure fold: ``record + event → record``.

The execution record in ``<prefix>-executions`` is a projection of the
execution's event stream (DESIGN §3.4); this module is the only code that
changes a record, and it does so only by applying events, so a record can
always be rebuilt or repaired from the stream. Effects follow
``spec/events.md`` §4, with the fixes of DESIGN §8 (a ``step.dispatched`` never
revives a terminal step).
"""

from __future__ import annotations

from typing import Any

from schemas import events as ev
from schemas.events import EventBatch
from schemas.records import (
    ExecutionRecord, ExecutionStatus, HistoryEntry, PendingSignal, Session, StepRecord, StepStatus, WaitRecord,
)

__all__ = ["apply", "apply_batch", "new_record", "replay_calls", "FoldError", "HISTORY_LIMIT", "REQUEST_KEY_LIMIT",
           "STEP_WINDOW"]

HISTORY_LIMIT = 50
"""Terminal step entries kept in the record (``spec/kernel.md`` §7)."""
REQUEST_KEY_LIMIT = 256
"""Recent request keys kept per execution for idempotent repeats."""
MARK_EVERY = 32
"""A ``batch_marks`` entry is kept for every this many batches."""
STEP_WINDOW = 64
"""Terminal steps kept in the record (oldest evicted first). Decisions only need active
steps and recent ones (retried intents); a re-claimed handler gets older results from the
stream (``replay_calls``). Keeps the per-transition cost flat however long an execution runs."""

_SIGNAL_RESUME = "signal received: "


class FoldError(ValueError):
    """An event cannot be applied: out of sequence, or about an unknown step (the log is tainted)."""


def new_record(event: ev.ExecutionCreated) -> ExecutionRecord:
    """The record an ``execution.created`` event starts."""
    p = event.payload
    return ExecutionRecord(
        id=event.execution_id, agent_id=p.agent_id, status=ExecutionStatus.PENDING,
        created_at=event.timestamp, updated_at=event.timestamp, input=p.input, labels=p.labels,
        last_sequence=event.sequence,
    )


def apply_batch(record: ExecutionRecord | None, batch: EventBatch, stream_seq: int) -> ExecutionRecord:
    """Apply every event of ``batch`` (in place when ``record`` is given) and return the record.

    Args:
        record: the record before the batch, or None when the batch starts the execution.
        batch: the events of one transition.
        stream_seq: the stream sequence the batch was stored at.

    Raises:
        FoldError: a sequence gap, or an event the record cannot take.
    """
    for event in batch.events:
        record = apply(record, event)
    assert record is not None
    record.stream_seq = stream_seq
    _evict_terminal_steps(record)
    if record.batches % MARK_EVERY == 0 and batch.events:
        record.batch_marks.append((batch.events[0].sequence, stream_seq))
    record.batches += 1
    if batch.request_key and batch.events:
        keys = record.request_keys
        keys[batch.request_key] = batch.events[0].id
        while len(keys) > REQUEST_KEY_LIMIT:
            del keys[next(iter(keys))]
    return record


def _evict_terminal_steps(record: ExecutionRecord) -> None:
    terminal = [s for s in record.steps.values() if not s.active]
    for step in terminal[: max(len(terminal) - STEP_WINDOW, 0)]:
        del record.steps[step.id]
        if step.idempotency_key and record.step_keys.get(step.idempotency_key) == step.id:
            del record.step_keys[step.idempotency_key]


def replay_calls(batches) -> dict[str, tuple[str, str, Any, str]]:
    """Outcomes of finished tool calls by idempotency key, from an execution's batches:
    ``key → (step_id, status, result, error)`` for steps that succeeded or failed for good.
    The latest step of a key wins (a cancelled step's key may be used again)."""
    keys: dict[str, str] = {}
    out: dict[str, tuple[str, str, Any, str]] = {}
    for batch in batches:
        for event in batch.events:
            match event:
                case ev.StepCreated(payload=p) if p.idempotency_key:
                    keys[event.step_id] = p.idempotency_key
                    out.pop(p.idempotency_key, None)
                case ev.StepCompleted(payload=p) if event.step_id in keys:
                    out[keys[event.step_id]] = (event.step_id, "succeeded", p.result, "")
                case ev.StepFailed(payload=p) if event.step_id in keys and not p.retryable:
                    out[keys[event.step_id]] = (event.step_id, "failed", None, p.error)
                case _:
                    pass
    return out


def _remember_wait(record: ExecutionRecord, key: str, wait: WaitRecord) -> None:
    record.waits.pop(key, None)
    record.waits[key] = wait
    while len(record.waits) > REQUEST_KEY_LIMIT:
        del record.waits[next(iter(record.waits))]


def _history(record: ExecutionRecord, step: StepRecord, error: str = "") -> None:
    record.history.append(HistoryEntry(
        step_id=step.id, tool_id=step.tool_id, status=step.status, arguments=step.arguments,
        result=step.result if step.status is StepStatus.SUCCEEDED else None,
        error=error or step.error, completed_at=step.completed_at,
    ))
    if len(record.history) > HISTORY_LIMIT:
        del record.history[: len(record.history) - HISTORY_LIMIT]


def apply(record: ExecutionRecord | None, event: ev.Event) -> ExecutionRecord:
    """Apply one event and return the record (mutated in place unless it is created here).

    Raises:
        FoldError: ``event.sequence`` is not ``record.last_sequence + 1``, the first event is
            not ``execution.created``, or a step event names an unknown step.
    """
    if record is None:
        if not isinstance(event, ev.ExecutionCreated) or event.sequence != 1:
            raise FoldError(f"log must start with execution.created at sequence 1, got {event.type}@{event.sequence}")
        return new_record(event)
    if event.sequence != record.last_sequence + 1:
        raise FoldError(f"sequence gap: expected {record.last_sequence + 1}, got {event.sequence}")
    record.last_sequence = event.sequence
    ts = event.timestamp
    step = None
    if event.step_id and not isinstance(event, ev.StepCreated):
        step = record.steps.get(event.step_id)
        if step is None and event.type.startswith("step."):
            raise FoldError(f"{event.type} for unknown step {event.step_id}")

    match event:
        case ev.ExecutionStarted(payload=p):
            record.status = ExecutionStatus.RUNNING
            record.session = Session(id=p.session_id, consumer_id=p.consumer_id, started_at=ts,
                                     notice_seq=p.notice_seq, delivery=p.delivery)
            record.updated_at = ts
        case ev.ExecutionBlocked(payload=p):
            record.status = ExecutionStatus.BLOCKED
            record.blocked_reason, record.blocked_ref, record.blocked_key = p.reason, p.ref, p.idempotency_key
            if p.reason == "signal" and p.idempotency_key:
                _remember_wait(record, p.idempotency_key, WaitRecord(signal_type=p.ref))
            record.updated_at = ts
        case ev.ExecutionResumed(payload=p):
            record.status = ExecutionStatus.RUNNING
            record.blocked_reason = record.blocked_ref = record.blocked_key = ""
            # The resuming signal is consumed: named by id, or (older logs) the oldest of the
            # awaited type. An approval's signal is consumed too (the original kept it pending).
            wanted = p.reason[len(_SIGNAL_RESUME):] if p.reason.startswith(_SIGNAL_RESUME) else None
            if p.signal_id or wanted is not None:
                for i, sig in enumerate(record.pending_signals):
                    if (sig.id == p.signal_id) if p.signal_id else (sig.signal_type == wanted):
                        del record.pending_signals[i]
                        if p.idempotency_key and wanted is not None:
                            _remember_wait(record, p.idempotency_key,
                                           WaitRecord(signal_type=wanted, resolved=True, payload=sig.payload))
                        break
            record.updated_at = ts
        case ev.ExecutionCompleted(payload=p):
            record.status = ExecutionStatus.COMPLETED
            record.output = p.output
            record.pending_signals = []
            record.updated_at = ts
        case ev.ExecutionFailed(payload=p):
            record.status = ExecutionStatus.FAILED
            record.error = p.error
            record.pending_signals = []
            record.updated_at = ts
        case ev.ExecutionCancelled():
            record.status = ExecutionStatus.CANCELLED
            record.pending_signals = []
            record.updated_at = ts
        case ev.ExecutionReset():
            # Pending signals survive a reset (DESIGN §8: a signal always reaches the waiting
            # handler), unlike the original, which dropped them.
            record.status = ExecutionStatus.PENDING
            record.blocked_reason = record.blocked_ref = record.blocked_key = ""
            record.session = None
            record.updated_at = ts
        case ev.StepCreated(payload=p):
            if event.step_id in record.steps:
                raise FoldError(f"step.created for existing step {event.step_id}")
            record.steps[event.step_id] = StepRecord(
                id=event.step_id, tool_id=p.tool_id, status=StepStatus.PENDING, created_at=ts,
                deadline=p.deadline, arguments=p.arguments, remote=p.remote, attempt=p.attempt,
                max_attempts=p.max_attempts, idempotency_key=p.idempotency_key,
            )
            record.step_count += 1
            if p.idempotency_key:
                record.step_keys[p.idempotency_key] = event.step_id
        case ev.StepDispatched(payload=p):
            if step.active:
                step.status = StepStatus.DISPATCHED
                step.runner_id, step.job_id, step.deadline = p.runner_id, p.job_id, p.deadline
                step.dispatched_at = ts
        case ev.StepStarted(payload=p):
            if step.status not in (StepStatus.RUNNING,) and step.active:
                step.status = StepStatus.RUNNING
                step.runner_id, step.consumer_id, step.started_at = p.runner_id, p.consumer_id, ts
        case ev.StepCompleted(payload=p):
            step.status, step.result, step.completed_at = StepStatus.SUCCEEDED, p.result, ts
            _history(record, step)
        case ev.StepFailed(payload=p):
            step.status, step.error, step.retryable, step.completed_at = StepStatus.FAILED, p.error, p.retryable, ts
            _history(record, step)
        case ev.StepRetried(payload=p):
            step.status, step.attempt = StepStatus.PENDING, p.next_attempt
            if p.deadline is not None:
                step.deadline = p.deadline
            step.error, step.retryable = "", False
            step.dispatched_at = step.started_at = step.completed_at = None
            step.consumer_id = ""
        case ev.StepTimedOut():
            step.status, step.completed_at = StepStatus.TIMED_OUT, ts
            _history(record, step, "step timed out")
        case ev.StepCancelled(payload=p):
            step.status, step.completed_at = StepStatus.CANCELLED, ts
            _history(record, step, p.reason or "execution cancelled")
        case ev.StepApprovalRequired():
            step.approval = True
        case ev.SignalReceived(payload=p):
            record.pending_signals.append(PendingSignal(id=event.id, signal_type=p.signal_type, payload=p.payload))
        case ev.ExecutionCreated():
            raise FoldError("execution.created in the middle of a log")
        case _:
            pass  # intent.*, agent.timeout: informational
    return record
