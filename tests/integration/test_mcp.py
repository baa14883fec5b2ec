"""MCP servers through the kernel, with real servers: the test server of ``_mcp_server.py``
(``mcp`` 2.x ``MCPServer``) over stdio and streamable HTTP, and the published
``mcp-server-time`` behind the no-code runner."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from rebuno import MCPServer, PolicyError, Runner, ToolError, execution, remote
from rebuno import mcp as rebuno_mcp
from rebuno._server import free_port
from schemas.records import ExecutionStatus

from ..conftest import Cluster, policy_from_yaml, serving_bodies, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVER = str(Path(__file__).with_name("_mcp_server.py"))
FAST = {"retry_delay": 0.2, "max_retry_delay": 1.0, "connect_timeout": 10.0}
"""Quick reconnection for tests (seconds)."""

web = remote.Tools("web")
clock = remote.Tools("time")


@pytest.fixture
def servers() -> Iterator[list[MCPServer]]:
    """Append the MCPServers a test makes; they leave the process registry afterwards, so
    agents of later tests do not connect them."""
    made: list[MCPServer] = []
    try:
        yield made
    finally:
        for server in made:
            rebuno_mcp._forget(server)


def stdio_server(name: str, **kw: Any) -> MCPServer:
    return MCPServer(name, command=sys.executable, args=[SERVER], **{**FAST, **kw})


@contextlib.contextmanager
def http_server(port: int) -> Iterator[subprocess.Popen]:
    """The test server on streamable HTTP at ``http://127.0.0.1:<port>/mcp`` (up within 20 s)."""
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the HTTP MCP test server did not start") from None
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def step_events(client, execution_id: str) -> list:
    return [e for e in await client.events_snapshot(execution_id, limit=1000) if e.step_id]


async def test_local_mcp_tools_go_through_policy(nats_server, servers, tmp_path) -> None:
    cluster = Cluster(nats_server)
    await cluster.start_kernel(policy_from_yaml("""
rules:
  - {id: no-crash, priority: 1, when: {tool_id: "loc.crash_once"}, then: {decision: deny, reason: "kills the server"}}
  - {id: loc-tools, priority: 2, when: {tool_id: "loc.*"}, then: {decision: allow}}
"""))
    loc = stdio_server("loc", env={"REBUNO_TEST_SECRET": "only-in-the-server"})
    servers.append(loc)
    marker = tmp_path / "crashed"

    async def handler(text: str) -> dict:
        tools = {fn.__name__: fn for fn in loc.tools}
        out: dict[str, Any] = {
            "shout": await tools["shout"](text=text), "add": await tools["add"](a=2),
            "lines": await tools["lines"](n=2), "picture": await tools["picture"](),
            "secret": await tools["secret"](), "weird": await loc["loc.weird_name_v2"](),
            "proxy": await execution.invoke_tool("loc.shout", {"text": "proxy"}),
        }
        try:
            await tools["fail"](reason="bad idea")
        except ToolError as exc:
            out["fail"] = {"msg": str(exc), "retryable": exc.retryable, "tool": exc.tool_id, "step": bool(exc.step_id)}
        try:
            await tools["crash_once"](marker=str(marker))
        except PolicyError as exc:
            out["denied"] = exc.rule_id
        return out

    try:
        await cluster.agent("mcp-local", handler)
        assert loc.connected and len(loc) == 10
        shout = loc["loc.shout"]
        assert (shout.__name__, shout.__doc__) == ("shout", "Upper-case a text (one text content item, no structured content).")
        sig = inspect.signature(loc["loc.add"])
        assert [(p.name, p.kind, p.annotation, p.default) for p in sig.parameters.values()] == [
            ("a", inspect.Parameter.KEYWORD_ONLY, int, inspect.Parameter.empty),
            ("b", inspect.Parameter.KEYWORD_ONLY, int, 1)]
        assert (shout.__rebuno_tool_id__, shout.__rebuno_remote__, shout.__rebuno_mcp__) == ("loc.shout", False, True)
        assert shout.__rebuno_tool__.id == "loc.shout" and shout.__input_schema__["required"] == ["text"]
        assert loc["loc.weird_name_v2"].__name__ == "weird name/v2"
        with pytest.raises(RuntimeError, match="outside an active execution"):
            await shout(text="x")

        client = cluster.client()
        final = await client.run_until_complete("mcp-local", {"text": "hi"})
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output == {
            "shout": "HI", "add": {"result": 3}, "lines": "line 0\nline 1",
            "picture": [{"type": "text", "text": "a red dot"},
                        {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}],
            "secret": {"result": "only-in-the-server"}, "weird": {"result": "weird ok"}, "proxy": "PROXY",
            "fail": {"msg": "Error executing tool fail: refused: bad idea", "retryable": False, "tool": "loc.fail",
                     "step": True},
            "denied": "no-crash"}
        assert not marker.exists()  # denied before the server was called
        events = await client.events_snapshot(final.id, limit=1000)
        created = [e for e in events if e.type == "step.created"]
        assert len(created) == 8 and not any(e.payload.remote for e in created)
        completed = {e.step_id: e.payload.result for e in events if e.type == "step.completed"}
        shout_step = next(e.step_id for e in created if e.payload.tool_id == "loc.shout")
        assert completed[shout_step] == "HI"
        failed = [e for e in events if e.type == "step.failed"]
        assert [f.payload.error for f in failed] == ["Error executing tool fail: refused: bad idea"]
        denied = [e for e in events if e.type == "intent.denied"]
        assert [(d.payload.tool_id, d.payload.rule_id) for d in denied] == [("loc.crash_once", "no-crash")]
    finally:
        await cluster.close()
    assert not loc.connected  # disconnected when the agent stopped


