"""Kernel decisions as pure functions: (record, request, now) → events, reply, effects.

Nothing here talks to the broker. Each function checks a request against the
execution record, and returns a :class:`Decision`: the events of the
transition (already numbered after ``record.last_sequence``), the reply, and
the messages to publish once the events are stored (jobs, assignment
notices). A request that must be refused raises :class:`KernelError` and
changes nothing — except a policy denial, which records ``intent.denied`` and
answers ``FORBIDDEN`` (DESIGN §8). Behaviour follows ``spec/kernel.md`` §3–§15.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from schemas import api
from schemas import events as ev
from schemas.ids import new_id
from schemas.records import ExecutionRecord, ExecutionStatus, StepRecord, StepStatus
from schemas.work import AssignmentNotice, Job

from .errors import KernelError
from .policy import NO_ARGUMENTS, PolicyDecision, PolicyInput

__all__ = ["Decision", "Limits", "EventBuilder", "create", "claim", "intent", "step_result", "signal", "cancel",
           "runner_started", "runner_result", "expire", "history_for_claim", "claim_reply", "policy_input",
           "retry_delay", "next_due", "APPROVE_SIGNAL", "Lease", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 3
"""Attempts of a step (``spec/kernel.md`` §11). Local steps get them too (a departure: the
original retried only remote steps); a step is retried only when its failure is reported
``retryable``. Approval steps get one."""
HISTORY_CLAIM_LIMIT = 50
HISTORY_CLAIM_BYTES = 512 * 1024
APPROVE_SIGNAL = "step.approve"
"""The signal type that approves or denies a step held for approval (``spec/kernel.md`` §16)."""


class PolicyEngine(Protocol):
    """What the decisions need of a policy: a decision per input, and a version to record."""

    @property
    def version(self) -> str: ...

    def evaluate(self, inp: PolicyInput) -> PolicyDecision: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Timeouts the decisions need (``spec/kernel.md`` §23)."""

    step_timeout: timedelta = timedelta(minutes=5)
    execution_timeout: timedelta = timedelta(hours=1)
    """Zero: executions never time out."""
    retry_base_delay: timedelta = timedelta(seconds=1)
    retry_max_delay: timedelta = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Lease:
    """A session's lease as the kernel last stored it (``agent.claim`` / ``agent.renew``)."""

    session_id: str
    expires_at: datetime


def retry_delay(limits: Limits, next_attempt: int) -> timedelta:
    """``min(base * 2**(n-1), max)`` for attempt ``n`` (``spec/kernel.md`` §11): 2 s, then 4 s."""
    return min(limits.retry_base_delay * (2 ** (next_attempt - 1)), limits.retry_max_delay)


@dataclass(slots=True)
class Decision:
    """What a request does: events to append (one batch), the reply, and follow-up messages."""

    events: list[ev.Event]
    reply: Any
    jobs: list[Job] = field(default_factory=list)
    notices: list[AssignmentNotice] = field(default_factory=list)
    error: KernelError | None = None
    """Set when the reply is an error that is nevertheless recorded (policy denial)."""
    notice_msg_id: str = ""
    """Deduplication id of the notices (default: the execution id)."""


class EventBuilder:
    """Numbers and links the events of one batch (``spec/events.md`` §2–§3).

    Sequences continue after ``last_sequence``; all events share ``now``; each event's
    ``causation_id`` is the previous event's id (the first: its own); the batch shares one
    ``correlation_id`` (given, or the first event's id).
    """

    def __init__(self, execution_id: str, last_sequence: int, now: datetime, correlation_id: str = "") -> None:
        self.execution_id = execution_id
        self.next_seq = last_sequence + 1
        self.now = now
        self.correlation_id = correlation_id
        self.events: list[ev.Event] = []

    def add(self, cls: type, payload: Any, step_id: str = "") -> ev.Event:
        eid = new_id()
        if not self.correlation_id:
            self.correlation_id = eid
        cause = self.events[-1].id if self.events else eid
        event = cls(id=eid, execution_id=self.execution_id, step_id=step_id, timestamp=self.now,
                    sequence=self.next_seq, causation_id=cause, correlation_id=self.correlation_id,
                    payload=payload)
        self.next_seq += 1
        self.events.append(event)
        return event


