"""Approval, rate limits, deadlines, leases and retries against a real broker (issue 3;
``spec/kernel.md`` §11, §13, §16; ``spec/policy.md`` §7; DESIGN §4.7)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kernel import KernelConfig
from rebuno import PolicyError, RateLimitedError, StepTimeoutError, ToolError, execution, tool
from rebuno.errors import ConflictError, ValidationError
from schemas.records import ExecutionStatus

from ..conftest import Cluster, policy_from_yaml, serving_bodies, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

APPROVAL = """
rules:
  - id: approve-transfer
    priority: 1
    when: {tool_id: "ctl.transfer"}
    then: {decision: require_approval, reason: "money moves need a human"}
default: {decision: allow}
"""


async def _events(client, execution_id: str) -> list:
    return [e async for e in client.events(execution_id)]


async def _blocked_on_approval(client, execution_id: str) -> bool:
    ex = await client.get(execution_id)
    return ex.status is ExecutionStatus.BLOCKED and ex.blocked_reason == "approval"


@tool("ctl.transfer")
def transfer(amount: int) -> str:
    """Move money (test body)."""
    return f"moved {amount}"


async def _transfer_handler(amount: int) -> dict:
    try:
        return {"result": await transfer(amount=amount)}
    except PolicyError as exc:
        return {"denied": exc.message}


@pytest.mark.parametrize("approved", [True, False])
async def test_approval_granted_or_denied(nats_server, approved: bool) -> None:
    c = Cluster(nats_server)
    try:
        await c.start_kernel(policy_from_yaml(APPROVAL))
        await c.agent("payer", _transfer_handler)
        client = c.client()
        ex = await client.create("payer", {"amount": 5})
        await wait_for(lambda: _blocked_on_approval(client, ex.id))
        blocked = await client.get(ex.id)
        with pytest.raises(ValidationError):  # the wrong step changes nothing
            await client.approve(ex.id, "not-the-held-step")
        if approved:
            await client.approve(ex.id, reason="looks fine")
        else:  # through the CLI, as an operator would
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rebuno.cli", "deny", ex.id, "--reason", "not this month",
                "--url", nats_server.url, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            assert out.decode().startswith(f"Denied on execution {ex.id}: not this month")
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED, final.error
        types = [e.type for e in events]
        required = next(e for e in events if e.type == "step.approval_required")
        assert required.step_id == blocked.blocked_ref
        assert (required.payload.tool_id, required.payload.arguments) == ("ctl.transfer", {"amount": 5})
        assert required.payload.rule_id == "approve-transfer"
        assert types.count("signal.received") == 1  # the refused approval recorded nothing
        if approved:
            assert final.output == {"result": "moved 5"}
            assert types[types.index("step.approval_required"):] == [
                "step.approval_required", "execution.blocked", "signal.received", "step.dispatched",
                "execution.resumed", "step.completed", "intent.accepted", "execution.completed"]
        else:
            assert final.output == {"denied": "Tool invocation denied by human approval: not this month"}
            failed = next(e for e in events if e.type == "step.failed")
            assert failed.payload.error == "not this month" and not failed.payload.retryable
            assert "step.completed" not in types
    finally:
        await c.close()


async def test_approval_of_a_remote_step_dispatches_it(nats_server) -> None:
    c = Cluster(nats_server)

    @tool("ctl.deploy", remote=True)
    async def deploy(service: str) -> str:
        """Stub."""

    async def body(service: str) -> str:
        return f"deployed {service}"

    async def handler(service: str) -> str:
        return await deploy(service=service)

    try:
        await c.start_kernel(policy_from_yaml(APPROVAL.replace("ctl.transfer", "ctl.deploy")))
        with serving_bodies({"ctl.deploy": body}):
            await c.runner("deployer", capabilities=["ctl.deploy"])
        await c.agent("deploy-agent", handler)
        client = c.client()
        ex = await client.create("deploy-agent", {"service": "api"})
        await wait_for(lambda: _blocked_on_approval(client, ex.id))
        await client.approve(ex.id)
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED and final.output == "deployed api"
        assert [e.type for e in events].count("step.started") == 1
    finally:
        await c.close()


async def test_rate_limit_is_shared_by_two_kernel_replicas(nats_server) -> None:
    c = Cluster(nats_server)
    limited = policy_from_yaml("""