async def test_runner_hosts_http_server_and_tools_next_to_a_tool(cluster: Cluster, servers) -> None:
    port = free_port()
    with http_server(port):
        server = MCPServer("web", url=f"http://127.0.0.1:{port}/mcp", headers={"Authorization": "Bearer runner-only"},
                           **FAST)
        servers.append(server)

        def ping() -> str:
            """A plain @tool on the same runner."""
            return "pong"

        with serving_bodies({"web.ping": ping}):
            runner = Runner("web-runner", kernel_url=cluster.url,
                            capabilities=["web.ping", "web.add", "web.auth_header", "web.lines", "web.fail"])
            runner.host(server)
            task = asyncio.create_task(runner.run_async())
            cluster.tasks.append((runner, task))
            await asyncio.wait_for(runner.ready.wait(), 20)
        with pytest.raises(ValueError, match="already hosted by runner 'web-runner'"):
            Runner("other").host(server)

        async def handler(a: int) -> dict:
            out = {"names": sorted(fn.__name__ for fn in web.tools), "auth": await web["web.auth_header"](),
                   "add": await web["web.add"](a=a), "lines": await web["web.lines"](n=3),
                   "ping": await web["web.ping"]()}
            try:
                await web["web.fail"](reason="remote")
            except ToolError as exc:
                out["fail"] = str(exc)
            return out

        await cluster.agent("web-agent", handler)
        sig = inspect.signature(web["web.add"])
        assert list(sig.parameters) == ["a", "b"] and sig.parameters["b"].default == 1
        client = cluster.client()
        final = await client.run_until_complete("web-agent", {"a": 41})
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output == {"names": ["web_add", "web_auth_header", "web_fail", "web_lines", "web_ping"],
                                "auth": {"result": "Bearer runner-only"}, "add": {"result": 42},
                                "lines": "line 0\nline 1\nline 2", "ping": "pong",
                                "fail": "Error executing tool fail: refused: remote"}
        listed = {t.id: t for t in await client.list_tools("web")}
        assert sorted(listed) == ["web.add", "web.auth_header", "web.fail", "web.lines", "web.ping"]
        assert all(t.runner_ids == ["web-runner"] for t in listed.values())
        assert listed["web.add"].input_schema["properties"]["b"] == {"default": 1, "title": "B", "type": "integer"}
        assert listed["web.add"].description.startswith("Add two integers")
        failed = [e for e in await step_events(client, final.id) if e.type == "step.failed"]
        assert len(failed) == 1 and not failed[0].payload.retryable  # isError is not retried


async def test_tool_id_collision_is_a_hard_error(cluster: Cluster, servers) -> None:
    def add(a: int) -> int:
        return a

    server = stdio_server("clash")
    servers.append(server)
    with serving_bodies({"clash.add": add}):
        runner = Runner("clash-runner", kernel_url=cluster.url).host(server)
        with pytest.raises(ValueError) as info:
            await asyncio.wait_for(runner.run_async(), 20)
    message = str(info.value)
    assert "'clash.add' is provided by both @tool" in message and "add" in message
    assert "MCP server 'clash' (tool 'add')" in message
    assert not server.connected