def _builder(rec: ExecutionRecord, now: datetime) -> EventBuilder:
    return EventBuilder(rec.id, rec.last_sequence, now)


def _terminal_error(rec: ExecutionRecord) -> KernelError:
    return KernelError("CONFLICT", f"execution is in terminal state: execution {rec.id} is {rec.status.value}",
                       {"execution_id": rec.id, "status": rec.status.value})


def _check_session(rec: ExecutionRecord, session_id: str) -> None:
    """Fence stale agents (DESIGN §5.3): only the current session may act."""
    if rec.session is None or rec.session.id != session_id:
        raise KernelError("UNAUTHORIZED", f"session not found: session {session_id}",
                          {"execution_id": rec.id, "session_id": session_id})


def _step(rec: ExecutionRecord, step_id: str) -> StepRecord:
    step = rec.steps.get(step_id)
    if step is None:
        raise KernelError("NOT_FOUND", f"not found: step {step_id}", {"execution_id": rec.id, "step_id": step_id})
    return step


# ---------------------------------------------------------------- create --
def create(execution_id: str, req: api.CreateExecution, now: datetime) -> Decision:
    """E1: ``execution.created``; the reply is the pending execution; one assignment notice."""
    b = EventBuilder(execution_id, 0, now)
    b.add(ev.ExecutionCreated, ev.ExecutionCreatedPayload(agent_id=req.agent_id, input=req.input, labels=req.labels))
    notice = AssignmentNotice(execution_id=execution_id, agent_id=req.agent_id, created_at=now)
    return Decision(b.events, None, notices=[notice])


# ----------------------------------------------------------------- claim --
def history_for_claim(rec: ExecutionRecord, encoded_size: Callable[[Any], int]) -> list:
    """Last 50 terminal entries, newest kept within 512 KiB of JSON (``spec/kernel.md`` §7)."""
    entries = rec.history[-HISTORY_CLAIM_LIMIT:]
    total, keep = 0, 0
    for entry in reversed(entries):
        total += encoded_size(entry)
        if total > HISTORY_CLAIM_BYTES:
            break
        keep += 1
    return entries[len(entries) - keep:] if keep else []


def claim_reply(rec: ExecutionRecord, history: list) -> api.ClaimReply:
    """The reply to a claim, from the record after the claim's events were folded in."""
    assert rec.session is not None
    return api.ClaimReply(execution_id=rec.id, session_id=rec.session.id, agent_id=rec.agent_id, input=rec.input,
                          labels=rec.labels or {}, history=history, last_sequence=rec.last_sequence)


def claim(rec: ExecutionRecord, req: api.Claim, now: datetime) -> Decision:
    """E2 (and re-claim after a lost lease, DESIGN §5.3).

    A pending execution gets a new session. A running or blocked one is re-claimed only
    when the same notice comes back with a higher delivery count — the broker redelivers
    only after the previous holder's lease (ack wait) lapsed — giving ``agent.timeout``,
    ``step.cancelled`` for active steps, ``execution.reset`` and ``execution.started`` under
    a new session; the old session is fenced from then on. A repeat of the claim that made
    the current session is answered with that session. ``reply`` is None: the caller
    answers with :func:`claim_reply` of the folded record.
    """
    if rec.agent_id != req.agent_id:
        raise KernelError("CONFLICT", f"execution {rec.id} belongs to agent {rec.agent_id}, not {req.agent_id}")
    if rec.terminal:
        raise _terminal_error(rec)
    started = ev.ExecutionStartedPayload(session_id=new_id(), consumer_id=req.consumer_id,
                                         notice_seq=req.notice_seq, delivery=req.delivery)
    s = rec.session
    if rec.status is ExecutionStatus.PENDING or s is None:
        b = _builder(rec, now)
        if rec.status is not ExecutionStatus.PENDING:  # running/blocked without a session (reset lost)
            _cancel_active(b, rec, "agent disconnected")
            b.add(ev.ExecutionReset, ev.ExecutionResetPayload(reason="recovery", from_status=rec.status.value))
        b.add(ev.ExecutionStarted, started)
        return Decision(b.events, None)
    if s.consumer_id == req.consumer_id and s.notice_seq == req.notice_seq and s.delivery == req.delivery:
        return Decision([], None)  # a retried claim: answered with the current session
    if req.notice_seq == s.notice_seq and req.delivery > s.delivery:
        b = _builder(rec, now)
        b.add(ev.AgentTimeout, ev.AgentTimeoutPayload(session_id=s.id))
        _cancel_active(b, rec, "agent disconnected")
        b.add(ev.ExecutionReset, ev.ExecutionResetPayload(reason="lease_expired", from_status=rec.status.value))
        b.add(ev.ExecutionStarted, started)
        return Decision(b.events, None)
    raise KernelError("CONFLICT", f"execution {rec.id} is already claimed by {s.consumer_id}",
                      {"execution_id": rec.id, "status": rec.status.value})


