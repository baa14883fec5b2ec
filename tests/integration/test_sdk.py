"""SDK surface against a real broker: input shapes, the execution proxy, remote discovery, the CLI."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from rebuno import execution, remote, tool
from schemas.records import ExecutionStatus

from ..conftest import Cluster, serving_bodies

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Question(BaseModel):
    prompt: str
    repeat: int = 2


async def test_pydantic_and_raw_handlers(cluster: Cluster) -> None:
    async def model_handler(q: Question) -> str:
        return q.prompt * q.repeat

    def raw_handler(data):  # sync handlers are allowed
        return {"got": data}

    await cluster.agent("model-agent", model_handler)
    await cluster.agent("raw-agent", raw_handler)
    client = cluster.client()
    ok = await client.run_until_complete("model-agent", {"prompt": "ab"})
    assert ok.output == "abab"
    bad = await client.run_until_complete("model-agent", {"repeat": 3})
    assert bad.status is ExecutionStatus.FAILED and bad.error.startswith("input validation failed:")
    raw = await client.run_until_complete("raw-agent", [1, "two", None])
    assert raw.output == {"got": [1, "two", None]}


async def test_execution_proxy_inside_handler_and_tools(cluster: Cluster) -> None:
    seen: dict[str, Any] = {}

    @tool("sdk.peek")
    def peek() -> str:
        seen["tool_execution_id"] = execution.id
        return "peeked"

    async def handler(input: dict) -> dict:
        await peek()
        return {"id": execution.id, "agent": execution.agent_id, "session": bool(execution.session_id),
                "input": execution.input, "labels": execution.labels, "history": len(execution.history)}

    await cluster.agent("proxy-agent", handler)
    final = await cluster.client().run_until_complete("proxy-agent", {"k": "v"}, labels={"env": "test"})
    assert final.output == {"id": final.id, "agent": "proxy-agent", "session": True, "input": {"k": "v"},
                            "labels": {"env": "test"}, "history": 0}
    assert seen["tool_execution_id"] == final.id
    with pytest.raises(RuntimeError, match="without an active execution"):
        _ = execution.id


calc = remote.Tools("calc")


async def test_remote_tools_discovery_with_schemas(cluster: Cluster) -> None:
    def add(a: Annotated[int, Field(description="first addend")], b: int = 10) -> int:
        """Add two integers."""
        return a + b

    def neg(x: float) -> float:
        """Negate."""
        return -x

    with serving_bodies({"calc.add": add, "calc.neg": neg}):
        await cluster.runner("calc-runner", capabilities=["calc.add", "calc.neg"])

    async def handler(x: int) -> dict:
        names = sorted(t.__name__ for t in calc.tools)
        total = await calc["calc.add"](a=x)
        negative = await calc["calc.neg"](x=total)
        return {"names": names, "total": total, "negative": negative, "count": len(calc)}

    await cluster.agent("calc-agent", handler)
    assert len(calc) == 2 and "calc.add" in calc
    sig = inspect.signature(calc["calc.add"])
    assert list(sig.parameters) == ["a", "b"] and sig.parameters["a"].annotation is int
    assert sig.parameters["b"].default == 10
    assert calc["calc.add"].__doc__ == "Add two integers."
    final = await cluster.client().run_until_complete("calc-agent", {"x": 5})
    assert final.output == {"names": ["calc_add", "calc_neg"], "total": 15, "negative": -15.0, "count": 2}
    entry = next(t for t in await cluster.client().list_tools("calc") if t.id == "calc.add")
    assert entry.input_schema["properties"]["a"]["description"] == "first addend"
    assert entry.description == "Add two integers."
    with pytest.raises(KeyError, match="calc.add"):
        calc["calc.nope"]


def rebuno_cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "REBUNO_URL": url, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "rebuno.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"rebuno {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


async def test_cli_drives_a_live_kernel(cluster: Cluster) -> None:
    gate = asyncio.Event()

    async def handler(n: int) -> dict:
        await gate.wait()
        return {"signal": await execution.wait_signal("go")}

    await cluster.agent("cli-agent", handler)
    url = cluster.url
    run = lambda *a, **k: asyncio.to_thread(rebuno_cli, url, *a, **k)  # noqa: E731
    created = json.loads((await run("create", "cli-agent", "--input", '{"n": 1}', "--label", "who=cli",
                                    "--json")).stdout)
    ex_id = created["id"]
    assert created["status"] == "pending" and created["labels"] == {"who": "cli"}
    gate.set()
    client = cluster.client()
    for _ in range(200):
        if (await client.get(ex_id)).status is ExecutionStatus.BLOCKED:
            break
        await asyncio.sleep(0.05)
    assert "Signal sent." in (await run("signal", ex_id, "go", "--payload", '{"ok": 1}')).stdout
    tail = await run("events", ex_id, "--tail")
    lines = tail.stdout.strip().splitlines()
    assert lines[0].startswith("[1] ") and "execution.created" in lines[0]
    assert "execution.completed" in lines[-1] and '{"output":{"signal":{"ok":1}}}' in lines[-1]
    shown = (await run("get", ex_id)).stdout
    assert "Status:   completed" in shown and "Labels:   who=cli" in shown
    listed = (await run("list", "--agent", "cli-agent")).stdout
    assert ex_id in listed and "completed" in listed
    refused = await run("cancel", ex_id, check=False)
    assert refused.returncode == 1 and "[CONFLICT]" in refused.stderr
    missing = await run("get", "no-such-execution", check=False)
    assert missing.returncode == 1 and "[NOT_FOUND]" in missing.stderr
    bad = await run("create", "cli-agent", "--input", "{nope", check=False)
    assert bad.returncode != 0 and "invalid --input JSON" in bad.stderr
    assert "OK kernel" in (await run("health")).stdout


async def test_tool_arguments_are_validated_against_the_signature(cluster: Cluster) -> None:
    ran = []

    def bounded(n: Annotated[int, Field(ge=0, le=10)]) -> int:
        ran.append(n)
        return n * n

    with serving_bodies({"sdk.bounded": bounded}):
        await cluster.runner("bounded-runner", capabilities=["sdk.bounded"])

    @tool("sdk.local_bounded")
    def local_bounded(n: Annotated[int, Field(ge=0, le=10)]) -> int:
        ran.append(-n)
        return n

    async def handler(n: int) -> dict:
        out: dict[str, Any] = {}
        for name, call in (("remote", lambda: execution.invoke_tool("sdk.bounded", {"n": n})),
                           ("remote_str", lambda: execution.invoke_tool("sdk.bounded", {"n": "3"})),
                           ("local", lambda: local_bounded(n))):
            try:
                out[name] = await call()
            except Exception as exc:  # noqa: BLE001
                out[name] = f"{type(exc).__name__}: {exc}"
        return out

    await cluster.agent("bounded-agent", handler)
    final = await cluster.client().run_until_complete("bounded-agent", {"n": 11})
    assert final.output["remote"].startswith("ToolError: invalid arguments for tool sdk.bounded")
    assert "less than or equal to 10" in final.output["remote"]
    assert final.output["remote_str"] == 9  # lax coercion of JSON input, as pydantic does
    assert final.output["local"].startswith("ToolError: invalid arguments for tool sdk.local_bounded")
    assert ran == [3]  # no body ran with invalid arguments