rules:
  - id: limited-search
    priority: 1
    when: {tool_id: "ctl.search"}
    then: {decision: allow}
    rate_limit: {max: 3, window: "1m"}
default: {decision: allow}
""")

    @tool("ctl.search")
    def search(q: str) -> str:
        """Search (test body)."""
        return q.upper()

    async def handler(n: int) -> dict:
        passed, refused = 0, []
        for i in range(n):
            try:
                await search(q=f"q{i}")
                passed += 1
            except RateLimitedError as exc:
                refused.append(exc.message)
        return {"passed": passed, "refused": refused}

    try:
        k1 = await c.start_kernel(limited)
        k2 = await c.start_kernel(limited)
        await c.agent("searcher", handler, max_concurrency=4)
        client = c.client()
        # two executions at once, so both replicas serve intents of the same agent and tool
        exs = [await client.create("searcher", {"n": 4}) for _ in range(2)]
        outputs = []
        for ex in exs:
            [_ async for _ in client.events(ex.id)]
            final = await client.get(ex.id)
            assert final.status is ExecutionStatus.COMPLETED, final.error
            outputs.append(final.output)
        assert sum(o["passed"] for o in outputs) == 3
        refusals = [r for o in outputs for r in o["refused"]]
        assert len(refusals) == 5
        assert all(r == "rate limit exceeded: max 3 per 1m (rule: limited-search)" for r in refusals)
        denied = [e for ex in exs for e in await _events(client, ex.id) if e.type == "intent.denied"]
        assert len(denied) == 5 and {e.payload.rule_id for e in denied} == {"limited-search"}
        assert k1 is not k2
    finally:
        await c.close()


async def test_step_timeout_fires_after_the_replica_that_set_it_is_killed(nats_server, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("""
rules:
  - id: slow-is-bounded
    priority: 1
    when: {tool_id: "ctl.slow"}
    then: {decision: allow, timeout_ms: 3000}
