"""The kernel API at the wire: fencing, idempotency, and bad input (DESIGN §5 invariants 3, 4, 6)."""

from __future__ import annotations

import nats
import pytest

from rebuno._connection import Requester
from rebuno.errors import ConflictError, NotFoundError, UnauthorizedError, ValidationError
from schemas import api, codec
from schemas.subjects import HEADER_TYPE

from ..conftest import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
async def wire(cluster: Cluster):
    nc = await nats.connect(cluster.url)
    try:
        yield nc, Requester(nc, cluster.names, timeout=5, max_retries=0)
    finally:
        await nc.close()


async def _claimed(req: Requester, agent: str = "wire-agent", consumer: str = "c1") -> tuple[str, str]:
    ex = await req.call("executions.create", api.CreateExecution(agent_id=agent, input={"q": 1}))
    claim = await req.call("agent.claim", api.Claim(execution_id=ex.id, agent_id=agent, consumer_id=consumer,
                                                   notice_seq=7, delivery=1))
    return ex.id, claim.session_id


async def test_stale_session_is_fenced_after_reclaim(wire) -> None:
    _, req = wire
    ex_id, old_session = await _claimed(req)
    step = await req.call("agent.intent", api.IntentRequest(
        execution_id=ex_id, session_id=old_session, intent=api.InvokeTool(tool_id="t.local", idempotency_key="k1")))
    # the same notice redelivered (the first holder's lease lapsed) to another instance
    claim2 = await req.call("agent.claim", api.Claim(execution_id=ex_id, agent_id="wire-agent", consumer_id="c2",
                                                    notice_seq=7, delivery=2))
    assert claim2.session_id != old_session
    assert [h.status.value for h in claim2.history] == ["cancelled"]
    with pytest.raises(UnauthorizedError, match="session not found"):
        await req.call("agent.intent", api.IntentRequest(
            execution_id=ex_id, session_id=old_session, intent=api.Complete(output=1)))
    with pytest.raises(UnauthorizedError):
        await req.call("agent.step_result", api.StepResult(
            execution_id=ex_id, session_id=old_session, step_id=step.step_id, success=True, data=1))
    # a duplicate notice (different stream sequence) cannot steal the execution
    with pytest.raises(ConflictError, match="already claimed"):
        await req.call("agent.claim", api.Claim(execution_id=ex_id, agent_id="wire-agent", consumer_id="c3",
                                               notice_seq=99, delivery=1))
    # the new session works
    await req.call("agent.intent", api.IntentRequest(execution_id=ex_id, session_id=claim2.session_id,
                                                     intent=api.Complete(output=2)))
    events = (await req.call("executions.events", api.ListEvents(execution_id=ex_id))).events
    assert [e.type for e in events] == [
        "execution.created", "execution.started", "intent.accepted", "step.created", "agent.timeout",
        "step.cancelled", "execution.reset", "execution.started", "intent.accepted", "execution.completed"]
    assert events[6].payload.reason == "lease_expired"


async def test_repeated_intent_key_returns_same_step_and_result(wire) -> None:
    _, req = wire
    ex_id, session = await _claimed(req)
    intent = api.IntentRequest(execution_id=ex_id, session_id=session,
                               intent=api.InvokeTool(tool_id="t.local", arguments={"a": 1}, idempotency_key="same"))
    first = await req.call("agent.intent", intent)
    again = await req.call("agent.intent", intent)
    assert again.step_id == first.step_id and again.step_status == "pending"
    await req.call("agent.step_result", api.StepResult(execution_id=ex_id, session_id=session,
                                                       step_id=first.step_id, success=True, data={"r": 5}))
    # the result report itself is idempotent; a contradicting one is refused
    await req.call("agent.step_result", api.StepResult(execution_id=ex_id, session_id=session,
                                                       step_id=first.step_id, success=True, data={"r": 5}))
    with pytest.raises(ConflictError, match="already resolved"):
        await req.call("agent.step_result", api.StepResult(execution_id=ex_id, session_id=session,
                                                           step_id=first.step_id, success=False, error="x"))
    replay = await req.call("agent.intent", intent)
    assert (replay.step_id, replay.step_status, replay.result) == (first.step_id, "succeeded", {"r": 5})
    events = (await req.call("executions.events", api.ListEvents(execution_id=ex_id))).events
    assert [e.type for e in events].count("step.created") == 1
    # a retried create with the same execution id returns the same execution, once
    ex = await req.call("executions.get", api.GetExecution(execution_id=ex_id))
    again_ex = await req.call("executions.create", api.CreateExecution(agent_id="wire-agent", input={"q": 1},
                                                                      execution_id=ex_id))
    assert again_ex.id == ex.id and again_ex.status == ex.status
    with pytest.raises(ConflictError, match="other content"):
        await req.call("executions.create", api.CreateExecution(agent_id="wire-agent", input={"q": 2},
                                                               execution_id=ex_id))