def _cancel_active(b: EventBuilder, rec: ExecutionRecord, reason: str) -> None:
    for step in rec.active_steps():
        b.add(ev.StepCancelled, ev.ReasonPayload(reason=reason), step.id)


# ---------------------------------------------------------------- intent --
def _replayed(rec: ExecutionRecord, step: StepRecord) -> api.IntentReply:
    held = step.approval and rec.status is ExecutionStatus.BLOCKED and rec.blocked_ref == step.id
    return api.IntentReply(accepted=True, step_id=step.id, step_status=step.status.value, pending_approval=held,
                           result=step.result if step.status is StepStatus.SUCCEEDED else None,
                           error=step.error if step.status is not StepStatus.SUCCEEDED else "")


def policy_input(rec: ExecutionRecord, tool_id: str, arguments: Any, now: datetime) -> PolicyInput:
    """What policy decides a tool call on (``spec/policy.md`` §1). An intent without arguments
    (``None`` on the wire) counts as absent: a rule with argument predicates does not match."""
    return PolicyInput(tool_id=tool_id, agent_id=rec.agent_id, labels=rec.labels or {},
                       arguments=NO_ARGUMENTS if arguments is None else arguments,
                       step_count=rec.step_count, duration_ms=int((now - rec.created_at).total_seconds() * 1000),
                       now=now)


