"""Unit tests for the wire protocol (``schemas/``): the JSON Schema export, strict requests and
tolerant replies, identifiers, broker names, and event encoding."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas import api, codec, export, ids
from schemas import events as ev
from schemas.ids import InvalidIdError, is_token_id, new_id, validate_token_id, validate_tool_id
from schemas.subjects import API_OPERATIONS, Names

T0 = datetime(2026, 3, 25, 12, 0, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------ JSON Schema export --
def test_json_schema_export_is_up_to_date() -> None:
    wanted = export.render()
    on_disk = {p.name: p.read_text() for p in export.OUT_DIR.glob("*.json")}
    stale = sorted(name for name in wanted if name in on_disk and on_disk[name] != wanted[name])
    missing = sorted(set(wanted) - set(on_disk))
    extra = sorted(set(on_disk) - set(wanted))
    assert not (stale or missing or extra), (
        f"schemas/json/ is out of date with the structs in schemas/ (stale: {stale}, missing: {missing}, "
        f"extra: {extra}); run `make schemas` (python -m schemas.export) and commit the result")


def test_json_schema_export_covers_every_operation_and_is_valid_json() -> None:
    rendered = export.render()
    for op in API_OPERATIONS:
        assert f"api.{op}.request.json" in rendered
        assert f"api.{op}.reply.json" in rendered
    for name in ("api.Error.json", "events.Event.json", "events.EventBatch.json", "records.ExecutionRecord.json",
                 "work.Job.json", "work.AssignmentNotice.json"):
        assert name in rendered
    for name, text in rendered.items():
        assert text.endswith("\n")
        doc = json.loads(text)
        assert isinstance(doc, dict) and doc, name
    # a strict request forbids additional properties in its schema too
    intent = json.loads(rendered["api.agent.intent.request.json"])
    assert intent["$defs"]["IntentRequest"]["additionalProperties"] is False


# ------------------------------------------------------------- strict requests --
MINIMAL_REQUESTS: dict[str, dict[str, Any]] = {
    "executions.create": {"agent_id": "a"},
    "executions.get": {"execution_id": "e"},
    "executions.list": {},
    "executions.cancel": {"execution_id": "e"},
    "executions.signal": {"execution_id": "e", "signal_type": "s"},
    "executions.events": {"execution_id": "e"},
    "tools.list": {},
    "agent.claim": {"execution_id": "e", "agent_id": "a", "consumer_id": "c"},
    "agent.intent": {"execution_id": "e", "session_id": "s", "intent": {"type": "complete"}},
    "agent.step_result": {"execution_id": "e", "session_id": "s", "step_id": "st", "success": True},
    "agent.renew": {"execution_id": "e", "session_id": "s"},
    "runner.register": {"runner_id": "r", "consumer_id": "c"},
    "runner.started": {"runner_id": "r", "consumer_id": "c", "job_id": "j", "execution_id": "e", "step_id": "st"},
    "runner.result": {"runner_id": "r", "consumer_id": "c", "job_id": "j", "execution_id": "e", "step_id": "st",
                      "success": False},
    "health": {},
}

MINIMAL_REPLIES: dict[str, dict[str, Any]] = {
    "executions.create": {"id": "e", "status": "pending", "agent_id": "a", "created_at": "2026-03-25T12:00:00Z",
                          "updated_at": "2026-03-25T12:00:00Z"},
    "executions.get": {"id": "e", "status": "running", "agent_id": "a", "created_at": "2026-03-25T12:00:00Z",
                       "updated_at": "2026-03-25T12:00:00Z"},
    "executions.list": {"executions": []},
    "executions.cancel": {"id": "e", "status": "cancelled", "agent_id": "a", "created_at": "2026-03-25T12:00:00Z",
                          "updated_at": "2026-03-25T12:00:00Z"},
    "executions.signal": {},
    "executions.events": {"events": []},
    "tools.list": {"tools": []},
    "agent.claim": {"execution_id": "e", "session_id": "s", "agent_id": "a"},
    "agent.intent": {},
    "agent.step_result": {},
    "agent.renew": {},
    "runner.register": {},
    "runner.started": {"proceed": True},
    "runner.result": {},
    "health": {"status": "ok", "kernel_id": "k", "jetstream": True},
}


def test_operation_tables_agree() -> None:
    assert set(api.REQUEST_TYPES) == set(api.REPLY_TYPES) == set(API_OPERATIONS)
    assert set(MINIMAL_REQUESTS) == set(API_OPERATIONS), "add a minimal request for the new operation"
    assert set(MINIMAL_REPLIES) == set(API_OPERATIONS), "add a minimal reply for the new operation"
    assert set(codec.REQUEST_DECODERS) == set(codec.REPLY_DECODERS) == set(API_OPERATIONS)


@pytest.mark.parametrize("op", API_OPERATIONS)
def test_request_accepts_its_minimal_form_and_rejects_unknown_fields(op: str) -> None:
    decoder = codec.REQUEST_DECODERS[op]
    ok = decoder.decode(json.dumps(MINIMAL_REQUESTS[op]).encode())
    assert isinstance(ok, api.REQUEST_TYPES[op])
    with pytest.raises(msgspec.ValidationError, match="unknown field `surprise`"):
        decoder.decode(json.dumps({**MINIMAL_REQUESTS[op], "surprise": 1}).encode())


@pytest.mark.parametrize("intent", [
    {"type": "complete", "surprise": 1},
    {"type": "invoke_tool", "tool_id": "t", "surprise": 1},
    {"type": "fail", "error": "e", "surprise": 1},
    {"type": "wait", "signal_type": "s", "surprise": 1},
])
def test_intents_reject_unknown_fields(intent: dict) -> None:
    raw = json.dumps({"execution_id": "e", "session_id": "s", "intent": intent}).encode()
    with pytest.raises(msgspec.ValidationError, match="unknown field `surprise`"):
        codec.REQUEST_DECODERS["agent.intent"].decode(raw)


@pytest.mark.parametrize("op", API_OPERATIONS)
def test_reply_ignores_unknown_fields(op: str) -> None:
    decoder = codec.REPLY_DECODERS[op]
    reply = decoder.decode(json.dumps({**MINIMAL_REPLIES[op], "added_in_a_later_version": {"x": 1}}).encode())
    assert isinstance(reply, api.REPLY_TYPES[op])
    assert reply == decoder.decode(json.dumps(MINIMAL_REPLIES[op]).encode())


def test_error_reply_ignores_unknown_fields() -> None:
    err = codec.ERROR_DECODER.decode(b'{"code":"CONFLICT","message":"m","details":{"a":1},"hint":"new"}')
    assert (err.code, err.message, err.details) == ("CONFLICT", "m", {"a": 1})
    with pytest.raises(msgspec.ValidationError):
        codec.ERROR_DECODER.decode(b'{"code":"NOT_A_CODE","message":"m"}')


def test_nested_reply_items_ignore_unknown_fields() -> None:
    event = {"type": "execution.cancelled", "id": "x", "execution_id": "e", "timestamp": "2026-03-25T12:00:00Z",
             "sequence": 3, "causation_id": "x", "correlation_id": "x", "future": 1,
             "payload": {"reason": "r", "future": 2}}
    reply = codec.REPLY_DECODERS["executions.events"].decode(json.dumps({"events": [event]}).encode())
    assert isinstance(reply.events[0], ev.ExecutionCancelled)
    assert reply.events[0].payload.reason == "r"


@pytest.mark.parametrize("op, fields", [
    ("executions.create", {"agent_id": "bad id"}),
    ("executions.create", {"agent_id": "a.b"}),
    ("executions.get", {"execution_id": "x" * 129}),
    ("agent.claim", {"execution_id": "e", "agent_id": "a", "consumer_id": ""}),
    ("executions.signal", {"execution_id": "e", "signal_type": ""}),
    ("agent.intent", {"execution_id": "e", "session_id": "s", "intent": {"type": "invoke_tool", "tool_id": "a..b"}}),
    ("agent.intent", {"execution_id": "e", "session_id": "s", "intent": {"type": "fail", "error": ""}}),
    ("executions.events", {"execution_id": "e", "after_sequence": -1}),
    ("agent.step_result", {"execution_id": "e", "session_id": "s", "step_id": "st"}),  # success missing
])
def test_requests_validate_their_fields(op: str, fields: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        codec.REQUEST_DECODERS[op].decode(json.dumps(fields).encode())


# --------------------------------------------------------------------- intents --
@pytest.mark.parametrize("intent, cls, attrs", [
    ({"type": "invoke_tool", "tool_id": "compute.heavy", "arguments": {"n": 1}, "idempotency_key": "k",
      "remote": True}, api.InvokeTool, {"tool_id": "compute.heavy", "arguments": {"n": 1}, "remote": True}),
    ({"type": "complete", "output": [1, 2]}, api.Complete, {"output": [1, 2]}),
    ({"type": "fail", "error": "boom"}, api.Fail, {"error": "boom"}),
    ({"type": "wait", "signal_type": "approve"}, api.Wait, {"signal_type": "approve"}),
])
def test_intents_decode_as_a_tagged_union_on_type(intent: dict, cls: type, attrs: dict) -> None:
    raw = json.dumps({"execution_id": "e", "session_id": "s", "intent": intent}).encode()
    req = codec.REQUEST_DECODERS["agent.intent"].decode(raw)
    assert type(req.intent) is cls
    for k, v in attrs.items():
        assert getattr(req.intent, k) == v
    # and encode back with the tag
    assert json.loads(codec.encode(req))["intent"]["type"] == intent["type"]


@pytest.mark.parametrize("intent", [{"type": "dance"}, {"tool_id": "t"}, {"type": "Complete"}])
def test_unknown_or_missing_intent_type_is_rejected(intent: dict) -> None:
    raw = json.dumps({"execution_id": "e", "session_id": "s", "intent": intent}).encode()
    with pytest.raises(msgspec.ValidationError):
        codec.REQUEST_DECODERS["agent.intent"].decode(raw)


# ------------------------------------------------------------------------- ids --
@pytest.mark.parametrize("value", ["a", "Z", "0", "agent-1", "under_score", "A-z_0-9", "x" * 128,
                                   "01890a5d-ac96-774b-bcce-b302099a8057"])
def test_validate_token_id_accepts(value: str) -> None:
    assert validate_token_id("agent_id", value) == value
    assert is_token_id(value) is True


@pytest.mark.parametrize("value", ["a.b", "a b", " a", "a\n", "", "x" * 129, "a/b", "a*", "a>", "é", None, 5,
                                   b"abc", ["a"]])
def test_validate_token_id_rejects(value: Any) -> None:
    with pytest.raises(InvalidIdError, match="invalid runner_id") as info:
        validate_token_id("runner_id", value)
    assert info.value.kind == "runner_id"
    assert isinstance(info.value, ValueError)
    assert is_token_id(value) is False


def test_invalid_id_error_truncates_the_value() -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_token_id("agent_id", "." * 500)
    assert info.value.value == "." * 200


@pytest.mark.parametrize("value", ["compute.heavy", "filesystem.read_file", "github_create_pr", "a", "a.b.c",
                                   "A-1.b_2.C-3", "x" * 256, ("a." * 127) + "bc"])
def test_validate_tool_id_accepts(value: str) -> None:
    assert validate_tool_id(value) == value


@pytest.mark.parametrize("value", ["a..b", ".a", "a.", ".", "a b", " a", "x" * 257, "", "a/b", "a*", "a:b",
                                   "a\n", None, 3])
def test_validate_tool_id_rejects(value: Any) -> None:
    with pytest.raises(InvalidIdError, match="invalid tool_id"):
        validate_tool_id(value)


def test_new_id_is_a_uuid_v7() -> None:
    for _ in range(50):
        s = new_id()
        u = uuid.UUID(s)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert str(u) == s and len(s) == 36 and s == s.lower()
        assert is_token_id(s)
    assert len({new_id() for _ in range(1000)}) == 1000


def test_new_id_embeds_the_millisecond_clock_and_orders_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"ns": 1_774_440_000_123_456_789}
    randomness = iter([b"\xff" * 10, b"\x00" * 10])
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: clock["ns"]))
    monkeypatch.setattr(ids, "os", SimpleNamespace(urandom=lambda n: next(randomness)))
    early = new_id()   # maximal random bits
    clock["ns"] += 1_000_000  # one millisecond later
    late = new_id()    # minimal random bits
    assert uuid.UUID(early).int >> 80 == 1_774_440_000_123
    assert uuid.UUID(late).int >> 80 == 1_774_440_000_124
    assert early < late
    assert uuid.UUID(early) < uuid.UUID(late)
    for s in (early, late):
        assert uuid.UUID(s).version == 7 and uuid.UUID(s).variant == uuid.RFC_4122


def test_new_ids_sort_by_creation_time_across_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(1_774_440_000_000_000_000, 1_774_440_000_000_000_000 + 100 * 1_000_000, 1_000_000))
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: next(ticks)))
    made = [new_id() for _ in range(100)]
    assert made == sorted(made)


# ----------------------------------------------------------------------- names --
def test_names_default_prefix() -> None:
    n = Names()
    assert n.prefix == "rebuno"
    assert n.api("agent.intent") == "rebuno.api.agent.intent"
    assert n.api("health") == "rebuno.api.health"
    assert n.api_wildcard == "rebuno.api.>"
    assert n.assign("researcher") == "rebuno.assign.researcher"
    assert n.jobs("fs-runner") == "rebuno.jobs.fs-runner"
    assert n.events("e_1") == "rebuno.events.e_1"
    assert n.events_wildcard == "rebuno.events.>"
    assert (n.assign_stream, n.jobs_stream, n.events_stream) == ("REBUNO_ASSIGN", "REBUNO_JOBS", "REBUNO_EVENTS")
    assert (n.executions_bucket, n.tools_bucket, n.runners_bucket) == (
        "rebuno-executions", "rebuno-tools", "rebuno-runners")
    assert n.agent_consumer("researcher") == "agent-researcher"
    assert n.runner_consumer("fs-runner") == "runner-fs-runner"


def test_names_custom_prefix() -> None:
    n = Names("acme_prod-2")
    assert n.api("executions.create") == "acme_prod-2.api.executions.create"
    assert n.api_wildcard == "acme_prod-2.api.>"
    assert n.assign("a") == "acme_prod-2.assign.a"
    assert n.jobs("r") == "acme_prod-2.jobs.r"
    assert n.events("e") == "acme_prod-2.events.e"
    assert (n.assign_stream, n.jobs_stream, n.events_stream) == (
        "ACME_PROD-2_ASSIGN", "ACME_PROD-2_JOBS", "ACME_PROD-2_EVENTS")
    assert (n.executions_bucket, n.tools_bucket, n.runners_bucket) == (
        "acme_prod-2-executions", "acme_prod-2-tools", "acme_prod-2-runners")
    assert Names("x" * 32).prefix == "x" * 32


@pytest.mark.parametrize("prefix", ["", "a.b", "a b", "a*", "a>", "x" * 33, "é"])
def test_names_rejects_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        Names(prefix)


@pytest.mark.parametrize("op", ["agent.nope", "", "executions", "api.health", "health.>"])
def test_names_rejects_unknown_api_operations(op: str) -> None:
    with pytest.raises(ValueError, match="unknown API operation"):
        Names().api(op)


@pytest.mark.parametrize("op", API_OPERATIONS)
def test_api_operation_round_trip(op: str) -> None:
    n = Names("p1")
    assert n.api_operation(n.api(op)) == op
    assert Names("p2").api_operation(n.api(op)) is None


@pytest.mark.parametrize("subject", ["rebuno.api.nope", "rebuno.api.", "rebuno.events.e1", "other.api.health",
                                     "rebuno.apihealth"])
def test_api_operation_of_other_subjects_is_none(subject: str) -> None:
    assert Names().api_operation(subject) is None


@pytest.mark.parametrize("build", [
    lambda n: n.assign("bad.agent"), lambda n: n.jobs("bad runner"), lambda n: n.events("e>"),
    lambda n: n.agent_consumer(""), lambda n: n.runner_consumer("*"),
])
def test_names_reject_ids_that_are_not_subject_tokens(build) -> None:
    with pytest.raises(InvalidIdError):
        build(Names())


def test_names_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REBUNO_PREFIX", raising=False)
    assert Names.from_env().prefix == "rebuno"
    monkeypatch.setenv("REBUNO_PREFIX", "staging")
    assert Names.from_env().prefix == "staging"
    assert Names.from_env("explicit").prefix == "explicit"
    monkeypatch.setenv("REBUNO_PREFIX", "bad.prefix")
    with pytest.raises(ValueError):
        Names.from_env()


# ---------------------------------------------------------------------- events --
MINIMAL_PAYLOADS: dict[str, Any] = {
    "execution.created": ev.ExecutionCreatedPayload(agent_id="a"),
    "execution.started": ev.ExecutionStartedPayload(session_id="s", consumer_id="c"),
    "execution.blocked": ev.ExecutionBlockedPayload(reason="signal", ref="go"),
    "execution.resumed": ev.ExecutionResumedPayload(reason="signal received: go", signal_id="ev-3", idempotency_key="e1:wait:go:1"),
    "execution.completed": ev.ExecutionCompletedPayload(),
    "execution.failed": ev.ErrorPayload(error="boom"),
    "execution.cancelled": ev.ReasonPayload(reason="cancelled by request"),
    "execution.reset": ev.ExecutionResetPayload(reason="lease_expired", from_status="running"),
    "intent.accepted": ev.IntentAcceptedPayload(intent_type="complete"),
    "intent.denied": ev.IntentDeniedPayload(intent_type="invoke_tool", reason="no", rule_id="r1", tool_id="t"),
    "step.created": ev.StepCreatedPayload(tool_id="t", deadline=T0),
    "step.dispatched": ev.StepDispatchedPayload(deadline=T0),
    "step.started": ev.StepStartedPayload(runner_id="r"),
    "step.completed": ev.StepCompletedPayload(),
    "step.failed": ev.StepFailedPayload(error="e"),
    "step.retried": ev.StepRetriedPayload(next_attempt=2),
    "step.timed_out": ev.EmptyPayload(),
    "step.cancelled": ev.ReasonPayload(reason="execution cancelled"),
    "step.approval_required": ev.StepApprovalRequiredPayload(tool_id="t"),
    "signal.received": ev.SignalReceivedPayload(signal_type="s"),
    "agent.timeout": ev.AgentTimeoutPayload(),
}


def make_event(event_type: str, sequence: int = 1, payload: Any = None) -> Any:
    cls = ev.EVENT_TYPES[event_type]
    eid = f"ev-{sequence}"
    return cls(id=eid, execution_id="e1", timestamp=T0, sequence=sequence, causation_id=eid,
               correlation_id="corr", step_id="st" if event_type.startswith("step.") else "",
               payload=MINIMAL_PAYLOADS[event_type] if payload is None else payload)


def test_event_types_table() -> None:
    assert set(MINIMAL_PAYLOADS) == set(ev.EVENT_TYPES), "add a minimal payload for the new event type"
    assert len(ev.EVENT_TYPES) == 21
    for tag, cls in ev.EVENT_TYPES.items():
        assert cls.__struct_config__.tag == tag


def test_every_event_type_round_trips_through_an_event_batch() -> None:
    events = [make_event(t, i) for i, t in enumerate(ev.EVENT_TYPES, start=1)]
    batch = ev.EventBatch(execution_id="e1", events=events, request_key="req-1")
    raw = codec.encode(batch)
    decoded = codec.decode_batch(raw)
    assert decoded == batch
    assert [type(e) for e in decoded.events] == [type(e) for e in events]
    as_json = json.loads(raw)
    assert [e["type"] for e in as_json["events"]] == list(ev.EVENT_TYPES)
    assert as_json["events"][0]["timestamp"] == "2026-03-25T12:00:00Z"


@pytest.mark.parametrize("event_type", list(ev.EVENT_TYPES))
def test_each_event_decodes_alone(event_type: str) -> None:
    e = make_event(event_type, 7)
    back = codec.decode_event(codec.encode(e))
    assert back == e and type(back) is type(e)
    assert back.type == event_type


def test_event_with_the_wrong_payload_shape_is_rejected() -> None:
    raw = codec.encode(make_event("execution.failed", 1, payload=ev.ReasonPayload(reason="r")))
    with pytest.raises(msgspec.ValidationError):
        codec.decode_event(raw)


def test_event_properties() -> None:
    created = make_event("step.created", payload=ev.StepCreatedPayload(tool_id="compute.heavy", deadline=T0,
                                                                        arguments={"n": 2}))
    assert (created.type, created.tool_id, created.arguments) == ("step.created", "compute.heavy", {"n": 2})
    denied = make_event("intent.denied")
    assert (denied.type, denied.tool_id, denied.arguments) == ("intent.denied", "t", None)
    done = make_event("execution.completed", payload=ev.ExecutionCompletedPayload(output={"x": 1}))
    assert (done.type, done.tool_id, done.arguments) == ("execution.completed", "", None)
    approval = make_event("step.approval_required",
                          payload=ev.StepApprovalRequiredPayload(tool_id="deploy", arguments=[1]))
    assert (approval.tool_id, approval.arguments) == ("deploy", [1])


def test_terminal_event_types() -> None:
    assert ev.TERMINAL_EVENT_TYPES == frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
    for tag, cls in ev.EVENT_TYPES.items():
        assert cls.terminal is (tag in ev.TERMINAL_EVENT_TYPES)


def test_unknown_event_type_is_rejected() -> None:
    raw = json.dumps({"type": "execution.exploded", "id": "x", "execution_id": "e", "timestamp": "2026-03-25T12:00:00Z",
                      "sequence": 1, "causation_id": "x", "correlation_id": "x", "payload": {}}).encode()
    with pytest.raises(msgspec.ValidationError):
        codec.decode_event(raw)


def test_type_headers_name_the_struct() -> None:
    h = codec.type_headers(api.Ok())
    assert h == {"Rebuno-Type": "Ok", "Rebuno-Schema": str(codec.SCHEMA_VERSION)}
    assert codec.type_headers(api.Error(code="CONFLICT", message="m"))["Rebuno-Type"] == "Error"
