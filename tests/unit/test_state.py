"""Unit tests for the event-sourcing fold (``kernel/state.py``) and the pure kernel decisions
(``kernel/machine.py``). No broker: decisions are applied to records with ``apply_batch``,
after a JSON round trip of the batch, exactly as the service stores them."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest

from kernel import machine
from kernel.errors import KernelError
from kernel.machine import Decision, EventBuilder, Limits
from kernel.policy import Policy, PolicyDecision, PolicyInput, parse_policy, permissive
from kernel.state import HISTORY_LIMIT, REQUEST_KEY_LIMIT, FoldError, apply, apply_batch
from schemas import api, codec
from schemas import events as ev
from schemas.events import EventBatch
from schemas.records import ExecutionRecord, ExecutionStatus, HistoryEntry, StepStatus

T0 = datetime(2026, 3, 25, 12, 0, 0, tzinfo=timezone.utc)
EID = "exec-1"
AGENT = "agent-a"


class Harness:
    """One execution driven through ``kernel.machine`` and folded with ``kernel.state``."""

    def __init__(self, *, policy: Policy | None = None, runners: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, input: Any = None) -> None:
        self.policy = policy or permissive()
        self.runners = runners if runners is not None else {}
        self.limits = Limits()
        self.clock = T0
        self.stream_seq = 0
        self.log: list[ev.Event] = []
        self.batches: list[tuple[EventBatch, int]] = []
        self.rec: ExecutionRecord | None = None
        self.session_id = ""
        d = machine.create(EID, api.CreateExecution(agent_id=AGENT, input=input, labels=labels), self.now())
        self.commit(d, request_key=EID)

    def now(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def commit(self, decision: Decision, request_key: str = "") -> Decision:
        if decision.events:
            batch = EventBatch(execution_id=EID, events=decision.events, request_key=request_key)
            batch = codec.decode_batch(codec.encode(batch))  # as stored on the stream
            self.stream_seq += 1
            self.rec = apply_batch(self.rec, batch, self.stream_seq)
            self.batches.append((batch, self.stream_seq))
            self.log.extend(batch.events)
        return decision

    # -- requests ---------------------------------------------------------------------------
    def claim(self, consumer: str = "c1", notice_seq: int = 1, delivery: int = 1, agent: str = AGENT) -> Decision:
        d = self.commit(machine.claim(self.rec, api.Claim(execution_id=EID, agent_id=agent, consumer_id=consumer,
                                                          notice_seq=notice_seq, delivery=delivery), self.now()))
        if self.rec.session is not None:
            self.session_id = self.rec.session.id
        return d

    def intent(self, intent: Any, session_id: str | None = None, request_id: str = "") -> Decision:
        req = api.IntentRequest(execution_id=EID, session_id=self.session_id if session_id is None else session_id,
                                intent=intent, request_id=request_id)
        return self.commit(machine.intent(self.rec, req, self.now(), policy=self.policy, limits=self.limits,
                                          pick_runner=lambda tool_id: self.runners.get(tool_id)), request_id)

    def invoke(self, tool_id: str = "calc", arguments: Any = None, key: str = "", remote: bool = False) -> Decision:
        return self.intent(api.InvokeTool(tool_id=tool_id, arguments=arguments, idempotency_key=key, remote=remote))

    def step_result(self, step_id: str, success: bool = True, data: Any = None, error: str = "",
                    session_id: str | None = None, retryable: bool = False) -> Decision:
        req = api.StepResult(execution_id=EID, session_id=self.session_id if session_id is None else session_id,
                             step_id=step_id, success=success, data=data, error=error, retryable=retryable)
        return self.commit(machine.step_result(self.rec, req, self.now(), limits=self.limits))

    def signal(self, signal_type: str, payload: Any = None, request_id: str = "") -> Decision:
        req = api.SignalExecution(execution_id=EID, signal_type=signal_type, payload=payload, request_id=request_id)
        return self.commit(machine.signal(self.rec, req, self.now(), limits=self.limits,
                                          pick_runner=lambda tool_id: self.runners.get(tool_id)), request_id)

    def expire(self, at: datetime, lease: machine.Lease | None = None) -> Decision:
        return self.commit(machine.expire(self.rec, at, limits=self.limits, lease=lease))

    def cancel(self, request_id: str = "") -> Decision:
        return self.commit(machine.cancel(self.rec, api.CancelExecution(execution_id=EID, request_id=request_id),
                                          self.now()), request_id)

    def started(self, step_id: str, job_id: str, consumer: str = "r1-aaaa", runner: str = "r1") -> Decision:
        req = api.RunnerStarted(runner_id=runner, consumer_id=consumer, job_id=job_id, execution_id=EID,
                                step_id=step_id)
        return self.commit(machine.runner_started(self.rec, req, self.now()))

    def result(self, step_id: str, job_id: str, success: bool = True, data: Any = None, error: str = "",
               retryable: bool = False, consumer: str = "r1-aaaa", runner: str = "r1") -> Decision:
        req = api.RunnerResult(runner_id=runner, consumer_id=consumer, job_id=job_id, execution_id=EID,
                               step_id=step_id, success=success, data=data, error=error, retryable=retryable)
        return self.commit(machine.runner_result(self.rec, req, self.now(), limits=self.limits))

    def manual(self, *items: tuple[type, Any, str]) -> list[ev.Event]:
        """Append events built directly (e.g. a step timeout, which has no request)."""
        b = EventBuilder(EID, self.rec.last_sequence, self.now())
        for cls, payload, step_id in items:
            b.add(cls, payload, step_id)
        self.commit(Decision(b.events, None))
        return b.events


def types(events: list[ev.Event]) -> list[str]:
    return [e.type for e in events]


@contextlib.contextmanager
def kernel_error(code: str) -> Iterator[pytest.ExceptionInfo[KernelError]]:
    """``pytest.raises`` for a KernelError carrying ``code``."""
    with pytest.raises(KernelError) as info:
        yield info
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value}"


@pytest.fixture
def h() -> Harness:
    """An execution claimed by consumer ``c1`` (status running)."""
    x = Harness(runners={"compute.heavy": "r1"})
    x.claim()
    return x


# ----------------------------------------------------------------- happy path --
def test_local_tool_flow_create_claim_invoke_result_complete() -> None:
    x = Harness(input={"q": 1}, labels={"env": "dev"})
    assert x.rec.status is ExecutionStatus.PENDING
    assert (x.rec.id, x.rec.agent_id, x.rec.input, x.rec.labels) == (EID, AGENT, {"q": 1}, {"env": "dev"})
    assert x.rec.session is None

    d = x.claim()
    assert types(d.events) == ["execution.started"]
    assert x.rec.status is ExecutionStatus.RUNNING
    assert x.rec.session.consumer_id == "c1" and x.rec.session.id == d.events[0].payload.session_id

    d = x.invoke("calc", {"a": 1}, key="k1")
    assert types(d.events) == ["intent.accepted", "step.created"]
    assert d.jobs == []
    step_id = d.reply.step_id
    assert d.reply.accepted and d.reply.step_status == "pending"
    assert d.events[1].step_id == step_id
    assert d.events[0].payload.details == {"tool_id": "calc", "arguments": {"a": 1}, "idempotency_key": "k1"}
    step = x.rec.steps[step_id]
    assert (step.status, step.remote, step.max_attempts, step.attempt, step.tool_id, step.arguments) == (
        StepStatus.PENDING, False, 3, 1, "calc", {"a": 1})
    assert step.deadline == d.events[1].timestamp + timedelta(minutes=5)
    assert x.rec.step_count == 1 and x.rec.step_keys == {"k1": step_id}

    d = x.step_result(step_id, data=42)
    assert types(d.events) == ["step.completed"]
    assert d.reply == api.StepResultReply()
    assert x.rec.steps[step_id].status is StepStatus.SUCCEEDED and x.rec.steps[step_id].result == 42
    assert [(e.step_id, e.status, e.result) for e in x.rec.history] == [(step_id, StepStatus.SUCCEEDED, 42)]

    d = x.intent(api.Complete(output={"answer": 42}))
    assert types(d.events) == ["intent.accepted", "execution.completed"]
    assert x.rec.status is ExecutionStatus.COMPLETED and x.rec.terminal
    assert x.rec.output == {"answer": 42}

    # the whole log: gap-free from 1, one stream message per transition
    assert [e.sequence for e in x.log] == list(range(1, len(x.log) + 1))
    assert x.rec.last_sequence == len(x.log) == 7
    assert x.rec.stream_seq == 5


def test_full_log_types_and_record_round_trip() -> None:
    x = Harness()
    x.claim()
    sid = x.invoke("calc").reply.step_id
    x.step_result(sid, data="ok")
    x.intent(api.Complete(output="done"))
    assert types(x.log) == ["execution.created", "execution.started", "intent.accepted", "step.created",
                            "step.completed", "intent.accepted", "execution.completed"]
    # the record is a pure projection: folding the stored batches again rebuilds it exactly
    rebuilt = None
    for batch, seq in x.batches:
        rebuilt = apply_batch(rebuilt, batch, seq)
    assert rebuilt == x.rec
    # folding event by event gives the same execution state
    one_by_one = None
    for e in x.log:
        one_by_one = apply(one_by_one, e)
    assert (one_by_one.status, one_by_one.output, one_by_one.steps, one_by_one.history, one_by_one.last_sequence) == (
        x.rec.status, x.rec.output, x.rec.steps, x.rec.history, x.rec.last_sequence)
    # and the record survives the codec used by the key-value store
    assert codec.RECORD_DECODER.decode(codec.encode(x.rec)) == x.rec


def test_event_builder_links_events_of_a_batch() -> None:
    b = EventBuilder(EID, 4, T0)
    e1 = b.add(ev.SignalReceived, ev.SignalReceivedPayload(signal_type="s"))
    e2 = b.add(ev.ExecutionResumed, ev.ExecutionResumedPayload(reason="r"))
    e3 = b.add(ev.StepCancelled, ev.ReasonPayload(reason="x"), "step-9")
    assert b.events == [e1, e2, e3]
    assert [e.sequence for e in b.events] == [5, 6, 7]
    assert e1.causation_id == e1.id
    assert e2.causation_id == e1.id
    assert e3.causation_id == e2.id
    assert {e.correlation_id for e in b.events} == {e1.id}
    assert {e.timestamp for e in b.events} == {T0}
    assert {e.execution_id for e in b.events} == {EID}
    assert (e1.step_id, e3.step_id) == ("", "step-9")
    assert len({e.id for e in b.events}) == 3


def test_event_builder_uses_a_given_correlation_id() -> None:
    b = EventBuilder(EID, 0, T0, correlation_id="corr-1")
    e1 = b.add(ev.ExecutionCreated, ev.ExecutionCreatedPayload(agent_id=AGENT))
    e2 = b.add(ev.ExecutionStarted, ev.ExecutionStartedPayload(session_id="s", consumer_id="c"))
    assert (e1.correlation_id, e2.correlation_id) == ("corr-1", "corr-1")
    assert e1.causation_id == e1.id and e2.causation_id == e1.id
    assert e1.sequence == 1


def test_each_transition_is_one_correlated_batch(h: Harness) -> None:
    d1 = h.invoke("compute.heavy", remote=True)
    d2 = h.cancel()
    for d in (d1, d2):
        assert len({e.correlation_id for e in d.events}) == 1
        assert d.events[0].causation_id == d.events[0].id
        assert all(b.causation_id == a.id for a, b in zip(d.events, d.events[1:]))
    assert d1.events[0].correlation_id != d2.events[0].correlation_id


# ----------------------------------------------------------------- fold errors --
def test_fold_rejects_a_sequence_gap() -> None:
    x = Harness()
    b = EventBuilder(EID, x.rec.last_sequence + 1, T0)  # skips one sequence number
    b.add(ev.SignalReceived, ev.SignalReceivedPayload(signal_type="s"))
    with pytest.raises(FoldError, match="sequence gap: expected 2, got 3"):
        apply_batch(x.rec, EventBatch(execution_id=EID, events=b.events), 2)


def test_fold_rejects_a_repeated_sequence() -> None:
    x = Harness()
    b = EventBuilder(EID, 0, T0)
    b.add(ev.SignalReceived, ev.SignalReceivedPayload(signal_type="s"))
    with pytest.raises(FoldError, match="sequence gap"):
        apply(x.rec, b.events[0])


def test_fold_rejects_a_step_event_for_an_unknown_step() -> None:
    x = Harness()
    x.claim()
    b = EventBuilder(EID, x.rec.last_sequence, T0)
    b.add(ev.StepCompleted, ev.StepCompletedPayload(result=1), "no-such-step")
    with pytest.raises(FoldError, match="step.completed for unknown step no-such-step"):
        apply(x.rec, b.events[0])


@pytest.mark.parametrize("first", [
    (ev.ExecutionStarted, ev.ExecutionStartedPayload(session_id="s", consumer_id="c"), 1),
    (ev.ExecutionCreated, ev.ExecutionCreatedPayload(agent_id=AGENT), 2),
])
def test_fold_rejects_a_log_not_starting_with_execution_created(first) -> None:
    cls, payload, seq = first
    b = EventBuilder(EID, seq - 1, T0)
    b.add(cls, payload)
    with pytest.raises(FoldError, match="log must start with execution.created"):
        apply(None, b.events[0])


def test_fold_rejects_execution_created_in_the_middle() -> None:
    x = Harness()
    b = EventBuilder(EID, x.rec.last_sequence, T0)
    b.add(ev.ExecutionCreated, ev.ExecutionCreatedPayload(agent_id=AGENT))
    with pytest.raises(FoldError, match="execution.created in the middle"):
        apply(x.rec, b.events[0])


def test_fold_rejects_a_second_step_created_for_the_same_step() -> None:
    x = Harness()
    x.claim()
    sid = x.invoke().reply.step_id
    b = EventBuilder(EID, x.rec.last_sequence, T0)
    b.add(ev.StepCreated, ev.StepCreatedPayload(tool_id="calc", deadline=T0), sid)
    with pytest.raises(FoldError, match="step.created for existing step"):
        apply(x.rec, b.events[0])


def test_apply_batch_sets_stream_seq() -> None:
    x = Harness()
    assert x.rec.stream_seq == 1
    x.claim()
    assert x.rec.stream_seq == 2


def test_apply_batch_counts_batches_and_marks_every_32nd(h: Harness) -> None:
    for i in range(70):
        h.signal("s", i)
    assert h.rec.batches == 72  # create + claim + 70 signals
    assert h.rec.batch_marks == [(b.events[0].sequence, seq) for b, seq in (h.batches[0], h.batches[32],
                                                                            h.batches[64])]
    assert h.rec.batch_marks[0] == (1, 1)


# -------------------------------------------------------- complete / fail / fencing --
def test_complete_and_fail_are_refused_while_steps_are_active(h: Harness) -> None:
    sid = h.invoke().reply.step_id
    before = h.rec.last_sequence
    with kernel_error("CONFLICT") as info:
        h.intent(api.Complete(output=1))
    assert "active steps" in info.value.message and info.value.details == {"active_steps": [sid]}
    with kernel_error("CONFLICT"):
        h.intent(api.Fail(error="boom"))
    assert h.rec.last_sequence == before and h.rec.status is ExecutionStatus.RUNNING
    h.step_result(sid, success=False, error="tool broke")
    d = h.intent(api.Fail(error="boom"))
    assert types(d.events) == ["intent.accepted", "execution.failed"]
    assert h.rec.status is ExecutionStatus.FAILED and h.rec.error == "boom"


@pytest.mark.parametrize("intent", [
    api.InvokeTool(tool_id="calc"), api.Complete(), api.Fail(error="x"), api.Wait(signal_type="go"),
], ids=["invoke_tool", "complete", "fail", "wait"])
def test_intent_with_a_wrong_session_is_unauthorized(h: Harness, intent: Any) -> None:
    with kernel_error("UNAUTHORIZED") as info:
        h.intent(intent, session_id="not-the-session")
    assert "not-the-session" in info.value.message
    assert h.rec.last_sequence == 2


def test_intent_before_any_claim_is_unauthorized() -> None:
    x = Harness()
    with kernel_error("UNAUTHORIZED"):
        x.intent(api.Complete(), session_id="whatever")


def test_step_result_with_a_wrong_session_is_unauthorized(h: Harness) -> None:
    sid = h.invoke().reply.step_id
    with kernel_error("UNAUTHORIZED"):
        h.step_result(sid, session_id="stale")
    assert h.rec.steps[sid].status is StepStatus.PENDING


@pytest.mark.parametrize("intent", [api.InvokeTool(tool_id="calc"), api.Complete(), api.Wait(signal_type="go")],
                         ids=["invoke_tool", "complete", "wait"])
def test_intent_on_a_terminal_execution_is_a_conflict(h: Harness, intent: Any) -> None:
    h.intent(api.Complete(output=1))
    with kernel_error("CONFLICT") as info:
        h.intent(intent)
    assert "terminal" in info.value.message and info.value.details["status"] == "completed"


@pytest.mark.parametrize("intent", [api.InvokeTool(tool_id="calc"), api.Complete(), api.Wait(signal_type="other")],
                         ids=["invoke_tool", "complete", "wait"])
def test_intent_while_blocked_is_a_conflict(h: Harness, intent: Any) -> None:
    h.intent(api.Wait(signal_type="go"))
    assert h.rec.status is ExecutionStatus.BLOCKED
    with kernel_error("CONFLICT") as info:
        h.intent(intent)
    assert "blocked" in info.value.message and "go" in info.value.message


def test_repeated_complete_with_the_same_request_id_is_answered_without_events(h: Harness) -> None:
    h.intent(api.Complete(output=1), request_id="req-complete")
    n = h.rec.last_sequence
    d = h.intent(api.Complete(output=1), request_id="req-complete")
    assert d.events == [] and d.reply.accepted
    assert h.rec.last_sequence == n


# ---------------------------------------------------------------------- policy --
def test_policy_denial_records_intent_denied_and_creates_no_step() -> None:
    policy = parse_policy({"rules": [{"id": "no-shell", "priority": 1, "when": {"tool_id": "shell_*"},
                                      "then": {"decision": "deny", "reason": "shell is off"}}],
                           "default": {"decision": "allow"}})
    x = Harness(policy=policy)
    x.claim()
    d = x.invoke("shell_exec", {"cmd": "ls"}, key="k-shell")
    assert types(d.events) == ["intent.denied"]
    assert d.reply is None and d.jobs == []
    assert isinstance(d.error, KernelError) and d.error.code == "FORBIDDEN"
    assert d.error.message == "policy denied: shell is off (rule: no-shell)"
    assert d.error.details == {"rule_id": "no-shell", "tool_id": "shell_exec"}
    p = d.events[0].payload
    assert (p.intent_type, p.tool_id, p.arguments, p.idempotency_key, p.reason, p.rule_id) == (
        "invoke_tool", "shell_exec", {"cmd": "ls"}, "k-shell", "shell is off", "no-shell")
    assert x.rec.steps == {} and x.rec.step_count == 0 and x.rec.step_keys == {}
    assert x.rec.status is ExecutionStatus.RUNNING
    # another tool is still allowed
    assert types(x.invoke("calc").events) == ["intent.accepted", "step.created"]


class RecordingPolicy:
    """Allows everything and keeps what it was asked."""

    version = "v-recording"

    def __init__(self) -> None:
        self.inputs: list[PolicyInput] = []

    def evaluate(self, inp: PolicyInput) -> PolicyDecision:
        self.inputs.append(inp)
        return PolicyDecision("allow", "recording")


def test_policy_input_carries_the_execution_facts() -> None:
    policy = RecordingPolicy()
    x = Harness(policy=policy, labels={"env": "prod"})  # type: ignore[arg-type]
    x.claim()
    first = x.invoke("calc", key="k1").reply.step_id
    x.step_result(first, data=1)
    x.invoke("calc", key="k1")              # an idempotent repeat is not evaluated again
    x.invoke("search", {"q": "cats"})
    assert [i.tool_id for i in policy.inputs] == ["calc", "search"]
    inp = policy.inputs[-1]
    assert (inp.action, inp.agent_id, dict(inp.labels), inp.arguments) == (
        "tool.invoke", AGENT, {"env": "prod"}, {"q": "cats"})
    assert (policy.inputs[0].step_count, inp.step_count) == (0, 1)  # steps created before this proposal
    created_at = x.rec.created_at
    step_created = x.rec.steps[x.log[-1].step_id].created_at
    assert inp.duration_ms == int((step_created - created_at).total_seconds() * 1000) > 0


def test_policy_sees_the_agent_and_labels() -> None:
    policy = parse_policy({"rules": [{"id": "prod-only", "priority": 1,
                                      "when": {"agent_id": AGENT, "labels": {"env": "prod"}},
                                      "then": {"decision": "allow"}}]})
    x = Harness(policy=policy, labels={"env": "prod"})
    x.claim()
    assert x.invoke().error is None
    y = Harness(policy=policy, labels={"env": "dev"})
    y.claim()
    assert y.invoke().error.code == "FORBIDDEN"


def test_policy_timeout_sets_the_step_deadline() -> None:
    policy = parse_policy({"rules": [{"id": "quick", "priority": 1, "then": {"decision": "allow", "timeout_ms": 1500}}]})
    x = Harness(policy=policy, runners={"slow": "r1"})
    x.claim()
    d = x.invoke("slow", remote=True)
    created = d.events[1]
    assert created.payload.deadline == created.timestamp + timedelta(milliseconds=1500)
    assert d.jobs[0].deadline == created.payload.deadline


# ---------------------------------------------------------------- remote steps --
def test_remote_invoke_dispatches_one_job(h: Harness) -> None:
    d = h.invoke("compute.heavy", {"n": 3}, key="k1", remote=True)
    assert types(d.events) == ["intent.accepted", "step.created", "step.dispatched"]
    sid = d.reply.step_id
    assert (d.reply.accepted, d.reply.step_status) == (True, "dispatched")
    created, dispatched = d.events[1].payload, d.events[2].payload
    assert (created.max_attempts, created.attempt, created.remote, created.tool_id) == (3, 1, True, "compute.heavy")
    assert [e.step_id for e in d.events[1:]] == [sid, sid]
    [job] = d.jobs
    assert (job.execution_id, job.step_id, job.tool_id, job.attempt, job.runner_id, job.arguments) == (
        EID, sid, "compute.heavy", 1, "r1", {"n": 3})
    assert (dispatched.runner_id, dispatched.job_id, dispatched.deadline) == ("r1", job.id, job.deadline)
    assert job.deadline == d.events[1].timestamp + timedelta(minutes=5)
    step = h.rec.steps[sid]
    assert (step.status, step.job_id, step.runner_id, step.max_attempts) == (StepStatus.DISPATCHED, job.id, "r1", 3)


def test_remote_invoke_without_a_runner_is_not_found(h: Harness) -> None:
    n = h.rec.last_sequence
    with kernel_error("NOT_FOUND") as info:
        h.invoke("nobody.serves.this", remote=True)
    assert "nobody.serves.this" in info.value.message
    assert info.value.details == {"tool_id": "nobody.serves.this"}
    assert h.rec.last_sequence == n and h.rec.steps == {}


# ----------------------------------------------------------------- idempotency --
def test_idempotency_key_repeat_returns_the_same_step_without_events(h: Harness) -> None:
    first = h.invoke("calc", key="k1")
    n = h.rec.last_sequence
    again = h.invoke("calc", key="k1")
    assert again.events == [] and again.jobs == []
    assert again.reply.step_id == first.reply.step_id and again.reply.step_status == "pending"
    assert h.rec.last_sequence == n and len(h.rec.steps) == 1
    # another key is another step
    assert h.invoke("calc", key="k2").reply.step_id != first.reply.step_id


def test_idempotency_key_after_success_returns_the_recorded_result(h: Harness) -> None:
    sid = h.invoke("calc", key="k1").reply.step_id
    h.step_result(sid, data={"sum": 3})
    d = h.invoke("calc", key="k1")
    assert d.events == []
    assert (d.reply.step_id, d.reply.step_status, d.reply.result, d.reply.error) == (sid, "succeeded", {"sum": 3}, "")


def test_idempotency_key_after_failure_returns_the_recorded_error(h: Harness) -> None:
    sid = h.invoke("calc", key="k1").reply.step_id
    h.step_result(sid, success=False, error="division by zero")
    d = h.invoke("calc", key="k1")
    assert d.events == []
    assert (d.reply.step_id, d.reply.step_status, d.reply.result, d.reply.error) == (
        sid, "failed", None, "division by zero")


def test_idempotency_key_repeat_survives_a_reclaim(h: Harness) -> None:
    sid = h.invoke("calc", key="k1").reply.step_id
    h.step_result(sid, data=7)
    h.claim(consumer="c2", delivery=2)  # lease lost, re-claimed under a new session
    d = h.invoke("calc", key="k1")
    assert (d.events, d.reply.step_id, d.reply.step_status, d.reply.result) == ([], sid, "succeeded", 7)


def test_idempotency_key_of_a_cancelled_step_creates_a_new_step(h: Harness) -> None:
    sid = h.invoke("calc", key="k1").reply.step_id
    h.claim(consumer="c2", delivery=2)  # cancels the active step ("agent disconnected")
    assert h.rec.steps[sid].status is StepStatus.CANCELLED
    d = h.invoke("calc", key="k1")
    assert types(d.events) == ["intent.accepted", "step.created"]
    assert d.reply.step_id != sid and h.rec.step_keys["k1"] == d.reply.step_id
    assert h.rec.step_count == 2


def test_idempotency_key_of_a_timed_out_step_creates_a_new_step(h: Harness) -> None:
    sid = h.invoke("calc", key="k1").reply.step_id
    h.manual((ev.StepTimedOut, ev.EmptyPayload(), sid))
    assert h.rec.steps[sid].status is StepStatus.TIMED_OUT
    assert h.rec.history[-1].error == "step timed out"
    d = h.invoke("calc", key="k1")
    assert d.reply.step_id != sid and d.reply.step_status == "pending"


# ----------------------------------------------------------------- wait/signal --
def test_wait_with_a_pending_signal_resumes_at_once(h: Harness) -> None:
    h.signal("approve", {"ok": True})
    assert [s.signal_type for s in h.rec.pending_signals] == ["approve"]
    d = h.intent(api.Wait(signal_type="approve"))
    assert types(d.events) == ["intent.accepted", "execution.resumed"]
    assert (d.reply.signal_received, d.reply.signal_payload) == (True, {"ok": True})
    assert h.rec.status is ExecutionStatus.RUNNING
    assert h.rec.pending_signals == []


def test_wait_without_a_signal_blocks(h: Harness) -> None:
    d = h.intent(api.Wait(signal_type="approve"))
    assert types(d.events) == ["intent.accepted", "execution.blocked"]
    assert d.reply.signal_received is False
    assert (h.rec.status, h.rec.blocked_reason, h.rec.blocked_ref) == (ExecutionStatus.BLOCKED, "signal", "approve")


def test_signal_of_the_awaited_type_resumes(h: Harness) -> None:
    h.intent(api.Wait(signal_type="approve"))
    d = h.signal("approve", {"by": "ops"})
    assert types(d.events) == ["signal.received", "execution.resumed"]
    assert d.events[1].payload.reason == "signal received: approve"
    assert isinstance(d.reply, api.Ok)
    assert (h.rec.status, h.rec.blocked_reason, h.rec.blocked_ref) == (ExecutionStatus.RUNNING, "", "")
    assert h.rec.pending_signals == []


def test_signal_of_another_type_stays_pending(h: Harness) -> None:
    h.intent(api.Wait(signal_type="approve"))
    d = h.signal("other", 1)
    assert types(d.events) == ["signal.received"]
    assert h.rec.status is ExecutionStatus.BLOCKED
    assert [(s.signal_type, s.payload) for s in h.rec.pending_signals] == [("other", 1)]
    h.signal("approve")
    d = h.intent(api.Wait(signal_type="other"))
    assert (d.reply.signal_received, d.reply.signal_payload) == (True, 1)
    assert h.rec.pending_signals == []


def test_signals_of_one_type_are_consumed_in_arrival_order(h: Harness) -> None:
    for payload in (1, 2, 3):
        h.signal("tick", payload)
        h.signal("tock", -payload)
    for payload in (1, 2, 3):
        d = h.intent(api.Wait(signal_type="tick"))
        assert (d.reply.signal_received, d.reply.signal_payload) == (True, payload)
        assert [s.payload for s in h.rec.pending_signals if s.signal_type == "tick"] == list(range(payload + 1, 4))
    assert [s.payload for s in h.rec.pending_signals] == [-1, -2, -3]


def test_signal_repeat_with_the_same_request_id_counts_once(h: Harness) -> None:
    h.signal("s", 1, request_id="sig-1")
    d = h.signal("s", 1, request_id="sig-1")
    assert d.events == [] and isinstance(d.reply, api.Ok)
    assert len(h.rec.pending_signals) == 1


def test_signal_to_a_terminal_execution_is_a_conflict(h: Harness) -> None:
    h.cancel()
    with kernel_error("CONFLICT"):
        h.signal("s")


def test_terminal_event_clears_pending_signals(h: Harness) -> None:
    h.signal("s", 1)
    h.intent(api.Complete())
    assert h.rec.pending_signals == []


# ---------------------------------------------------------------------- cancel --
def test_cancel_cancels_active_steps_then_the_execution(h: Harness) -> None:
    local = h.invoke("calc").reply.step_id
    remote = h.invoke("compute.heavy", remote=True).reply.step_id
    done = h.invoke("calc", key="done").reply.step_id
    h.step_result(done, data=1)
    d = h.cancel()
    assert types(d.events) == ["step.cancelled", "step.cancelled", "execution.cancelled"]
    assert [e.step_id for e in d.events[:2]] == [local, remote]
    assert d.events[0].payload.reason == "execution cancelled"
    assert d.events[2].payload.reason == "cancelled by request"
    assert h.rec.status is ExecutionStatus.CANCELLED
    assert {s: h.rec.steps[s].status for s in (local, remote, done)} == {
        local: StepStatus.CANCELLED, remote: StepStatus.CANCELLED, done: StepStatus.SUCCEEDED}
    assert [(e.step_id, e.error) for e in h.rec.history[-2:]] == [(local, "execution cancelled"),
                                                                 (remote, "execution cancelled")]


def test_second_cancel_is_a_conflict(h: Harness) -> None:
    h.cancel()
    with kernel_error("CONFLICT") as info:
        h.cancel()
    assert info.value.details == {"execution_id": EID, "status": "cancelled"}


def test_cancel_repeat_with_the_same_request_id_is_a_no_op(h: Harness) -> None:
    h.cancel(request_id="cancel-1")
    n = h.rec.last_sequence
    d = h.cancel(request_id="cancel-1")
    assert d.events == [] and d.reply is None
    assert h.rec.last_sequence == n
    with kernel_error("CONFLICT"):
        h.cancel(request_id="cancel-2")


def test_cancel_of_a_pending_execution() -> None:
    x = Harness()
    d = x.cancel()
    assert types(d.events) == ["execution.cancelled"]
    with kernel_error("CONFLICT"):
        x.claim()


# ----------------------------------------------------------------------- claim --
def test_claim_moves_pending_to_running_with_a_session() -> None:
    x = Harness()
    d = x.claim(consumer="c1", notice_seq=7, delivery=1)
    assert [e.type for e in d.events][-1] == "execution.started"
    p = d.events[0].payload
    assert (p.consumer_id, p.notice_seq, p.delivery) == ("c1", 7, 1)
    s = x.rec.session
    assert (s.id, s.consumer_id, s.notice_seq, s.delivery, s.started_at) == (
        p.session_id, "c1", 7, 1, d.events[0].timestamp)
    assert machine.claim_reply(x.rec, []).session_id == s.id


def test_repeated_claim_from_the_same_consumer_is_answered_without_events(h: Harness) -> None:
    sid = h.session_id
    d = h.claim(consumer="c1", notice_seq=1, delivery=1)
    assert d.events == [] and d.reply is None
    assert h.rec.session.id == sid


def test_redelivered_notice_reclaims_and_fences_the_old_session(h: Harness) -> None:
    old = h.session_id
    local = h.invoke("calc").reply.step_id
    remote = h.invoke("compute.heavy", remote=True).reply.step_id
    d = h.claim(consumer="c2", notice_seq=1, delivery=2)
    assert types(d.events) == ["agent.timeout", "step.cancelled", "step.cancelled", "execution.reset",
                               "execution.started"]
    assert d.events[0].payload.session_id == old
    assert [e.step_id for e in d.events[1:3]] == [local, remote]
    assert {e.payload.reason for e in d.events[1:3]} == {"agent disconnected"}
    reset = d.events[3].payload
    assert (reset.reason, reset.from_status) == ("lease_expired", "running")
    new = d.events[4].payload
    assert new.session_id != old and new.consumer_id == "c2" and new.delivery == 2
    assert h.rec.status is ExecutionStatus.RUNNING and h.rec.session.id == new.session_id
    assert h.rec.active_steps() == []
    # the old session is fenced from now on
    with kernel_error("UNAUTHORIZED"):
        h.intent(api.Complete(), session_id=old)
    with kernel_error("UNAUTHORIZED"):
        h.step_result(local, session_id=old)
    # the new one works
    assert types(h.intent(api.Complete()).events) == ["intent.accepted", "execution.completed"]


def test_redelivered_notice_of_a_blocked_execution_is_reset_from_blocked(h: Harness) -> None:
    h.intent(api.Wait(signal_type="go"))
    d = h.claim(consumer="c2", delivery=2)
    assert types(d.events) == ["agent.timeout", "execution.reset", "execution.started"]
    assert d.events[1].payload.from_status == "blocked"
    assert (h.rec.status, h.rec.blocked_reason, h.rec.blocked_ref) == (ExecutionStatus.RUNNING, "", "")


def test_claim_by_another_consumer_with_the_same_delivery_is_a_conflict(h: Harness) -> None:
    n = h.rec.last_sequence
    with kernel_error("CONFLICT") as info:
        h.claim(consumer="c2", notice_seq=1, delivery=1)
    assert "already claimed by c1" in info.value.message
    assert h.rec.last_sequence == n and h.rec.session.consumer_id == "c1"


def test_claim_of_another_notice_is_a_conflict(h: Harness) -> None:
    with kernel_error("CONFLICT"):
        h.claim(consumer="c2", notice_seq=2, delivery=5)


def test_claim_by_the_wrong_agent_is_a_conflict() -> None:
    x = Harness()
    with kernel_error("CONFLICT") as info:
        x.claim(agent="someone-else")
    assert "belongs to agent" in info.value.message
    assert x.rec.status is ExecutionStatus.PENDING


def test_claim_of_a_terminal_execution_is_a_conflict(h: Harness) -> None:
    h.intent(api.Complete())
    with kernel_error("CONFLICT"):
        h.claim(consumer="c2", delivery=2)


# ---------------------------------------------------------------------- runner --
@pytest.fixture
def remote_step(h: Harness) -> tuple[Harness, str, str]:
    d = h.invoke("compute.heavy", {"n": 1}, remote=True)
    return h, d.reply.step_id, d.jobs[0].id


def test_runner_started_on_a_dispatched_step(remote_step) -> None:
    h, sid, job = remote_step
    d = h.started(sid, job, consumer="r1-aaaa")
    assert types(d.events) == ["step.started"]
    assert (d.reply.proceed, d.reply.attempt) == (True, 1)
    step = h.rec.steps[sid]
    assert (step.status, step.consumer_id, step.runner_id) == (StepStatus.RUNNING, "r1-aaaa", "r1")


def test_runner_started_repeat_from_the_same_consumer(remote_step) -> None:
    h, sid, job = remote_step
    h.started(sid, job, consumer="r1-aaaa")
    d = h.started(sid, job, consumer="r1-aaaa")
    assert d.events == [] and (d.reply.proceed, d.reply.attempt) == (True, 1)


def test_runner_started_from_another_consumer_means_runner_lost(remote_step) -> None:
    h, sid, job = remote_step
    h.started(sid, job, consumer="r1-aaaa")
    d = h.started(sid, job, consumer="r1-bbbb")
    assert types(d.events) == ["step.failed", "step.retried", "step.dispatched", "step.started"]
    failed = d.events[0].payload
    assert failed.retryable is True and failed.error.startswith("runner_lost")
    assert "r1-aaaa" in failed.error
    assert d.events[1].payload.next_attempt == 2
    assert d.events[2].payload.job_id == job
    assert (d.reply.proceed, d.reply.attempt) == (True, 2)
    step = h.rec.steps[sid]
    assert (step.status, step.attempt, step.consumer_id) == (StepStatus.RUNNING, 2, "r1-bbbb")
    # the lost attempt is in the history (one entry per terminal attempt)
    assert [(e.step_id, e.status, e.error[:11]) for e in h.rec.history] == [(sid, StepStatus.FAILED, "runner_lost")]


def test_runner_lost_with_attempts_exhausted_fails_the_step(remote_step) -> None:
    h, sid, job = remote_step
    h.started(sid, job, consumer="r1-a")
    h.started(sid, job, consumer="r1-b")  # attempt 2
    h.started(sid, job, consumer="r1-c")  # attempt 3 = max
    assert h.rec.steps[sid].attempt == 3
    d = h.started(sid, job, consumer="r1-d")
    assert types(d.events) == ["step.failed"]
    assert d.events[0].payload.retryable is False
    assert (d.reply.proceed, d.reply.reason) == (False, "attempts exhausted")
    assert h.rec.steps[sid].status is StepStatus.FAILED


def test_runner_started_for_a_cancelled_step_does_not_proceed(remote_step) -> None:
    h, sid, job = remote_step
    h.cancel()
    d = h.started(sid, job)
    assert d.events == [] and d.reply.proceed is False
    assert "cancelled" in d.reply.reason


def test_runner_started_with_a_stale_job_does_not_proceed(remote_step) -> None:
    h, sid, job = remote_step
    d = h.started(sid, "some-other-job")
    assert d.events == [] and (d.reply.proceed, d.reply.reason) == (False, "stale job")


def test_runner_started_for_an_unknown_step_is_not_found(remote_step) -> None:
    h, sid, job = remote_step
    with kernel_error("NOT_FOUND"):
        h.started("no-such-step", job)


def test_runner_result_success(remote_step) -> None:
    h, sid, job = remote_step
    h.started(sid, job)
    d = h.result(sid, job, data={"out": 1})
    assert types(d.events) == ["step.completed"] and isinstance(d.reply, api.Ok) and d.jobs == []
    step = h.rec.steps[sid]
    assert (step.status, step.result) == (StepStatus.SUCCEEDED, {"out": 1})
    # repeated report of the same outcome: Ok, nothing recorded
    again = h.result(sid, job, data={"out": 1})
    assert again.events == [] and isinstance(again.reply, api.Ok)
    # a contradicting report is a conflict
    with kernel_error("CONFLICT"):
        h.result(sid, job, success=False, error="late failure")


def test_runner_result_retryable_failure_is_retried_with_a_new_job(remote_step) -> None:
    h, sid, job = remote_step
    h.started(sid, job)
    d = h.result(sid, job, success=False, error="flaky", retryable=True)
    assert types(d.events) == ["step.failed", "step.retried", "step.dispatched"]
    assert (d.events[0].payload.error, d.events[0].payload.retryable) == ("flaky", True)
    [new_job] = d.jobs
    assert new_job.id != job
    assert (new_job.step_id, new_job.attempt, new_job.arguments, new_job.runner_id) == (sid, 2, {"n": 1}, "r1")
    # attempt 2 waits min(1 s * 2**1, 30 s) = 2 s, and gets the global step timeout from then
    assert new_job.not_before == d.events[0].timestamp + timedelta(seconds=2)
    assert new_job.deadline == new_job.not_before + timedelta(minutes=5)
    assert d.events[2].payload.job_id == new_job.id
    step = h.rec.steps[sid]
    assert (step.status, step.attempt, step.job_id, step.error) == (StepStatus.DISPATCHED, 2, new_job.id, "")
    # the old job is stale now
    with kernel_error("CONFLICT") as info:
        h.result(sid, job, data=1)
    assert "stale job" in info.value.message
    assert h.started(sid, job).reply.proceed is False


def test_runner_result_final_failure_when_attempts_are_exhausted(remote_step) -> None:
    h, sid, job = remote_step
    for attempt in (1, 2):
        h.started(sid, job)
        job = h.result(sid, job, success=False, error=f"flaky {attempt}", retryable=True).jobs[0].id
    h.started(sid, job)
    d = h.result(sid, job, success=False, error="flaky 3", retryable=True)
    assert types(d.events) == ["step.failed"] and d.jobs == []
    assert d.events[0].payload.retryable is False
    step = h.rec.steps[sid]
    assert (step.status, step.attempt, step.error) == (StepStatus.FAILED, 3, "flaky 3")
    assert [e.error for e in h.rec.history] == ["flaky 1", "flaky 2", "flaky 3"]


def test_runner_result_non_retryable_failure_is_final(remote_step) -> None:
    h, sid, job = remote_step
    d = h.result(sid, job, success=False, error="", retryable=False)
    assert types(d.events) == ["step.failed"]
    assert (d.events[0].payload.error, d.events[0].payload.retryable) == ("tool failed", False)


def test_runner_result_with_a_stale_job_is_a_conflict(remote_step) -> None:
    h, sid, job = remote_step
    with kernel_error("CONFLICT"):
        h.result(sid, "another-job", data=1)
    assert h.rec.steps[sid].status is StepStatus.DISPATCHED


def test_step_result_on_a_remote_step_is_a_validation_error(remote_step) -> None:
    h, sid, job = remote_step
    with kernel_error("VALIDATION_ERROR") as info:
        h.step_result(sid, data=1)
    assert "remote" in info.value.message


def test_step_result_for_an_unknown_step_is_not_found(h: Harness) -> None:
    with kernel_error("NOT_FOUND"):
        h.step_result("no-such-step", data=1)


def test_repeated_step_result(h: Harness) -> None:
    sid = h.invoke().reply.step_id
    h.step_result(sid, data=5)
    d = h.step_result(sid, data=5)
    assert d.events == [] and d.reply == api.StepResultReply()
    with kernel_error("CONFLICT"):
        h.step_result(sid, data=6)
    with kernel_error("CONFLICT"):
        h.step_result(sid, success=False, error="x")


def test_failed_local_step_is_not_retried_unless_retryable(h: Harness) -> None:
    sid = h.invoke().reply.step_id
    d = h.step_result(sid, success=False)
    assert types(d.events) == ["step.failed"]
    p = d.events[0].payload
    assert (p.error, p.retryable) == ("tool failed", False)
    assert h.rec.steps[sid].status is StepStatus.FAILED


# --------------------------------------------------------------------- bounds --
def test_history_is_bounded_and_keeps_the_newest(h: Harness) -> None:
    total = HISTORY_LIMIT + 5
    ids = []
    for i in range(total):
        sid = h.invoke("calc", {"i": i}).reply.step_id
        h.step_result(sid, data=i)
        ids.append(sid)
    assert HISTORY_LIMIT == 50
    assert len(h.rec.history) == HISTORY_LIMIT
    assert [e.step_id for e in h.rec.history] == ids[-HISTORY_LIMIT:]
    assert [e.result for e in h.rec.history] == list(range(5, total))
    assert h.rec.step_count == total


def test_history_entry_fields(h: Harness) -> None:
    ok = h.invoke("calc", {"x": 1}).reply.step_id
    h.step_result(ok, data="R")
    bad = h.invoke("calc", {"x": 2}).reply.step_id
    h.step_result(bad, success=False, error="E")
    a, b = h.rec.history
    assert (a.step_id, a.tool_id, a.status, a.arguments, a.result, a.error) == (
        ok, "calc", StepStatus.SUCCEEDED, {"x": 1}, "R", "")
    assert (b.step_id, b.status, b.arguments, b.result, b.error) == (bad, StepStatus.FAILED, {"x": 2}, None, "E")
    assert a.completed_at is not None and b.completed_at > a.completed_at


def _record_with_history(n: int) -> ExecutionRecord:
    rec = ExecutionRecord(id=EID, agent_id=AGENT, status=ExecutionStatus.RUNNING, created_at=T0, updated_at=T0)
    rec.history = [HistoryEntry(step_id=f"s{i}", tool_id="t", status=StepStatus.SUCCEEDED, result=i)
                   for i in range(n)]
    return rec


def test_history_for_claim_keeps_the_newest_entries_within_512_kib() -> None:
    rec = _record_with_history(10)
    kib = 1024
    d = machine.history_for_claim(rec, lambda e: 200 * kib)
    assert [e.step_id for e in d] == ["s8", "s9"]  # 400 KiB kept, a third would make 600 KiB
    sizes = {"s9": 100 * kib, "s8": 300 * kib, "s7": 112 * kib, "s6": 1}
    d = machine.history_for_claim(rec, lambda e: sizes.get(e.step_id, 1))
    assert [e.step_id for e in d] == ["s7", "s8", "s9"]  # exactly 512 KiB is still within the limit
    sizes["s7"] += 1
    d = machine.history_for_claim(rec, lambda e: sizes.get(e.step_id, 1))
    assert [e.step_id for e in d] == ["s8", "s9"]  # one byte over drops it and everything older


def test_history_for_claim_drops_everything_when_the_newest_entry_is_too_big() -> None:
    rec = _record_with_history(3)
    assert machine.history_for_claim(rec, lambda e: 600 * 1024 if e.step_id == "s2" else 10) == []


def test_history_for_claim_keeps_at_most_50_entries() -> None:
    rec = _record_with_history(60)
    d = machine.history_for_claim(rec, lambda e: 10)
    assert [e.step_id for e in d] == [f"s{i}" for i in range(10, 60)]
    assert machine.history_for_claim(_record_with_history(0), lambda e: 10) == []


def test_request_keys_are_bounded_and_keep_the_newest(h: Harness) -> None:
    total = REQUEST_KEY_LIMIT + 10
    first_event = {}
    for i in range(total):
        d = h.signal("s", i, request_id=f"req-{i}")
        first_event[f"req-{i}"] = d.events[0].id
    assert REQUEST_KEY_LIMIT == 256
    keys = h.rec.request_keys
    assert len(keys) == REQUEST_KEY_LIMIT
    assert list(keys) == [f"req-{i}" for i in range(10, total)]
    assert keys["req-100"] == first_event["req-100"]
    assert "req-0" not in keys
    # an evicted key is no longer recognised as a repeat; a kept one is
    assert h.signal("s", 0, request_id=f"req-{total - 1}").events == []
    assert len(h.signal("s", 0, request_id="req-0").events) == 1


def test_request_key_is_not_recorded_for_an_empty_batch() -> None:
    x = Harness()
    rec = apply_batch(x.rec, EventBatch(execution_id=EID, events=[], request_key="nothing"), 9)
    assert "nothing" not in rec.request_keys
    assert x.rec.request_keys == {EID: x.log[0].id}  # the create's key


def test_step_dispatched_never_revives_a_terminal_step(h: Harness) -> None:
    sid = h.invoke().reply.step_id
    h.step_result(sid, data=1)
    h.manual((ev.StepDispatched, ev.StepDispatchedPayload(deadline=T0, runner_id="r9", job_id="j9"), sid),
             (ev.StepStarted, ev.StepStartedPayload(runner_id="r9", consumer_id="r9-x"), sid))
    step = h.rec.steps[sid]
    assert (step.status, step.runner_id, step.job_id, step.consumer_id) == (StepStatus.SUCCEEDED, "", "", "")


# ---------------------------------------------------------------- known bugs --
@pytest.mark.parametrize("signal_first", [True, False], ids=["signal-before-wait", "signal-while-blocked"])
def test_repeated_wait_returns_the_consumed_signal_payload(h: Harness, signal_first: bool) -> None:
    if signal_first:
        h.signal("go", {"v": 1})
        first = h.intent(api.Wait(signal_type="go"), request_id="wait-1")
        assert first.reply.signal_payload == {"v": 1}
    else:
        h.intent(api.Wait(signal_type="go"), request_id="wait-1")  # blocks; its reply is lost
        h.signal("go", {"v": 1})
    # the SDK retries the request whose reply it did not get, with the same request_id
    again = h.intent(api.Wait(signal_type="go"), request_id="wait-1")
    assert again.events == []
    assert (again.reply.signal_received, again.reply.signal_payload) == (True, {"v": 1})


# ------------------------------------------------------- durable waits (DESIGN §8) --
def test_wait_key_makes_a_resolved_wait_durable_across_a_reclaim(h: Harness) -> None:
    h.intent(api.Wait(signal_type="go", idempotency_key="w1"))
    assert h.rec.status is ExecutionStatus.BLOCKED and h.rec.blocked_key == "w1"
    h.signal("go", {"v": 1})
    assert h.rec.status is ExecutionStatus.RUNNING
    assert h.rec.waits["w1"].resolved and h.rec.waits["w1"].payload == {"v": 1}
    h.claim(consumer="c2", delivery=2)  # lease lapsed: a new instance re-runs the handler
    again = h.intent(api.Wait(signal_type="go", idempotency_key="w1"))
    assert again.events == []
    assert (again.reply.signal_received, again.reply.signal_payload) == (True, {"v": 1})
    nxt = h.intent(api.Wait(signal_type="go", idempotency_key="w2"))  # the next wait really waits
    assert types(nxt.events) == ["intent.accepted", "execution.blocked"]


def test_pending_signal_survives_a_reset_and_reaches_the_next_session(h: Harness) -> None:
    h.signal("go", {"early": True})
    h.claim(consumer="c2", delivery=2)
    assert [s.signal_type for s in h.rec.pending_signals] == ["go"]
    d = h.intent(api.Wait(signal_type="go", idempotency_key="w1"))
    assert (d.reply.signal_received, d.reply.signal_payload) == (True, {"early": True})
    resumed = d.events[-1]
    assert resumed.type == "execution.resumed" and resumed.payload.signal_id and h.rec.pending_signals == []


def test_signal_resumes_by_id_and_records_the_wait(h: Harness) -> None:
    h.intent(api.Wait(signal_type="go", idempotency_key="w1"))
    d = h.signal("go", 42)
    sig, resumed = d.events
    assert resumed.payload.signal_id == sig.id and resumed.payload.idempotency_key == "w1"
    assert resumed.causation_id == sig.id


# ------------------------------------------------ bounded records, replay from the stream --
def test_record_keeps_active_steps_and_a_window_of_finished_ones(h: Harness) -> None:
    from kernel.state import STEP_WINDOW

    active = h.invoke(key="active-one").reply.step_id
    for i in range(STEP_WINDOW + 10):
        sid = h.invoke(key=f"k{i}").reply.step_id
        h.step_result(sid, data=i)
    assert active in h.rec.steps and h.rec.steps[active].active
    terminal = [s for s in h.rec.steps.values() if not s.active]
    assert len(terminal) == STEP_WINDOW
    assert "k0" not in h.rec.step_keys and f"k{STEP_WINDOW + 9}" in h.rec.step_keys
    assert h.rec.step_count == STEP_WINDOW + 11  # counts every step ever created


def test_replay_calls_reads_outcomes_from_the_log(h: Harness) -> None:
    from kernel.state import replay_calls

    ok = h.invoke(key="a").reply.step_id
    h.step_result(ok, data={"v": 1})
    bad = h.invoke(key="b").reply.step_id
    h.step_result(bad, success=False, error="nope")
    h.invoke(key="c")  # still running: not replayed
    calls = replay_calls(batch for batch, _ in h.batches)
    assert calls == {"a": (ok, "succeeded", {"v": 1}, ""), "b": (bad, "failed", None, "nope")}


# ------------------------------------------------------------------- approval --
APPROVAL_POLICY = {"rules": [
    {"id": "approve-deploy", "priority": 1, "when": {"tool_id": "deploy_*"},
     "then": {"decision": "require_approval", "reason": "deploys need a human", "timeout_ms": 5}},
], "default": {"decision": "allow"}}


@pytest.fixture
def ha() -> Harness:
    x = Harness(policy=parse_policy(APPROVAL_POLICY, "approval.yaml"), runners={"deploy_api": "r1"})
    x.claim()
    return x


def test_require_approval_holds_the_step_and_blocks(ha: Harness) -> None:
    d = ha.invoke("deploy_api", {"v": 2}, key="k1")
    assert types(d.events) == ["step.created", "step.approval_required", "execution.blocked"]
    assert d.reply.pending_approval and d.reply.step_id == d.events[0].step_id
    sid = d.reply.step_id
    created, required, blocked = d.events
    assert created.payload.max_attempts == 1
    assert created.payload.deadline == created.timestamp + timedelta(minutes=5)  # rule timeout_ms ignored
    assert (required.payload.reason, required.payload.rule_id) == ("deploys need a human", "approve-deploy")
    assert (blocked.payload.reason, blocked.payload.ref, blocked.payload.tool_id) == ("approval", sid, "deploy_api")
    assert ha.rec.status is ExecutionStatus.BLOCKED and ha.rec.steps[sid].approval
    # a repeated call (lost reply) gets the held step again, not a conflict
    again = ha.invoke("deploy_api", {"v": 2}, key="k1")
    assert again.events == [] and again.reply.pending_approval and again.reply.step_id == sid
    with kernel_error("CONFLICT"):
        ha.invoke("other", key="k2")


def test_approval_granted_for_a_local_step_refreshes_its_deadline(ha: Harness) -> None:
    sid = ha.invoke("deploy_api", key="k1").reply.step_id
    d = ha.signal("step.approve", {"step_id": sid, "approved": True})
    assert types(d.events) == ["signal.received", "step.dispatched", "execution.resumed"]
    assert d.events[1].payload.deadline == d.events[1].timestamp + timedelta(minutes=5)
    assert d.events[1].payload.job_id == "" and d.jobs == []
    assert d.events[2].payload.reason == "approval granted"
    assert ha.rec.status is ExecutionStatus.RUNNING and ha.rec.steps[sid].status is StepStatus.DISPATCHED
    assert ha.rec.pending_signals == []  # the approval is consumed (the original kept it pending)
    assert types(ha.step_result(sid, data="ok").events) == ["step.completed"]


def test_approval_granted_for_a_remote_step_dispatches_its_job(ha: Harness) -> None:
    sid = ha.invoke("deploy_api", key="k1", remote=True).reply.step_id
    d = ha.signal("step.approve", {"step_id": sid, "approved": True})
    [job] = d.jobs
    assert (job.step_id, job.runner_id, job.attempt) == (sid, "r1", 1)
    assert d.events[1].payload.job_id == job.id and ha.rec.steps[sid].job_id == job.id


def test_approval_denied_fails_the_step_and_resumes(ha: Harness) -> None:
    sid = ha.invoke("deploy_api", key="k1").reply.step_id
    d = ha.signal("step.approve", {"step_id": sid, "approved": False, "reason": "not today"})
    assert types(d.events) == ["signal.received", "step.failed", "execution.resumed"]
    assert (d.events[1].payload.error, d.events[1].payload.retryable) == ("not today", False)
    assert d.events[2].payload.reason == "approval denied"
    assert ha.rec.steps[sid].status is StepStatus.FAILED and ha.rec.status is ExecutionStatus.RUNNING


def test_approval_missing_approved_counts_as_denied(ha: Harness) -> None:
    sid = ha.invoke("deploy_api", key="k1").reply.step_id
    d = ha.signal("step.approve", {"step_id": sid})
    assert d.events[1].payload.error == "approval denied by human"


@pytest.mark.parametrize("payload", [None, {}, "yes", [1], {"step_id": "other", "approved": True},
                                     {"step_id": "SID", "approved": "yes"}, {"step_id": "SID", "reason": 5}])
def test_bad_approval_signal_is_refused_and_changes_nothing(ha: Harness, payload: Any) -> None:
    sid = ha.invoke("deploy_api", key="k1").reply.step_id
    if isinstance(payload, dict) and payload.get("step_id") == "SID":
        payload = {**payload, "step_id": sid}
    before = ha.rec.last_sequence
    with kernel_error("VALIDATION_ERROR"):
        ha.signal("step.approve", payload)
    assert ha.rec.last_sequence == before and ha.rec.status is ExecutionStatus.BLOCKED


def test_approval_signal_when_not_held_is_an_ordinary_signal(h: Harness) -> None:
    d = h.signal("step.approve", {"step_id": "x", "approved": True})
    assert types(d.events) == ["signal.received"]
    assert [s.signal_type for s in h.rec.pending_signals] == ["step.approve"]


# -------------------------------------------------------------------- retries --
def test_local_retryable_failure_is_retried_after_the_delay(h: Harness) -> None:
    sid = h.invoke("calc", key="k").reply.step_id
    d = h.step_result(sid, success=False, error="flaky", retryable=True)
    assert types(d.events) == ["step.failed", "step.retried"]
    assert d.reply == api.StepResultReply(retry_attempt=2, retry_delay_ms=2000)
    retried = d.events[1].payload
    assert retried.not_before == d.events[1].timestamp + timedelta(seconds=2)
    assert retried.deadline == retried.not_before + timedelta(minutes=5)
    step = h.rec.steps[sid]
    assert (step.status, step.attempt, step.deadline) == (StepStatus.PENDING, 2, retried.deadline)
    d = h.step_result(sid, success=False, error="flaky", retryable=True)
    assert d.reply.retry_attempt == 3 and d.reply.retry_delay_ms == 4000
    d = h.step_result(sid, success=False, error="still flaky", retryable=True)  # attempts exhausted
    assert types(d.events) == ["step.failed"] and not d.events[0].payload.retryable
    assert d.reply == api.StepResultReply() and h.rec.steps[sid].status is StepStatus.FAILED


def test_retry_delay_is_capped() -> None:
    limits = Limits(retry_base_delay=timedelta(seconds=1), retry_max_delay=timedelta(seconds=30))
    assert [machine.retry_delay(limits, n).total_seconds() for n in (2, 3, 4, 5, 6, 7)] == [2, 4, 8, 16, 30, 30]


# --------------------------------------------------------------------- timers --
def test_step_deadline_times_out_the_step_and_the_execution_goes_on(h: Harness) -> None:
    sid = h.invoke("calc", key="k").reply.step_id
    deadline = h.rec.steps[sid].deadline
    assert machine.next_due(h.rec, h.limits, None) == deadline
    assert h.expire(deadline - timedelta(milliseconds=1)).events == []
    d = h.expire(deadline)
    assert types(d.events) == ["step.timed_out"] and d.events[0].step_id == sid
    assert h.rec.steps[sid].status is StepStatus.TIMED_OUT and h.rec.status is ExecutionStatus.RUNNING
    assert h.expire(deadline + timedelta(seconds=1)).events == []  # fired once
    with kernel_error("CONFLICT"):
        h.step_result(sid, data=1)  # a late result of the timed-out step


def test_rule_timeout_sets_the_step_deadline() -> None:
    x = Harness(policy=parse_policy({"rules": [{"id": "fast", "priority": 1, "when": {"tool_id": "calc"},
                                                 "then": {"decision": "allow", "timeout_ms": 1500}}]}, "p.yaml"))
    x.claim()
    d = x.invoke("calc")
    assert x.rec.steps[d.reply.step_id].deadline == d.events[0].timestamp + timedelta(milliseconds=1500)


def test_step_deadlines_are_not_checked_while_blocked(h: Harness) -> None:
    sid = h.invoke("calc", key="k").reply.step_id
    h.intent(api.Wait(signal_type="go", idempotency_key="w1"))
    deadline = h.rec.steps[sid].deadline
    assert machine.next_due(h.rec, h.limits, None) == h.rec.created_at + timedelta(hours=1)
    assert h.expire(deadline + timedelta(seconds=1)).events == []
    h.signal("go")
    assert types(h.expire(deadline + timedelta(seconds=2)).events) == ["step.timed_out"]


def test_execution_timeout_cancels_steps_and_fails(h: Harness) -> None:
    sid = h.invoke("calc", key="k").reply.step_id
    h.intent(api.Wait(signal_type="go", idempotency_key="w1"))  # also while blocked
    d = h.expire(h.rec.created_at + timedelta(hours=1))
    assert types(d.events) == ["step.cancelled", "execution.failed"]
    assert d.events[1].payload.error == "execution exceeded maximum duration"
    assert h.rec.status is ExecutionStatus.FAILED and h.rec.steps[sid].status is StepStatus.CANCELLED
    assert machine.next_due(h.rec, h.limits, None) is None


def test_execution_timeout_zero_disables_it() -> None:
    x = Harness()
    x.limits = Limits(execution_timeout=timedelta(0))
    x.claim()
    assert machine.next_due(x.rec, x.limits, None) is None
    assert x.expire(x.rec.created_at + timedelta(days=30)).events == []


def test_lapsed_lease_resets_the_execution_for_another_instance(h: Harness) -> None:
    sid = h.invoke("calc", key="k").reply.step_id
    session = h.session_id
    lease = machine.Lease(session_id=session, expires_at=h.clock + timedelta(seconds=30))
    assert machine.next_due(h.rec, h.limits, lease) == lease.expires_at
    assert h.expire(lease.expires_at - timedelta(milliseconds=1), lease).events == []
    d = h.expire(lease.expires_at, lease)
    assert types(d.events) == ["agent.timeout", "step.cancelled", "execution.reset"]
    assert d.events[0].payload.session_id == session and d.events[2].payload.reason == "lease_expired"
    [notice] = d.notices
    assert notice.execution_id == EID and d.notice_msg_id == f"{EID}:{d.events[2].id}"
    assert h.rec.status is ExecutionStatus.PENDING and h.rec.steps[sid].status is StepStatus.CANCELLED
    with kernel_error("UNAUTHORIZED"):
        h.invoke("calc", key="k2", )  # the silent session is fenced
    # the lease of an old session is ignored once another session holds the execution
    h.claim(consumer="c2", notice_seq=2)
    assert h.expire(lease.expires_at + timedelta(seconds=5), lease).events == []


def test_no_deadline_fires_for_a_finished_execution(h: Harness) -> None:
    h.intent(api.Complete(output=1))
    assert machine.next_due(h.rec, h.limits, None) is None
    assert h.expire(h.clock + timedelta(days=2)).events == []


# ----------------------------------------------------------------- rate limit --
def test_rate_limited_allow_is_denied_and_recorded() -> None:
    x = Harness(policy=parse_policy({"rules": [
        {"id": "limited", "priority": 1, "when": {"tool_id": "calc"}, "then": {"decision": "allow"},
         "rate_limit": {"max": 2, "window": "1m"}}]}, "p.yaml"))
    x.claim()
    req = api.IntentRequest(execution_id=EID, session_id=x.session_id,
                            intent=api.InvokeTool(tool_id="calc", idempotency_key="k"))
    d = x.commit(machine.intent(x.rec, req, x.now(), policy=x.policy, limits=x.limits,
                                pick_runner=lambda t: None, rate_limited=True))
    assert types(d.events) == ["intent.denied"] and d.error is not None and d.error.code == "RATE_LIMITED"
    assert d.events[0].payload.reason == "rate limit exceeded: max 2 per 1m"
    assert d.events[0].payload.rule_id == "limited"
    assert str(d.error) == "rate limit exceeded: max 2 per 1m (rule: limited)" or "rule: limited" in d.error.message
    assert x.rec.step_count == 0


def test_timer_index_view_agrees_with_the_record(h: Harness) -> None:
    """Replicas index deadlines from a partial decode of each record (kernel/timers.py)."""
    from kernel.timers import _VIEW_DECODER

    def same() -> None:
        view = _VIEW_DECODER.decode(codec.encode(h.rec))
        assert machine.next_due(view, h.limits, None) == machine.next_due(h.rec, h.limits, None)  # type: ignore[arg-type]

    same()
    sid = h.invoke("calc", key="k1").reply.step_id
    same()
    h.intent(api.Wait(signal_type="go", idempotency_key="w"))  # blocked: step deadlines pause
    same()
    h.signal("go")
    h.step_result(sid, data=1)
    same()
    h.intent(api.Complete(output=1))
    same()


def test_an_approval_wait_ends_at_the_execution_deadline(ha: Harness) -> None:
    """No approval-specific timeout (``spec/kernel.md`` §16): the held step's own deadline
    does not run while blocked; the execution deadline does."""
    sid = ha.invoke("deploy_api", key="k1").reply.step_id
    held = ha.rec.steps[sid].deadline
    assert ha.expire(held + timedelta(seconds=1)).events == []
    d = ha.expire(ha.rec.created_at + timedelta(hours=1))
    assert types(d.events) == ["step.cancelled", "execution.failed"] and d.events[0].step_id == sid
    with kernel_error("CONFLICT"):
        ha.signal("step.approve", {"step_id": sid, "approved": True})