def intent(rec: ExecutionRecord, req: api.IntentRequest, now: datetime, *, policy: PolicyEngine, limits: Limits,
           pick_runner: Callable[[str], str | None], rate_limited: bool = False) -> Decision:
    """The four intents (``spec/kernel.md`` §8), with idempotency keys honoured.

    ``invoke_tool`` with a key already used in this execution answers with that step
    (and its recorded result when it finished — durable resume, DESIGN §5.4) instead of
    creating another; a key whose step was cancelled or timed out starts a new step.
    ``rate_limited`` is the caller's verdict from the shared rate-limit counters for this
    call (``spec/policy.md`` §7); it matters only when policy allows by a rule with a
    ``rate_limit``. A policy denial and a rate-limit hit record ``intent.denied`` and
    answer ``FORBIDDEN`` / ``RATE_LIMITED`` (DESIGN §8). ``require_approval`` creates the
    step, records ``step.approval_required`` and blocks the execution (§16).
    """
    _check_session(rec, req.session_id)
    if isinstance(req.intent, api.Wait):
        wait_key = req.intent.idempotency_key or req.request_id
        done = rec.waits.get(wait_key) if wait_key else None
        if done is not None and done.resolved:  # durable resume of a wait whose signal arrived
            return Decision([], api.IntentReply(signal_received=True, signal_payload=done.payload))
        if done is not None and rec.status is ExecutionStatus.BLOCKED and rec.blocked_key == wait_key:
            return Decision([], api.IntentReply())  # a retried copy of the wait that blocked
    elif isinstance(req.intent, api.InvokeTool):
        key = req.intent.idempotency_key
        prior = rec.steps.get(rec.step_keys[key]) if key and key in rec.step_keys else None
        if prior is not None and prior.status not in (StepStatus.CANCELLED, StepStatus.TIMED_OUT):
            return Decision([], _replayed(rec, prior))  # a repeated call: its step, not a new one
    elif req.request_id and req.request_id in rec.request_keys:
        return Decision([], api.IntentReply())  # a retried complete/fail whose first copy was recorded
    if rec.terminal:
        raise _terminal_error(rec)
    if rec.status is ExecutionStatus.BLOCKED:
        raise KernelError("CONFLICT", f"execution is blocked: execution {rec.id} is blocked pending "
                          f"{'approval' if rec.blocked_reason == 'approval' else 'signal ' + rec.blocked_ref}")
    it = req.intent
    b = _builder(rec, now)
    match it:
        case api.InvokeTool():
            decision = policy.evaluate(policy_input(rec, it.tool_id, it.arguments, now))
            version = policy.version
            if decision.allowed and decision.rate_limit is not None and rate_limited:
                reason = f"rate limit exceeded: max {decision.rate_limit.max} per {decision.rate_limit.window}"
                b.add(ev.IntentDenied, ev.IntentDeniedPayload(
                    intent_type="invoke_tool", tool_id=it.tool_id, arguments=it.arguments,
                    idempotency_key=it.idempotency_key, reason=reason, rule_id=decision.rule_id,
                    policy_version=version))
                err = KernelError("RATE_LIMITED", f"{reason} (rule: {decision.rule_id})",
                                  {"rule_id": decision.rule_id, "tool_id": it.tool_id})
                return Decision(b.events, None, error=err)
            if decision.decision == "deny":
                b.add(ev.IntentDenied, ev.IntentDeniedPayload(
                    intent_type="invoke_tool", tool_id=it.tool_id, arguments=it.arguments,
                    idempotency_key=it.idempotency_key, reason=decision.reason, rule_id=decision.rule_id,
                    policy_version=version))
                err = KernelError("FORBIDDEN", f"policy denied: {decision.reason} (rule: {decision.rule_id})",
                                  {"rule_id": decision.rule_id, "tool_id": it.tool_id})
                return Decision(b.events, None, error=err)
            runner_id = ""
            if it.remote:
                runner_id = pick_runner(it.tool_id) or ""
                if not runner_id:
                    raise KernelError("NOT_FOUND", f"no runner advertises tool {it.tool_id!r}",
                                      {"tool_id": it.tool_id})
            step_id = new_id()
            if decision.decision == "require_approval":  # E6: held; no intent.accepted (§8.2)
                deadline = now + limits.step_timeout  # the rule's timeout_ms is ignored (§8.2)
                b.add(ev.StepCreated, ev.StepCreatedPayload(
                    tool_id=it.tool_id, arguments=it.arguments, deadline=deadline, remote=it.remote,
                    max_attempts=1, attempt=1, idempotency_key=it.idempotency_key), step_id)
                b.add(ev.StepApprovalRequired, ev.StepApprovalRequiredPayload(
                    tool_id=it.tool_id, arguments=it.arguments, remote=it.remote, reason=decision.reason,
                    rule_id=decision.rule_id, policy_version=version), step_id)
                b.add(ev.ExecutionBlocked, ev.ExecutionBlockedPayload(
                    reason="approval", ref=step_id, tool_id=it.tool_id, arguments=it.arguments, remote=it.remote))
                return Decision(b.events, api.IntentReply(step_id=step_id, step_status="pending",
                                                          pending_approval=True))
            timeout = timedelta(milliseconds=decision.timeout_ms) if decision.timeout_ms > 0 else limits.step_timeout
            deadline = now + timeout
            details: dict[str, Any] = {"tool_id": it.tool_id}
            if it.arguments is not None:
                details["arguments"] = it.arguments
            if it.idempotency_key:
                details["idempotency_key"] = it.idempotency_key
            b.add(ev.IntentAccepted, ev.IntentAcceptedPayload(intent_type="invoke_tool", details=details,
                                                              rule_id=decision.rule_id, policy_version=version))
            b.add(ev.StepCreated, ev.StepCreatedPayload(
                tool_id=it.tool_id, arguments=it.arguments, deadline=deadline, remote=it.remote,
                max_attempts=MAX_ATTEMPTS, attempt=1, idempotency_key=it.idempotency_key), step_id)
            jobs = []
            if it.remote:
                job = Job(id=new_id(), execution_id=rec.id, step_id=step_id, tool_id=it.tool_id, attempt=1,
                          deadline=deadline, runner_id=runner_id, arguments=it.arguments)
                b.add(ev.StepDispatched, ev.StepDispatchedPayload(runner_id=runner_id, job_id=job.id,
                                                                  deadline=deadline), step_id)
                jobs.append(job)
            status = "dispatched" if it.remote else "pending"
            return Decision(b.events, api.IntentReply(step_id=step_id, step_status=status), jobs=jobs)
        case api.Complete() | api.Fail():
            if rec.active_steps():
                verb = "complete" if isinstance(it, api.Complete) else "fail"
                raise KernelError("CONFLICT", f"conflict: cannot {verb} with active steps in progress",
                                  {"active_steps": [s.id for s in rec.active_steps()]})
            if isinstance(it, api.Complete):
                b.add(ev.IntentAccepted, ev.IntentAcceptedPayload(
                    intent_type="complete", details=None if it.output is None else {"output": it.output}))
                b.add(ev.ExecutionCompleted, ev.ExecutionCompletedPayload(output=it.output))
            else:
                b.add(ev.IntentAccepted, ev.IntentAcceptedPayload(intent_type="fail", details={"error": it.error}))
                b.add(ev.ExecutionFailed, ev.ErrorPayload(error=it.error))
            return Decision(b.events, api.IntentReply())
        case api.Wait():
            key = it.idempotency_key or req.request_id
            wait_details: dict[str, Any] = {"signal_type": it.signal_type}
            if key:
                wait_details["idempotency_key"] = key
            b.add(ev.IntentAccepted, ev.IntentAcceptedPayload(intent_type="wait", details=wait_details))
            pending = next((s for s in rec.pending_signals if s.signal_type == it.signal_type), None)
            if pending is not None:
                b.add(ev.ExecutionResumed, ev.ExecutionResumedPayload(
                    reason=f"signal received: {it.signal_type}", signal_id=pending.id, idempotency_key=key))
                return Decision(b.events, api.IntentReply(signal_received=True, signal_payload=pending.payload))
            b.add(ev.ExecutionBlocked, ev.ExecutionBlockedPayload(reason="signal", ref=it.signal_type,
                                                                  idempotency_key=key))
            return Decision(b.events, api.IntentReply())
    raise KernelError("VALIDATION_ERROR", "unknown intent type")  # pragma: no cover - union is closed


