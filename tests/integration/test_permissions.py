"""deploy/nats/accounts.conf on a real server: the per-actor permission set holds (DESIGN §5
invariant 7, as far as static subject permissions go) and the whole system works under it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from kernel import Kernel, permissive
from rebuno import Agent, Client, Runner, execution
from rebuno._server import find_nats_server, free_port
from schemas import Names
from schemas.records import ExecutionStatus

from ..conftest import serving_bodies

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def login(user: str, port: int) -> str:
    return f"nats://{user}:REPLACE-ME-{user}-password@127.0.0.1:{port}"


@pytest.fixture
def secured_server(tmp_path: Path):
    shutil.copy(ROOT / "deploy" / "nats" / "accounts.conf", tmp_path / "accounts.conf")
    (tmp_path / "server.conf").write_text(
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\ninclude ./accounts.conf\n')
    port = free_port()
    proc = subprocess.Popen([find_nats_server(), "-c", str(tmp_path / "server.conf"), "-a", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_permission_checks_pass(secured_server: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "deploy" / "nats" / "check_permissions.py"), "--server",
        f"127.0.0.1:{secured_server}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()[-3000:]


async def test_system_runs_under_per_actor_logins(secured_server: int) -> None:
    port = secured_server
    nc = await nats.connect(login("kernel", port))
    kernel = Kernel(nc, Names(), permissive())
    await kernel.start()

    def shout(text: str) -> str:
        return text.upper()

    with serving_bodies({"perm.shout": shout}):
        runner = Runner("perm-runner", kernel_url=login("runner", port), capabilities=["perm.shout"])
        runner_task = asyncio.create_task(runner.run_async())
        await asyncio.wait_for(runner.ready.wait(), 20)

    async def handler(text: str) -> str:
        return await execution.invoke_tool("perm.shout", {"text": text})

    agent = Agent("perm-agent", kernel_url=login("agent", port))
    agent_task = asyncio.create_task(agent.run_async(handler))
    await asyncio.wait_for(agent.ready.wait(), 20)
    try:
        async with Client(login("client", port)) as client:
            final = await asyncio.wait_for(client.run_until_complete("perm-agent", {"text": "hi"}), 60)
            assert final.status is ExecutionStatus.COMPLETED and final.output == "HI"
        # an agent's login cannot create executions or report runner results
        async with Client(login("agent", port), timeout=5) as as_agent:
            from rebuno import UnauthorizedError

            with pytest.raises(UnauthorizedError, match="executions.create"):
                await as_agent.create("perm-agent", {})
    finally:
        agent.stop()
        runner.stop()
        await asyncio.gather(agent_task, runner_task)
        await kernel.stop()
        await nc.close()