async def test_servers_that_cannot_connect(servers) -> None:
    silent = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # reads until stdin closes, never answers
    mute = MCPServer("mute", command=silent[0], args=silent[1:], connect_timeout=0.5)
    missing = MCPServer("missing", command="/nonexistent/mcp-server", **FAST)
    slow = MCPServer("slow", command=silent[0], args=silent[1:], connect_timeout=30)
    servers.extend([mute, missing, slow])
    started = time.monotonic()
    assert await asyncio.gather(mute.connect(), missing.connect()) == [False, False]
    assert time.monotonic() - started < 5
    assert "no answer within connect_timeout=0.5 s" in mute.last_error
    assert "FileNotFoundError" in missing.last_error
    with pytest.raises(RuntimeError, match=r"'missing' is not connected \(last error: FileNotFoundError"):
        missing.tools
    connecting = asyncio.create_task(slow.connect())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.gather(mute.disconnect(), missing.disconnect(), slow.disconnect())
    assert time.monotonic() - started < 5  # closing abandons a connection attempt in progress
    assert await asyncio.wait_for(connecting, 5) is False


async def test_server_down_at_start_comes_up_later(cluster: Cluster, servers) -> None:
    port = free_port()
    tokens = iter(range(1_000_000))
    server = MCPServer("late", url=f"http://127.0.0.1:{port}/mcp", health_interval=0.3,
                       headers=lambda: {"Authorization": f"Bearer t{next(tokens)}"}, **FAST)
    servers.append(server)
    up = stdio_server("early")
    servers.append(up)
    runner = Runner("late-runner", kernel_url=cluster.url).host(server).host(up)
    task = asyncio.create_task(runner.run_async())
    cluster.tasks.append((runner, task))
    await asyncio.wait_for(runner.ready.wait(), 20)
    client = cluster.client()
    assert "ConnectError" in server.last_error and not server.connected
    assert await client.list_tools("late") == []
    assert "early.add" in {t.id for t in await client.list_tools("early")}  # the other server works meanwhile

    async def late_ids() -> set[str]:
        return {t.id for t in await client.list_tools("late")}

    with http_server(port):
        await wait_for(late_ids, timeout=15)
        assert "late.add" in await late_ids()

        async def handler(a: int) -> Any:
            return [await execution.invoke_tool("late.add", {"a": a}), await execution.invoke_tool("late.auth_header")]

        await cluster.agent("late-agent", handler)
        final = await client.run_until_complete("late-agent", {"a": 1})
        assert final.status is ExecutionStatus.COMPLETED, final.error
        added, auth = final.output
        assert added == {"result": 2}
        assert auth["result"].startswith("Bearer t") and int(auth["result"][8:]) > 0  # headers made per request
    # the server went away: its tools leave the directory, the other server's stay
    await wait_for(lambda: _empty(client, "late"), timeout=15)
    assert "early.add" in {t.id for t in await client.list_tools("early")}


async def _empty(client, prefix: str) -> bool:
    return not await client.list_tools(prefix)


async def test_server_killed_mid_call_fails_the_attempt_as_retryable(cluster: Cluster, servers, tmp_path) -> None:
    stdio = stdio_server("crashy")
    port = free_port()
    http = MCPServer("gone", url=f"http://127.0.0.1:{port}/mcp", reconnect_wait=0.5, **FAST)
    servers.extend([stdio, http])
    with http_server(port):
        runner = Runner("crash-runner", kernel_url=cluster.url).host(stdio).host(http)
        task = asyncio.create_task(runner.run_async())
        cluster.tasks.append((runner, task))
        await asyncio.wait_for(runner.ready.wait(), 20)

        async def handler(marker: str, tool: str) -> Any:
            return await execution.invoke_tool(tool, {"marker": marker})

        await cluster.agent("crash-agent", handler)
        client = cluster.client()
        # stdio: the process dies mid-call, the kernel retries, the runner restarts the server
        final = await client.run_until_complete("crash-agent", {"marker": str(tmp_path / "a"), "tool": "crashy.crash_once"})
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output == {"result": "survived"}
        types = [(e.type, getattr(e.payload, "retryable", None)) for e in await step_events(client, final.id)]
        assert types[:6] == [("step.created", None), ("step.dispatched", None), ("step.started", None),
                             ("step.failed", True), ("step.retried", None), ("step.dispatched", None)]
        assert types[-1] == ("step.completed", None)
        failed = next(e for e in await step_events(client, final.id) if e.type == "step.failed")
        assert failed.payload.error.startswith("MCP server 'crashy' went away during the call to 'crash_once'")
        # HTTP: the server dies mid-call and stays away: every attempt fails as retryable, then the step fails
        final = await client.run_until_complete("crash-agent", {"marker": str(tmp_path / "b"), "tool": "gone.crash_once"})
    assert final.status is ExecutionStatus.FAILED
    failures = [e.payload for e in await step_events(client, final.id) if e.type == "step.failed"]
    assert [f.retryable for f in failures] == [True, True, False]
    assert failures[0].error.startswith("MCP server 'gone' went away during the call to 'crash_once'")
    assert failures[-1].error.startswith("MCP server 'gone' is not connected: still unreachable after 0.5 s")
    assert final.error == failures[-1].error