# ----------------------------------------------------------- step result --
def step_result(rec: ExecutionRecord, req: api.StepResult, now: datetime, *, limits: Limits) -> Decision:
    """A local step's outcome from the session's agent (S7/S8/S9).

    A failure reported ``retryable`` with attempts left records ``step.failed`` (retryable)
    and ``step.retried`` with the retry's ``not_before`` and a fresh deadline; the reply
    tells the agent to run the body again after the delay (``spec/kernel.md`` §11, here
    for local steps too)."""
    _check_session(rec, req.session_id)
    step = _step(rec, req.step_id)
    if step.remote:
        raise KernelError("VALIDATION_ERROR", f"step {step.id} is remote; its runner reports the result")
    if not step.active:
        succeeded = step.status is StepStatus.SUCCEEDED
        return _repeat_of_outcome(step, (succeeded and step.result == req.data) if req.success else not succeeded,
                                  api.StepResultReply())
    if rec.terminal:
        raise _terminal_error(rec)
    b = _builder(rec, now)
    if req.success:
        b.add(ev.StepCompleted, ev.StepCompletedPayload(result=req.data), step.id)
        return Decision(b.events, api.StepResultReply())
    retry = _fail(b, step, req.error, req.retryable, limits, local=True)
    if retry is None:
        return Decision(b.events, api.StepResultReply())
    attempt, not_before = retry
    return Decision(b.events, api.StepResultReply(
        retry_attempt=attempt, retry_delay_ms=int((not_before - now).total_seconds() * 1000)))