default: {decision: allow}
""")
    env = {**os.environ, "REBUNO_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "rebuno.cli", "kernel", "--nats", nats_server.url,
                              "--policy", str(policy)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    c = Cluster(nats_server)

    @tool("ctl.slow")
    async def slow() -> str:
        """Never finishes in time."""
        await asyncio.sleep(60)
        return "late"

    async def handler() -> str:
        try:
            return await slow()
        except StepTimeoutError as exc:
            return f"gave up: {exc}"

    try:
        client = c.client(timeout=5.0)
        await wait_for(lambda: _healthy(client), timeout=30)
        await c.agent("slow-agent", handler)
        ex = await client.create("slow-agent")
        created = await wait_for(lambda: _event(client, ex.id, "step.created"), timeout=30)
        await c.start_kernel(policy_from_yaml(policy.read_text()))  # the survivor
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output.startswith("gave up: tool ctl.slow timed out")
        timed_out = next(e for e in events if e.type == "step.timed_out")
        late = timed_out.timestamp - created.payload.deadline
        assert timedelta(0) <= late < timedelta(seconds=1), late
        assert created.payload.deadline - created.timestamp == timedelta(milliseconds=3000)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        await c.close()


async def test_execution_timeout_fails_the_execution(nats_server) -> None:
    c = Cluster(nats_server)
    started = asyncio.Event()

    async def handler() -> Any:
        started.set()
        return await execution.wait_signal("never")

    try:
        await c.start_kernel(config=KernelConfig(execution_timeout=timedelta(seconds=2)))
        await c.agent("patient", handler)
        client = c.client()
        ex = await client.create("patient")
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.FAILED
        assert final.error == "execution exceeded maximum duration"
        failed = events[-1]
        assert failed.type == "execution.failed"
        late = failed.timestamp - (events[0].timestamp + timedelta(seconds=2))
        assert timedelta(0) <= late < timedelta(seconds=1), late
        assert started.is_set()
        with pytest.raises(ConflictError):
            await client.send_signal(ex.id, "never")
    finally:
        await c.close()


async def test_retried_steps_succeed_on_their_second_attempt(nats_server) -> None:
    c = Cluster(nats_server)
    attempts: dict[str, int] = {"local": 0, "remote": 0}

    @tool("ctl.flaky_local")
    def flaky_local(x: int) -> int:
        """Fails once, retryably."""
        attempts["local"] += 1
        if attempts["local"] == 1:
            raise ToolError("temporary glitch", retryable=True)
        return x * 2

    @tool("ctl.flaky_remote", remote=True)
    async def flaky_remote(x: int) -> int:
        """Stub."""

    async def remote_body(x: int) -> int:
        attempts["remote"] += 1
        if attempts["remote"] == 1:
            raise ToolError("runner glitch", retryable=True)
        return x * 3

    async def handler(x: int) -> list[int]:
        return [await flaky_local(x=x), await flaky_remote(x=x)]

    try:
        await c.start_kernel(config=KernelConfig(retry_base_delay=timedelta(milliseconds=100)))
        with serving_bodies({"ctl.flaky_remote": remote_body}):
            await c.runner("flaky-runner", capabilities=["ctl.flaky_remote"])
        await c.agent("retrier", handler)
        client = c.client()
        ex = await client.create("retrier", {"x": 7})
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output == [14, 21] and attempts == {"local": 2, "remote": 2}
        for error in ("temporary glitch", "runner glitch"):
            failed = next(e for e in events if e.type == "step.failed" and e.payload.error == error)
            assert failed.payload.retryable
            retried = events[events.index(failed) + 1]
            assert retried.type == "step.retried" and retried.step_id == failed.step_id
            assert retried.payload.next_attempt == 2
            assert retried.payload.not_before - retried.timestamp == timedelta(milliseconds=200)
            done = next(e for e in events if e.type == "step.completed" and e.step_id == failed.step_id)
            assert done.timestamp >= retried.payload.not_before
    finally:
        await c.close()


async def test_lapsed_session_lease_resets_the_execution(nats_server) -> None:
    """An agent instance that stops renewing (here: its process is frozen with SIGSTOP) loses
    the execution at the lease: the kernel records it within a second, with no other instance
    around to trigger a re-claim."""
    c = Cluster(nats_server)
    env = {**os.environ, "REBUNO_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"lease-{os.getpid()}.log"
    agent = subprocess.Popen([sys.executable, "-m", "tests.integration._actor_proc", "agent", nats_server.url,
                              str(log)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        await c.start_kernel()
        client = c.client()
        ex = await client.create("fault-agent", {"tag": "lease"})
        await wait_for(lambda: _status(client, ex.id, "blocked"), timeout=30)
        agent.send_signal(signal.SIGSTOP)
        reset = await wait_for(lambda: _event(client, ex.id, "execution.reset"), timeout=15)
        timeout = await _event(client, ex.id, "agent.timeout")
        assert reset.payload.reason == "lease_expired" and reset.payload.from_status == "blocked"
        assert (await client.get(ex.id)).status is ExecutionStatus.PENDING
        agent.send_signal(signal.SIGCONT)  # the frozen instance is fenced; it takes the work again
        await wait_for(lambda: _status(client, ex.id, "blocked"), timeout=30)
        await client.send_signal(ex.id, "proceed", {"ok": 1})
        [_ async for _ in client.events(ex.id)]
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED and final.output["payload"] == {"ok": 1}
        assert timeout.payload.session_id
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGCONT)
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
        log.unlink(missing_ok=True)
        await c.close()


async def _healthy(client) -> bool:
    try:
        await client.health()
        return True
    except Exception:  # noqa: BLE001
        return False


async def _status(client, execution_id: str, status: str) -> bool:
    return (await client.get(execution_id)).status.value == status


async def _event(client, execution_id: str, event_type: str):
    for e in await client.events_snapshot(execution_id, limit=1000):
        if e.type == event_type:
            return e
    return None


async def test_policy_apply_switches_every_replica_live(nats_server, tmp_path: Path) -> None:
    c = Cluster(nats_server)
    policy = tmp_path / "strict.yaml"
    policy.write_text("""