async def test_retried_signal_and_cancel_count_once(wire) -> None:
    _, req = wire
    ex_id, _ = await _claimed(req)
    sig = api.SignalExecution(execution_id=ex_id, signal_type="go", payload=1, request_id="sig-1")
    await req.call("executions.signal", sig)
    await req.call("executions.signal", sig)
    cancel = api.CancelExecution(execution_id=ex_id, request_id="cancel-1")
    first = await req.call("executions.cancel", cancel)
    again = await req.call("executions.cancel", cancel)
    assert first.status.value == again.status.value == "cancelled"
    events = (await req.call("executions.events", api.ListEvents(execution_id=ex_id))).events
    assert [e.type for e in events].count("signal.received") == 1
    assert [e.type for e in events].count("execution.cancelled") == 1


@pytest.mark.parametrize("subject_op, payload, fragment", [
    ("agent.intent", b"\xff\x00not json", "malformed agent.intent request"),
    ("agent.intent", b"[]", "invalid agent.intent request"),
    ("executions.create", b'{"agent_id": "a", "surprise": 1}', "unknown field"),
    ("executions.create", b'{"agent_id": "bad id!"}', "invalid executions.create request"),
    ("executions.create", b'{"agent_id": "a", "labels": {"k": 1}}', "Expected `str`"),
    ("agent.intent", b'{"execution_id": "e", "session_id": "s", "intent": {"type": "teleport"}}', "invalid"),
    ("executions.list", b'{"status": "sleeping"}', "invalid executions.list request"),
    ("executions.signal", b'{"execution_id": "e", "signal_type": ""}', "invalid executions.signal request"),
])
async def test_malformed_requests_get_validation_errors(wire, cluster: Cluster, subject_op, payload, fragment) -> None:
    nc, _ = wire
    msg = await nc.request(cluster.names.api(subject_op), payload, timeout=5)
    assert msg.headers[HEADER_TYPE] == "Error"
    err = codec.ERROR_DECODER.decode(msg.data)
    assert err.code == "VALIDATION_ERROR"
    assert fragment in err.message


async def test_unknown_ids_get_not_found(wire) -> None:
    _, req = wire
    missing = "0000-does-not-exist"
    for op, request in (("executions.get", api.GetExecution(execution_id=missing)),
                        ("executions.cancel", api.CancelExecution(execution_id=missing)),
                        ("executions.signal", api.SignalExecution(execution_id=missing, signal_type="x")),
                        ("agent.claim", api.Claim(execution_id=missing, agent_id="a", consumer_id="c")),
                        ("agent.intent", api.IntentRequest(execution_id=missing, session_id="s",
                                                           intent=api.Complete()))):
        with pytest.raises(NotFoundError, match=missing):
            await req.call(op, request)
    ex_id, session = await _claimed(req)
    with pytest.raises(NotFoundError, match="step"):
        await req.call("agent.step_result", api.StepResult(execution_id=ex_id, session_id=session,
                                                           step_id="nope", success=True))


async def test_oversize_input_is_refused_and_changes_nothing(wire, cluster: Cluster) -> None:
    nc, req = wire
    big = "x" * (nc.max_payload - 100)
    with pytest.raises(ValidationError, match="max payload"):
        await req.call("executions.create", api.CreateExecution(agent_id="big", input=big))
    # just under the broker limit as a request, but the record/event would not fit
    ex_id = "oversize-1"
    with pytest.raises(ValidationError, match="max payload"):
        await req.call("executions.create", api.CreateExecution(agent_id="big", input="y" * (nc.max_payload - 400),
                                                               execution_id=ex_id))
    with pytest.raises(NotFoundError):
        await req.call("executions.get", api.GetExecution(execution_id=ex_id))
    # the kernel is still healthy
    health = await req.call("health", api.Health())
    assert health.status == "ok" and health.jetstream