def _fail(b: EventBuilder, step: StepRecord, error: str, retryable: bool, limits: Limits, *,
          local: bool) -> tuple[int, datetime] | None:
    """``step.failed``, and when the failure is retryable with attempts left, ``step.retried``
    (S9, ``spec/kernel.md`` §11). Returns the next attempt and when it may start, or None.
    A local step's retry carries its new deadline; a remote one's comes with its job."""
    error = error or "tool failed"
    if not (retryable and step.attempt < step.max_attempts):
        b.add(ev.StepFailed, ev.StepFailedPayload(error=error, retryable=False), step.id)
        return None
    nxt = step.attempt + 1
    not_before = b.now + retry_delay(limits, nxt)
    b.add(ev.StepFailed, ev.StepFailedPayload(error=error, retryable=True), step.id)
    b.add(ev.StepRetried, ev.StepRetriedPayload(
        next_attempt=nxt, not_before=not_before, deadline=not_before + limits.step_timeout if local else None),
        step.id)
    return nxt, not_before


def _repeat_of_outcome(step: StepRecord, same: bool, reply: Any = None) -> Decision:
    """A report for a finished step: a retried copy of the recorded outcome is answered as
    the first was (requests are retried when a reply is lost); anything else is a conflict."""
    if same:
        return Decision([], reply if reply is not None else api.Ok())
    raise KernelError("CONFLICT", f"step already resolved: step {step.id} is {step.status.value}",
                      {"step_id": step.id, "status": step.status.value})


# ---------------------------------------------------------------- signal --
def signal(rec: ExecutionRecord, req: api.SignalExecution, now: datetime, *, limits: Limits,
           pick_runner: Callable[[str], str | None]) -> Decision:
    """``signal.received``, and what it resumes (``spec/kernel.md`` §15, §16).

    The awaited signal type resumes a ``wait`` (E7). ``step.approve`` with payload
    ``{step_id, approved, reason?}`` on an execution held for approval grants the step
    (a local step gets a fresh deadline, a remote one its job) or denies it
    (``step.failed``), then resumes (E8/E9). Unlike the original, an approval signal that
    names another step or whose payload is not an object is refused (``VALIDATION_ERROR``)
    before anything is recorded, and the approval signal is consumed rather than left pending.
    """
    if req.request_id and req.request_id in rec.request_keys:
        return Decision([], api.Ok())
    if rec.terminal:
        raise _terminal_error(rec)
    approval = (req.signal_type == APPROVE_SIGNAL and rec.status is ExecutionStatus.BLOCKED
                and rec.blocked_reason == "approval")
    if approval:
        p = req.payload
        if not isinstance(p, dict):
            raise KernelError("VALIDATION_ERROR", "approval payload must be an object "
                              "{step_id, approved, reason?}", {"execution_id": rec.id})
        if p.get("step_id") != rec.blocked_ref:
            raise KernelError("VALIDATION_ERROR", f"approval step_id {p.get('step_id')!r} does not match "
                              f"blocked ref {rec.blocked_ref!r}", {"blocked_ref": rec.blocked_ref})
        approved = p.get("approved", False)
        reason = p.get("reason") or ""
        if not isinstance(approved, bool) or not isinstance(reason, str):
            raise KernelError("VALIDATION_ERROR", "approval 'approved' must be a boolean and 'reason' a string")
    b = _builder(rec, now)
    sig = b.add(ev.SignalReceived, ev.SignalReceivedPayload(signal_type=req.signal_type, payload=req.payload))
    jobs: list[Job] = []
    if approval:
        step = _step(rec, rec.blocked_ref)
        if approved:
            deadline = now + limits.step_timeout
            if step.remote:
                runner_id = pick_runner(step.tool_id) or ""
                if not runner_id:
                    raise KernelError("NOT_FOUND", f"no runner advertises tool {step.tool_id!r}",
                                      {"tool_id": step.tool_id})
                job = Job(id=new_id(), execution_id=rec.id, step_id=step.id, tool_id=step.tool_id,
                          attempt=step.attempt, deadline=deadline, runner_id=runner_id, arguments=step.arguments)
                b.add(ev.StepDispatched, ev.StepDispatchedPayload(runner_id=runner_id, job_id=job.id,
                                                                  deadline=deadline), step.id)
                jobs.append(job)
            else:
                b.add(ev.StepDispatched, ev.StepDispatchedPayload(deadline=deadline), step.id)
            b.add(ev.ExecutionResumed, ev.ExecutionResumedPayload(reason="approval granted", signal_id=sig.id))
        else:
            b.add(ev.StepFailed, ev.StepFailedPayload(error=reason or "approval denied by human",
                                                      retryable=False), step.id)
            b.add(ev.ExecutionResumed, ev.ExecutionResumedPayload(reason="approval denied", signal_id=sig.id))
    elif (rec.status is ExecutionStatus.BLOCKED and rec.blocked_reason == "signal"
          and rec.blocked_ref == req.signal_type):
        b.add(ev.ExecutionResumed, ev.ExecutionResumedPayload(
            reason=f"signal received: {req.signal_type}", signal_id=sig.id, idempotency_key=rec.blocked_key))
    return Decision(b.events, api.Ok(), jobs=jobs)


