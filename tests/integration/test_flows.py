"""End-to-end flows against a real nats-server: kernel, agents, runners and clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rebuno import ConflictError, PolicyError, ToolError, execution, tool
from schemas.records import ExecutionStatus

from ..conftest import Cluster, policy_from_yaml, serving_bodies, wait_for

pytestmark = pytest.mark.integration


# Tools used across these tests (ids are unique to this module).
@tool("flows.add")
async def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    await asyncio.sleep(0.01)
    return a + b


@tool("flows.boom")
def boom(reason: str) -> None:
    """Always fails."""
    raise ValueError(f"boom: {reason}")


@tool("flows.remote_upper", remote=True)
async def remote_upper(text: str) -> str:
    """Stub: the body runs on a runner."""


def types(events) -> list[str]:
    return [e.type for e in events]


async def test_create_claim_complete(cluster: Cluster) -> None:
    async def handler(prompt: str) -> dict:
        return {"answer": prompt.upper(), "execution_id": execution.id, "labels": execution.labels}

    await cluster.agent("echo", handler)
    client = cluster.client()
    seen = []
    final = await client.run_until_complete("echo", {"prompt": "hi"}, labels={"team": "a"}, on_event=seen.append)
    assert final.status is ExecutionStatus.COMPLETED
    assert final.output == {"answer": "HI", "execution_id": final.id, "labels": {"team": "a"}}
    assert types(seen) == ["execution.created", "execution.started", "intent.accepted", "execution.completed"]
    assert [e.sequence for e in seen] == [1, 2, 3, 4]
    # the log is readable afterwards too, and events() of a finished execution replays and ends
    replay = [e async for e in client.events(final.id)]
    assert [e.id for e in replay] == [e.id for e in seen]


async def test_missing_input_fails_before_handler(cluster: Cluster) -> None:
    ran = []

    async def handler(prompt: str, repo: str = "") -> str:
        ran.append(prompt)
        return prompt

    await cluster.agent("strict", handler)
    final = await cluster.client().run_until_complete("strict", {"repo": "x"})
    assert final.status is ExecutionStatus.FAILED
    assert final.error == "missing required input fields: prompt"
    assert ran == []


async def test_local_tool_success_failure_and_parallel_calls(cluster: Cluster) -> None:
    async def handler(x: int) -> dict:
        one = await add(x)
        many = await asyncio.gather(*(add(i, i) for i in range(5)))
        try:
            await boom("bad input")
        except ToolError as exc:
            failure = {"message": str(exc), "tool_id": exc.tool_id, "step_id": bool(exc.step_id)}
        return {"one": one, "many": many, "failure": failure}

    await cluster.agent("tools", handler)
    client = cluster.client()
    final = await client.run_until_complete("tools", {"x": 41})
    assert final.status is ExecutionStatus.COMPLETED, final.error
    assert final.output["one"] == 42
    assert final.output["many"] == [0, 2, 4, 6, 8]
    assert final.output["failure"] == {"message": "boom: bad input", "tool_id": "flows.boom", "step_id": True}
    events = await client.events_snapshot(final.id, limit=1000)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    created = [e for e in events if e.type == "step.created"]
    assert len(created) == 7
    assert sum(e.type == "step.completed" for e in events) == 6
    failed = [e for e in events if e.type == "step.failed"]
    assert len(failed) == 1 and failed[0].payload.error == "boom: bad input" and not failed[0].payload.retryable
    # parallel steps were open at the same time: 5 created before the 5 completed
    par = [e for e in events if e.step_id in {c.step_id for c in created[1:6]}]
    assert types(par)[:5] == ["step.created"] * 5


async def test_handler_exception_fails_execution(cluster: Cluster) -> None:
    async def handler(input: dict) -> None:
        raise RuntimeError("model exploded")

    await cluster.agent("crashy", handler)
    final = await cluster.client().run_until_complete("crashy", {"anything": 1})
    assert final.status is ExecutionStatus.FAILED
    assert final.error == "model exploded"


async def test_remote_tool_through_runner(cluster: Cluster) -> None:
    calls = []

    def upper_body(text: str) -> str:
        """Upper-case text."""
        calls.append((execution.id, text))
        return text.upper()

    def lower_body(text: str) -> str:
        return text.lower()

    with serving_bodies({"flows.remote_upper": upper_body, "flows.remote_lower": lower_body}):
        await cluster.runner("upper", capabilities=["flows.remote_upper"])
        await cluster.runner("lower", capabilities=["flows.remote_lower"])

    async def handler(text: str) -> dict:
        direct = await remote_upper(text=text)
        via_proxy = await execution.invoke_tool("flows.remote_upper", {"text": "proxy"})
        return {"direct": direct, "proxy": via_proxy}

    await cluster.agent("remote-user", handler)
    client = cluster.client()
    final = await client.run_until_complete("remote-user", {"text": "abc"})
    assert final.status is ExecutionStatus.COMPLETED, final.error
    assert final.output == {"direct": "ABC", "proxy": "PROXY"}
    assert calls == [(final.id, "abc"), (final.id, "proxy")]
    events = await client.events_snapshot(final.id, limit=1000)
    step_events = [e.type for e in events if e.step_id]
    assert step_events[:4] == ["step.created", "step.dispatched", "step.started", "step.completed"]
    dispatched = next(e for e in events if e.type == "step.dispatched")
    assert dispatched.payload.runner_id == "upper" and dispatched.payload.job_id
    created = next(e for e in events if e.type == "step.created")
    assert created.payload.remote and created.payload.max_attempts == 3
    tools = await client.list_tools("flows")
    assert {t.id for t in tools} >= {"flows.remote_upper", "flows.remote_lower"}
    upper = next(t for t in tools if t.id == "flows.remote_upper")
    assert upper.runner_ids == ["upper"] and upper.input_schema["required"] == ["text"]


async def test_policy_denial_reaches_caller_and_is_recorded(nats_server) -> None:
    cluster = Cluster(nats_server)
    await cluster.start_kernel(policy_from_yaml("""