rules:
  - id: no-switch
    priority: 1
    when: {tool_id: "ctl.switch"}
    then: {decision: deny, reason: "switched off"}
default: {decision: allow}
""")

    @tool("ctl.switch")
    def switch() -> str:
        """Test body."""
        return "on"

    async def handler() -> list[str]:
        out = [await switch()]
        await execution.wait_signal("again")
        try:
            out.append(await switch())
        except PolicyError as exc:
            out.append(f"denied by {exc.details['rule_id']}")
        return out

    try:
        replicas = [await c.start_kernel(), await c.start_kernel()]
        await c.agent("switcher", handler)
        client = c.client()
        ex = await client.create("switcher")
        await wait_for(lambda: _status(client, ex.id, "blocked"))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rebuno.cli", "policy", "apply", str(policy), "--url", nats_server.url, "--json",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        version = __import__("json").loads(out)["version"]
        await wait_for(lambda: all(k.policy.version == version for k in replicas))
        late = await c.start_kernel()  # a replica started afterwards adopts the applied policy
        assert late.policy.version == version
        await client.send_signal(ex.id, "again")
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.output == ["on", "denied by no-switch"], final.error
        accepted = next(e for e in events if e.type == "intent.accepted")
        denied = next(e for e in events if e.type == "intent.denied")
        assert (accepted.payload.rule_id, accepted.payload.policy_version) == ("permissive-default",
                                                                               "builtin:permissive")
        assert (denied.payload.rule_id, denied.payload.policy_version) == ("no-switch", version)
        assert (await client.health()).policy_version == version
    finally:
        await c.close()


async def test_policy_apply_refuses_an_invalid_policy(nats_server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    priority: 1\n    then: {decision: maybe}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rebuno.cli", "policy", "apply", str(bad), "--url", nats_server.url,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert 'bad.yaml:4: rule "x" has invalid decision "maybe"' in err.decode()


async def test_live_agents_keep_their_executions_across_a_kernel_outage(nats_server, tmp_path: Path) -> None:
    """Every kernel replica is down for longer than the agent's lease. A live agent keeps trying
    to renew, so the restarted kernel gives it one lease length before enforcing leases: the
    execution is not reset and the waiting handler finishes in its first session."""
    env = {**os.environ, "REBUNO_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "rebuno.cli", "kernel", "--nats", nats_server.url, "--agent-lease", "2"]
    c = Cluster(nats_server)

    async def handler() -> Any:
        return await execution.wait_signal("go")

    kernel = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    restarted = None
    try:
        client = c.client(timeout=5.0)
        await wait_for(lambda: _healthy(client), timeout=30)
        await c.agent("outlasting", handler, lease=2.0)
        ex = await client.create("outlasting")
        await wait_for(lambda: _status(client, ex.id, "blocked"), timeout=30)
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(10)
        await asyncio.sleep(4.0)  # twice the lease with no kernel at all
        restarted = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        await wait_for(lambda: _healthy(client), timeout=30)
        await asyncio.sleep(3.0)  # past the grace: the agent renewed meanwhile
        await client.send_signal(ex.id, "go", {"ok": True})
        events = await _events(client, ex.id)
        final = await client.get(ex.id)
        assert final.status is ExecutionStatus.COMPLETED and final.output == {"ok": True}, final.error
        types = [e.type for e in events]
        assert types.count("execution.started") == 1 and "agent.timeout" not in types, types
    finally:
        for proc in (kernel, restarted):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        await c.close()