# ---------------------------------------------------------------- cancel --
def cancel(rec: ExecutionRecord, req: api.CancelExecution, now: datetime) -> Decision:
    """E14: ``step.cancelled`` for every active step, then ``execution.cancelled``. ``reply`` is
    None: the caller answers with the folded record's view."""
    if req.request_id and req.request_id in rec.request_keys:
        return Decision([], None)
    if rec.terminal:
        raise _terminal_error(rec)
    b = _builder(rec, now)
    _cancel_active(b, rec, "execution cancelled")
    b.add(ev.ExecutionCancelled, ev.ReasonPayload(reason="cancelled by request"))
    return Decision(b.events, None)


# ---------------------------------------------------------------- timers --
def _lease_lapsed(rec: ExecutionRecord, lease: Lease | None, now: datetime) -> bool:
    return (lease is not None and rec.session is not None and lease.session_id == rec.session.id
            and rec.status in (ExecutionStatus.RUNNING, ExecutionStatus.BLOCKED) and now >= lease.expires_at)


def next_due(rec: ExecutionRecord, limits: Limits, lease: Lease | None) -> datetime | None:
    """When :func:`expire` next has something to do for ``rec`` (None: never, e.g. terminal)."""
    if rec.terminal:
        return None
    due: list[datetime] = []
    if limits.execution_timeout > timedelta(0):
        due.append(rec.created_at + limits.execution_timeout)
    if rec.status is not ExecutionStatus.BLOCKED:
        due.extend(s.deadline for s in rec.active_steps())
    if (lease is not None and rec.session is not None and lease.session_id == rec.session.id
            and rec.status in (ExecutionStatus.RUNNING, ExecutionStatus.BLOCKED)):
        due.append(lease.expires_at)
    return min(due) if due else None


def expire(rec: ExecutionRecord, now: datetime, *, limits: Limits, lease: Lease | None = None) -> Decision:
    """Deadlines that passed by ``now`` (DESIGN §4.7; ``spec/kernel.md`` §13), in this order:

    * the execution's deadline (``created_at + execution_timeout``): E13, ``step.cancelled``
      for active steps and ``execution.failed`` "execution exceeded maximum duration";
    * the session's lease (no ``agent.renew`` in time): ``agent.timeout``, ``step.cancelled``
      for active steps, ``execution.reset`` (``lease_expired``) and a new assignment notice,
      so another instance takes the execution over and the silent one is fenced;
    * step deadlines, unless the execution is blocked: ``step.timed_out`` for each overdue
      step. Unlike the original (E12), the execution goes on: the agent's call raises a
      timeout error that the handler may handle.

    Nothing due gives a decision without events. Any replica may call this; the append
    guard makes a second firing of the same deadline a no-op.
    """
    if rec.terminal:
        return Decision([], None)
    b = _builder(rec, now)
    if limits.execution_timeout > timedelta(0) and now >= rec.created_at + limits.execution_timeout:
        _cancel_active(b, rec, "execution exceeded maximum duration")
        b.add(ev.ExecutionFailed, ev.ErrorPayload(error="execution exceeded maximum duration"))
        return Decision(b.events, None)
    if _lease_lapsed(rec, lease, now):
        assert rec.session is not None
        b.add(ev.AgentTimeout, ev.AgentTimeoutPayload(session_id=rec.session.id))
        _cancel_active(b, rec, "agent lease expired")
        reset = b.add(ev.ExecutionReset, ev.ExecutionResetPayload(reason="lease_expired",
                                                                  from_status=rec.status.value))
        notice = AssignmentNotice(execution_id=rec.id, agent_id=rec.agent_id, created_at=rec.created_at)
        return Decision(b.events, None, notices=[notice], notice_msg_id=f"{rec.id}:{reset.id}")
    if rec.status is not ExecutionStatus.BLOCKED:
        for step in rec.active_steps():
            if now >= step.deadline:
                b.add(ev.StepTimedOut, ev.EmptyPayload(), step.id)
    return Decision(b.events, None)