async def test_garbage_on_every_subject_never_kills_the_kernel(wire, cluster: Cluster) -> None:
    nc, req = wire
    from schemas.subjects import API_OPERATIONS

    for op in API_OPERATIONS:
        for payload in (b"", b"null", b"{", b'{"execution_id": 5}', b"\x00" * 64):
            msg = await nc.request(cluster.names.api(op), payload, timeout=5)
            if op == "health" and payload in (b"{}",):
                continue
            assert msg.headers[HEADER_TYPE] in ("Error", "HealthReply"), (op, payload)
    msg = await nc.request(f"{cluster.names.prefix}.api.no.such.operation", b"{}", timeout=5)
    assert codec.ERROR_DECODER.decode(msg.data).code == "NOT_FOUND"
    assert (await req.call("health", api.Health())).status == "ok"


async def test_broker_permission_refusal_is_a_typed_error(tmp_path) -> None:
    """A request the broker refuses for these credentials fails at once with UnauthorizedError
    (not a timeout), and credentials never appear in errors."""
    import subprocess
    import time

    from kernel import Kernel, permissive
    from rebuno import Client
    from rebuno._server import find_nats_server, free_port
    from schemas import Names

    conf = tmp_path / "perm.conf"
    conf.write_text(f"""
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
authorization {{ users = [
  {{ user: kernel, password: kpass }}
  {{ user: viewer, password: vpass, permissions: {{
      publish: {{ allow: ["rebuno.api.health", "rebuno.api.executions.get", "_INBOX.>"] }},
      subscribe: {{ allow: ["_INBOX.>"] }} }} }}
] }}
""")
    port = free_port()
    server = subprocess.Popen([find_nats_server(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                nc = await nats.connect(f"nats://kernel:kpass@127.0.0.1:{port}")
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.05)
        kernel = Kernel(nc, Names(), permissive())
        await kernel.start()
        async with Client(f"nats://viewer:vpass@127.0.0.1:{port}", timeout=10) as viewer:
            assert (await viewer.health()).status == "ok"
            started = time.monotonic()
            with pytest.raises(UnauthorizedError, match="executions.list") as info:
                await viewer.list()
            assert time.monotonic() - started < 5
            assert "vpass" not in str(info.value)
        with pytest.raises(Exception) as bad:
            async with Client(f"nats://viewer:wrong@127.0.0.1:{port}", timeout=2) as c:
                await c.health()
        assert "wrong" not in str(bad.value)
        await kernel.stop()
        await nc.close()
    finally:
        server.terminate()
        server.wait(10)


async def test_event_pages_from_the_middle_of_a_long_log(wire) -> None:
    """``executions.events`` starts reading at the batch mark before ``after_sequence`` (one
    mark per 32 batches) and still returns exactly the requested, gap-free page."""
    _, req = wire
    ex_id, session = await _claimed(req)
    for i in range(45):  # 90 batches: marks at batches 0, 32 and 64
        step = await req.call("agent.intent", api.IntentRequest(
            execution_id=ex_id, session_id=session, intent=api.InvokeTool(tool_id="t.x", idempotency_key=f"k{i}")))
        await req.call("agent.step_result", api.StepResult(execution_id=ex_id, session_id=session,
                                                           step_id=step.step_id, success=True, data=i))
    everything = []
    after = 0
    while page := (await req.call("executions.events", api.ListEvents(
            execution_id=ex_id, after_sequence=after, limit=7))).events:
        everything.extend(page)
        after = page[-1].sequence
    assert [e.sequence for e in everything] == list(range(1, 2 + 45 * 3 + 1))
    for start in (0, 64, 100, 130):
        page = (await req.call("executions.events", api.ListEvents(
            execution_id=ex_id, after_sequence=start, limit=5))).events
        assert [e.sequence for e in page] == [e.sequence for e in everything[start:start + 5]]
