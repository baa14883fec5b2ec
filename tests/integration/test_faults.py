"""Fault tests: actors killed for real with SIGKILL (DESIGN §5 invariants 2, 3, 4, 5)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rebuno import tool
from schemas.records import ExecutionStatus

from ..conftest import Cluster, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "REBUNO_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


async def test_killed_agent_instance_is_replaced_and_resumes_durably(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "bodies.log"
    first = spawn("-m", "tests.integration._actor_proc", "agent", cluster.url, str(log))
    second = None
    try:
        client = cluster.client()
        ex = await client.create("fault-agent", {"tag": "t1"})
        await wait_for(lambda: _status(client, ex.id, "blocked"), timeout=30)
        assert log.read_text().count("t1") == 1
        kill(first)
        second = spawn("-m", "tests.integration._actor_proc", "agent", cluster.url, str(log))
        # the notice's lease (2 s) lapses, the broker redelivers it, the kernel re-claims
        await wait_for(lambda: _has_event(client, ex.id, "execution.reset"), timeout=30)
        await wait_for(lambda: _status(client, ex.id, "blocked"), timeout=30)
        await client.send_signal(ex.id, "proceed", {"ok": True})
        events = [e async for e in client.events(ex.id)]
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output["payload"] == {"ok": True} and final.output["pid"] == second.pid
        # durable resume: the completed tool call was answered from the log, not run again
        assert final.output["count"] == 1 and log.read_text().count("t1") == 1
        types = [e.type for e in events]
        assert types.count("execution.started") == 2
        reset = next(e for e in events if e.type == "execution.reset")
        assert reset.payload.reason == "lease_expired" and reset.payload.from_status == "blocked"
        sessions = [e.payload.session_id for e in events if e.type == "execution.started"]
        assert sessions[0] != sessions[1]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    finally:
        kill(first)
        if second is not None:
            kill(second)


async def test_killed_runner_fails_attempt_as_runner_lost_and_retries(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    first = spawn("-m", "tests.integration._actor_proc", "runner", cluster.url, str(log))
    second = None

    @tool("fault.sleepy", remote=True)
    async def sleepy(seconds: float) -> str:
        """Stub."""

    async def handler(seconds: float) -> str:
        return await sleepy(seconds=seconds)

    try:
        await cluster.agent("sleepy-agent", handler)
        client = cluster.client()
        await wait_for(lambda: _tools(client, "fault.sleepy"), timeout=30)
        ex = await client.create("sleepy-agent", {"seconds": 1.0})
        await wait_for(lambda: log.exists() and "start" in log.read_text(), timeout=30)
        kill(first)
        second = spawn("-m", "tests.integration._actor_proc", "runner", cluster.url, str(log))
        events = [e async for e in client.events(ex.id)]
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output == "slept 1.0"
        failed = [e for e in events if e.type == "step.failed"]
        assert len(failed) == 1 and failed[0].payload.retryable and "runner_lost" in failed[0].payload.error
        retried = next(e for e in events if e.type == "step.retried")
        assert retried.payload.next_attempt == 2
        assert log.read_text().count("start") == 2
    finally:
        kill(first)
        if second is not None:
            kill(second)


async def test_kernel_replica_killed_under_load(cluster: Cluster, tmp_path: Path) -> None:
    """Two kernel processes plus the in-process one; SIGKILL one mid-workload: nothing is lost,
    stuck or double-completed, and every log stays gap-free."""
    kernels = [spawn("-m", "rebuno.cli", "kernel", "--nats", cluster.url, "--policy", str(_allow_all(tmp_path)))
               for _ in range(2)]

    @tool("fault.inc")
    async def inc(n: int) -> int:
        await asyncio.sleep(0.02)
        return n + 1

    async def handler(start: int) -> int:
        n = start
        for _ in range(4):
            n = await inc(n)
        return n

    try:
        await cluster.agent("load-agent", handler, max_concurrency=8, request_timeout=2.0)
        client = cluster.client(timeout=2.0)
        await asyncio.sleep(1.0)  # let the kernel processes subscribe
        runs = [asyncio.create_task(client.run_until_complete("load-agent", {"start": i})) for i in range(40)]
        await asyncio.sleep(0.25)
        assert not all(r.done() for r in runs), "the workload must still be running when the replica dies"
        kill(kernels[0])
        finals = await asyncio.wait_for(asyncio.gather(*runs), 90)
        for i, f in enumerate(finals):
            assert f.status is ExecutionStatus.COMPLETED, (f.id, f.error)
            assert f.output == i + 4
            events = await client.events_snapshot(f.id, limit=1000)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert [e.type for e in events].count("execution.completed") == 1
            assert [e.type for e in events].count("step.completed") == 4
    finally:
        for k in kernels:
            kill(k)


def _allow_all(tmp_path: Path) -> Path:
    p = tmp_path / "allow.yaml"
    p.write_text("rules:\n  - {id: all, when: {}, then: {decision: allow}}\n")
    return p


async def _status(client, execution_id: str, status: str) -> bool:
    return (await client.get(execution_id)).status.value == status


async def _has_event(client, execution_id: str, event_type: str) -> bool:
    return any(e.type == event_type for e in await client.events_snapshot(execution_id, limit=1000))


async def _tools(client, tool_id: str) -> bool:
    return any(t.id == tool_id for t in await client.list_tools())



async def test_two_kernel_processes_serve_parallel_calls(cluster: Cluster, tmp_path: Path) -> None:
    """Kernel replicas in separate processes, requests spread over both: a replica must never
    refuse a request on a record another replica has not finished writing (the stream wins)."""
    await cluster.stop_kernel(cluster.kernels[0][0])
    kernels = [spawn("-m", "rebuno.cli", "kernel", "--nats", cluster.url, "--policy", str(_allow_all(tmp_path)))
               for _ in range(2)]

    @tool("fault.double")
    async def double(n: int) -> int:
        return 2 * n

    async def handler(k: int) -> list[int]:
        return list(await asyncio.gather(*(double(k + i) for i in range(6))))

    try:
        client = cluster.client(timeout=5.0)
        for _ in range(100):  # wait for both replicas to serve
            try:
                await client.health()
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.1)
        await cluster.agent("parallel-agent", handler, max_concurrency=8)
        finals = await asyncio.wait_for(asyncio.gather(
            *(client.run_until_complete("parallel-agent", {"k": k}) for k in range(40))), 60)
        for k, f in enumerate(finals):
            assert f.status is ExecutionStatus.COMPLETED, (f.id, f.error)
            assert f.output == [2 * (k + i) for i in range(6)]
    finally:
        for k in kernels:
            kill(k)


@pytest.mark.parametrize("outage_s", [1.0, 8.0], ids=["short-outage", "outage-longer-than-retries"])
async def test_every_kernel_down_then_restarted(cluster: Cluster, tmp_path: Path, outage_s: float) -> None:
    """All kernel replicas die mid-execution; when one comes back the execution finishes. A short
    outage is bridged by request retries; a longer one fails the handler's call, the agent hands
    the notice back, and the re-claimed handler resumes from the log (its first call replayed)."""
    await cluster.stop_kernel(cluster.kernels[0][0])
    policy = str(_allow_all(tmp_path))
    kernel = spawn("-m", "rebuno.cli", "kernel", "--nats", cluster.url, "--policy", policy)
    runs: list[str] = []
    gate = asyncio.Event()

    @tool(f"fault.step_{int(outage_s)}")
    async def step(tag: str) -> str:
        runs.append(tag)
        return tag.upper()

    async def handler(input: dict) -> list[str]:
        first = await step("one")
        await gate.wait()
        return [first, await step("two")]

    second_kernel = None
    try:
        client = cluster.client(timeout=5.0)
        for _ in range(100):
            try:
                await client.health()
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.1)
        agent_id = f"outage-agent-{int(outage_s)}"
        await cluster.agent(agent_id, handler, request_timeout=1.0, lease=2.0)
        ex = await client.create(agent_id, {})
        await wait_for(lambda: runs == ["one"], timeout=20)
        kill(kernel)
        gate.set()  # the handler's next call meets a broker with no kernel
        await asyncio.sleep(outage_s)
        second_kernel = spawn("-m", "rebuno.cli", "kernel", "--nats", cluster.url, "--policy", policy)
        await wait_for(lambda: _status(client, ex.id, "completed"), timeout=60, interval=0.2)
        final = await client.get(ex.id)
        assert final.output == ["ONE", "TWO"]
        assert runs.count("one") == 1  # never run twice, even when the handler ran again
        events = await client.events_snapshot(ex.id, limit=1000)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        restarted = [e.type for e in events].count("execution.started")
        assert restarted == (1 if outage_s < 2 else 2)
    finally:
        kill(kernel)
        if second_kernel is not None:
            kill(second_kernel)