# ---------------------------------------------------------------- runner --
def runner_started(rec: ExecutionRecord, req: api.RunnerStarted, now: datetime) -> Decision:
    """A runner instance is about to run a job (S6).

    ``proceed=False`` tells it to drop the job: the execution or step is over, or the job
    is stale. A job redelivered to another instance while the step was ``running`` means
    the first instance was lost (DESIGN §5.5): the attempt fails as ``runner_lost`` and,
    while attempts remain, the new instance runs the next attempt.
    """
    step = _step(rec, req.step_id)
    if rec.terminal or not step.active:
        return Decision([], api.StartedReply(proceed=False, reason=f"step is {step.status.value}"))
    if step.job_id != req.job_id:
        return Decision([], api.StartedReply(proceed=False, reason="stale job"))
    b = _builder(rec, now)
    if step.status is StepStatus.RUNNING:
        if step.consumer_id == req.consumer_id:
            return Decision([], api.StartedReply(proceed=True, attempt=step.attempt))
        lost = f"runner_lost: {step.runner_id} instance {step.consumer_id} stopped before reporting a result"
        if step.attempt >= step.max_attempts:
            b.add(ev.StepFailed, ev.StepFailedPayload(error=lost, retryable=False), step.id)
            return Decision(b.events, api.StartedReply(proceed=False, reason="attempts exhausted"))
        b.add(ev.StepFailed, ev.StepFailedPayload(error=lost, retryable=True), step.id)
        b.add(ev.StepRetried, ev.StepRetriedPayload(next_attempt=step.attempt + 1), step.id)
        b.add(ev.StepDispatched, ev.StepDispatchedPayload(runner_id=req.runner_id, job_id=req.job_id,
                                                          deadline=step.deadline), step.id)
        attempt = step.attempt + 1
    else:
        attempt = step.attempt
    b.add(ev.StepStarted, ev.StepStartedPayload(runner_id=req.runner_id, consumer_id=req.consumer_id), step.id)
    return Decision(b.events, api.StartedReply(proceed=True, attempt=attempt))


def runner_result(rec: ExecutionRecord, req: api.RunnerResult, now: datetime, *, limits: Limits) -> Decision:
    """A runner's outcome for a job (S7/S8/S9, ``spec/kernel.md`` §9.5, §11)."""
    step = _step(rec, req.step_id)
    if step.job_id != req.job_id and step.active:
        raise KernelError("CONFLICT", f"stale job {req.job_id} for step {step.id}", {"job_id": req.job_id})
    if not step.active:
        return _repeat_of_outcome(step, step.job_id == req.job_id and (step.status is StepStatus.SUCCEEDED) == req.success)
    if rec.terminal:
        raise _terminal_error(rec)
    b = _builder(rec, now)
    if req.success:
        b.add(ev.StepCompleted, ev.StepCompletedPayload(result=req.data), step.id)
        return Decision(b.events, api.Ok())
    retry = _fail(b, step, req.error, req.retryable, limits, local=False)
    if retry is not None:
        nxt, not_before = retry
        deadline = not_before + limits.step_timeout
        job = Job(id=new_id(), execution_id=rec.id, step_id=step.id, tool_id=step.tool_id, attempt=nxt,
                  deadline=deadline, runner_id=req.runner_id, arguments=step.arguments, not_before=not_before)
        b.add(ev.StepDispatched, ev.StepDispatchedPayload(runner_id=req.runner_id, job_id=job.id,
                                                          deadline=deadline), step.id)
        return Decision(b.events, api.Ok(), jobs=[job])
    return Decision(b.events, api.Ok())