rules:
  - {id: allow-add, priority: 1, when: {tool_id: "flows.add"}, then: {decision: allow}}
  - {id: no-boom, priority: 2, when: {tool_id: "flows.boo*"}, then: {decision: deny, reason: "too dangerous"}}
"""))
    ran = []

    @tool("flows.forbidden")
    def forbidden() -> None:
        ran.append(1)

    async def handler(input: dict) -> dict:
        ok = await add(1, 2)
        out: dict[str, Any] = {"ok": ok}
        for name, call in (("boom", lambda: boom("x")), ("default", forbidden)):
            try:
                await call()
            except PolicyError as exc:
                out[name] = {"rule": exc.rule_id, "msg": str(exc)}
        return out

    try:
        await cluster.agent("guarded", handler)
        client = cluster.client()
        final = await client.run_until_complete("guarded", {})
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output["ok"] == 3
        assert final.output["boom"] == {"rule": "no-boom", "msg": "[FORBIDDEN] policy denied: too dangerous (rule: no-boom)"}
        assert final.output["default"]["rule"] == "default"
        assert ran == []
        events = await client.events_snapshot(final.id, limit=1000)
        denied = [e for e in events if e.type == "intent.denied"]
        assert [(d.payload.tool_id, d.payload.rule_id) for d in denied] == [("flows.boom", "no-boom"),
                                                                             ("flows.forbidden", "default")]
        assert sum(e.type == "step.created" for e in events) == 1
    finally:
        await cluster.close()


@pytest.mark.parametrize("signal_first", [False, True], ids=["wait-then-signal", "signal-then-wait"])
async def test_wait_and_signal(cluster: Cluster, signal_first: bool) -> None:
    gate = asyncio.Event()

    async def handler(input: dict) -> dict:
        await gate.wait()
        payload = await execution.wait_signal("go")
        return {"payload": payload}

    await cluster.agent("waiter", handler)
    client = cluster.client()
    ex = await client.create("waiter", {})
    await wait_for(lambda: client.get(ex.id), timeout=10)
    if signal_first:
        await wait_for(lambda: _status(client, ex.id, "running"))
        await client.send_signal(ex.id, "go", {"n": 7})
        gate.set()
    else:
        gate.set()
        await wait_for(lambda: _status(client, ex.id, "blocked"))
        await client.send_signal(ex.id, "other", {"ignored": True})
        assert (await client.get(ex.id)).status is ExecutionStatus.BLOCKED
        await client.send_signal(ex.id, "go", {"n": 7})
    events = [e async for e in client.events(ex.id)]
    final = await client.get(ex.id)
    assert final.status is ExecutionStatus.COMPLETED, final.error
    assert final.output == {"payload": {"n": 7}}
    t = types(events)
    if signal_first:
        assert t[2:5] == ["signal.received", "intent.accepted", "execution.resumed"]
    else:
        assert t[2:4] == ["intent.accepted", "execution.blocked"]
        assert t[4:7] == ["signal.received", "signal.received", "execution.resumed"]
    with pytest.raises(ConflictError):
        await client.send_signal(ex.id, "go", {})


async def _status(client, execution_id: str, status: str) -> bool:
    return (await client.get(execution_id)).status.value == status


async def test_cancel_while_remote_job_runs(cluster: Cluster) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    async def slow(seconds: float) -> str:
        started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "done"

    with serving_bodies({"flows.slow": slow}):
        await cluster.runner("slow-runner", capabilities=["flows.slow"])
    handler_cancelled = asyncio.Event()

    async def handler(input: dict) -> str:
        try:
            return await execution.invoke_tool("flows.slow", {"seconds": 30})
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    await cluster.agent("canceller", handler)
    client = cluster.client()
    ex = await client.create("canceller", {})
    await asyncio.wait_for(started.wait(), 10)
    after = await client.cancel(ex.id)
    assert after.status is ExecutionStatus.CANCELLED
    await asyncio.wait_for(cancelled.wait(), 10)
    await asyncio.wait_for(handler_cancelled.wait(), 10)
    events = await client.events_snapshot(ex.id, limit=1000)
    assert types(events)[-2:] == ["step.cancelled", "execution.cancelled"]
    assert events[-2].payload.reason == "execution cancelled"
    await asyncio.sleep(0.3)  # nothing is appended after the terminal event
    assert len(await client.events_snapshot(ex.id, limit=1000)) == len(events)
    with pytest.raises(ConflictError):
        await client.cancel(ex.id)


async def test_two_agent_instances_share_executions(cluster: Cluster) -> None:
    async def handler(n: int) -> dict:
        await asyncio.sleep(0.05)
        return {"n": n}

    a1 = await cluster.agent("pool", handler, max_concurrency=2)
    a2 = await cluster.agent("pool", handler, max_concurrency=2)
    client = cluster.client()
    finals = await asyncio.gather(*(client.run_until_complete("pool", {"n": i}) for i in range(12)))
    assert all(f.status is ExecutionStatus.COMPLETED for f in finals)
    consumers = []
    for f in finals:
        started = next(e for e in await client.events_snapshot(f.id) if e.type == "execution.started")
        consumers.append(started.payload.consumer_id)
    assert set(consumers) == {a1.consumer_id, a2.consumer_id}
    assert min(consumers.count(a1.consumer_id), consumers.count(a2.consumer_id)) >= 3


async def test_two_kernel_replicas_serve_one_workload(cluster: Cluster) -> None:
    await cluster.start_kernel()  # second replica in the same queue group

    async def handler(k: int) -> dict:
        total = 0
        for i in range(3):
            total += await add(k, i)
        parallel = await asyncio.gather(add(k), add(k), add(k))
        return {"total": total, "parallel": parallel}

    await cluster.agent("replicated", handler, max_concurrency=8)
    client = cluster.client()
    finals = await asyncio.gather(*(client.run_until_complete("replicated", {"k": k}) for k in range(24)))
    for k, f in enumerate(finals):
        assert f.status is ExecutionStatus.COMPLETED, f.error
        assert f.output == {"total": 3 * k + 3, "parallel": [k + 1] * 3}
        events = await client.events_snapshot(f.id, limit=1000)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert len({e.id for e in events}) == len(events)
        assert types(events).count("execution.completed") == 1
    listed = await client.list(agent_id="replicated", limit=200)
    assert {r.id for r in listed.executions} == {f.id for f in finals}


async def test_list_filters_and_pagination(cluster: Cluster) -> None:
    client = cluster.client()
    ids = [(await client.create("nobody-home", {"i": i}, labels={"batch": "p", "odd": str(i % 2)})).id for i in range(7)]
    page1 = await client.list(agent_id="nobody-home", limit=3)
    page2 = await client.list(agent_id="nobody-home", limit=3, cursor=page1.next_cursor)
    page3 = await client.list(agent_id="nobody-home", limit=3, cursor=page2.next_cursor)
    got = [r.id for p in (page1, page2, page3) for r in p.executions]
    assert got == list(reversed(ids)) and page3.next_cursor == ""
    odd = await client.list(labels={"odd": "1"}, status="pending")
    assert {r.id for r in odd.executions} == {ids[i] for i in (1, 3, 5)}
    assert (await client.list(status="completed", agent_id="nobody-home")).executions == []


async def test_instances_of_one_runner_with_different_tools(cluster: Cluster) -> None:
    """A rolling upgrade: the old instance serves v1 only, the new one v1 and v2. The runner's
    capabilities are the union (heartbeats of the old one do not drop v2), and a v2 job pulled
    by the old instance is handed back to the new one."""
    served: list[tuple[str, str]] = []

    def v1_body(x: int) -> str:
        served.append(("v1", execution.id))
        return f"v1:{x}"

    def v2_body(x: int) -> str:
        served.append(("v2", execution.id))
        return f"v2:{x}"

    @tool("upgrade.v1", remote=True)
    async def v1(x: int) -> str:
        """Stub."""

    @tool("upgrade.v2", remote=True)
    async def v2(x: int) -> str:
        """Stub."""

    with serving_bodies({"upgrade.v1": v1_body, "upgrade.v2": v2_body}):
        old = await cluster.runner("upgrading", capabilities=["upgrade.v1"], heartbeat_interval=0.2)
        new = await cluster.runner("upgrading", capabilities=["upgrade.v1", "upgrade.v2"], heartbeat_interval=0.2)
    client = cluster.client()

    async def both_listed() -> bool:
        tools = {t.id: t.runner_ids for t in await client.list_tools("upgrade")}
        return tools == {"upgrade.v1": ["upgrading"], "upgrade.v2": ["upgrading"]}

    await wait_for(both_listed)
    await asyncio.sleep(0.6)  # several heartbeats of each instance
    assert await both_listed()

    async def handler(n: int) -> list[str]:
        return list(await asyncio.gather(*(v2(x=i) for i in range(n)), v1(x=0)))

    await cluster.agent("upgrade-agent", handler, max_concurrency=2)
    final = await client.run_until_complete("upgrade-agent", {"n": 6})
    assert final.status is ExecutionStatus.COMPLETED, final.error
    assert final.output == [f"v2:{i}" for i in range(6)] + ["v1:0"]
    assert sorted(kind for kind, _ in served) == ["v1"] + ["v2"] * 6
    # the old instance stops: after three of its heartbeats v2 is still there (the new one has it)
    await cluster.stop_actor(old)
    await asyncio.sleep(0.8)
    assert await both_listed()
    assert new.runner_id == "upgrading"