async def test_cancel_reaches_a_hosted_mcp_call(cluster: Cluster, servers) -> None:
    server = stdio_server("sleepy")
    servers.append(server)
    runner = Runner("sleepy-runner", kernel_url=cluster.url).host(server)
    task = asyncio.create_task(runner.run_async())
    cluster.tasks.append((runner, task))
    await asyncio.wait_for(runner.ready.wait(), 20)

    async def handler(seconds: float) -> Any:
        return await execution.invoke_tool("sleepy.slow", {"seconds": seconds})

    await cluster.agent("sleepy-agent", handler)
    client = cluster.client()
    ex = await client.create("sleepy-agent", {"seconds": 30})

    async def started() -> bool:
        return any(e.type == "step.started" for e in await step_events(client, ex.id))

    await wait_for(started, timeout=10)
    await client.cancel(ex.id)
    assert [e.type for e in await step_events(client, ex.id)][-1] == "step.cancelled"
    # the call was abandoned, not the connection: the server serves the next call at once
    final = await asyncio.wait_for(client.run_until_complete("sleepy-agent", {"seconds": 0.01}), 10)
    assert final.output == {"result": "slept"} and server.connected


# ----------------------------------------------------------------- no-code runner --
def write_config(path: Path, servers: dict) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


async def test_no_code_runner_serves_mcp_server_time(cluster: Cluster, tmp_path) -> None:
    config = write_config(tmp_path / "servers.json", {
        "time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "${RUNNER_TZ}"],
                 "env": {"TZ": "UTC"}, "autoApprove": []}})
    env = {**os.environ, "REBUNO_URL": cluster.url, "RUNNER_TZ": "Europe/Paris", "REBUNO_LOG_LEVEL": "warning",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rebuno.cli", "runner", "--runner-id", "time-runner",
                             "--mcp-config", str(config)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        client = cluster.client()

        async def ids() -> set[str]:
            if proc.poll() is not None:
                raise AssertionError(f"rebuno runner exited {proc.returncode}: {proc.stderr.read()}")
            return {t.id for t in await client.list_tools("time")}

        assert await wait_for(ids, timeout=30) == {"time.get_current_time", "time.convert_time"}

        async def handler(tz: str) -> dict:
            now = await clock["time.get_current_time"](timezone=tz)
            converted = await clock["time.convert_time"](source_timezone="UTC", time="12:00", target_timezone=tz)
            return {"now": now, "converted": converted}

        await cluster.agent("clock-agent", handler)
        assert list(inspect.signature(clock["time.get_current_time"]).parameters) == ["timezone"]
        final = await client.run_until_complete("clock-agent", {"tz": "Asia/Tokyo"})
        assert final.status is ExecutionStatus.COMPLETED, final.error
        assert final.output["now"]["timezone"] == "Asia/Tokyo" and "datetime" in final.output["now"]
        assert final.output["converted"]["target"]["datetime"].endswith("21:00:00+09:00")
        events = await step_events(client, final.id)
        assert [e.payload.runner_id for e in events if e.type == "step.dispatched"] == ["time-runner"] * 2
    finally:
        proc.terminate()
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_no_code_runner_refuses_bad_config_files(tmp_path, capsys) -> None:
    from rebuno.cli import main

    def run(path: Path) -> str:
        assert main(["runner", "--runner-id", "r1", "--mcp-config", str(path)]) == 2
        return capsys.readouterr().err

    assert f"MCP config {tmp_path / 'none.json'}: file not found" in run(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"mcpServers": {"a": ')
    assert "invalid JSON at line 1 column 22" in run(tmp_path / "bad.json")
    assert "no servers" in run(write_config(tmp_path / "empty.json", {}))
    assert "server 'a': needs \"command\" (stdio) or \"url\"" in run(write_config(tmp_path / "x.json", {"a": {}}))
    assert "environment variable NOPE_NOT_SET is not set" in run(
        write_config(tmp_path / "v.json", {"a": {"url": "http://x/${NOPE_NOT_SET}"}}))
