"""Shared fixtures: a real ``nats-server`` with JetStream on a free loopback port, kernel
replicas, and helpers to run agents and runners as tasks in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable

import nats
import pytest

from kernel import Kernel, KernelConfig, permissive
from kernel.policy import Policy, parse_policy
from rebuno import Agent, Client, Runner
from rebuno._logging import configure_logging
from rebuno._server import EmbeddedServer
from schemas import Names

configure_logging("warning", "text")


@pytest.fixture
def nats_server():
    """A fresh nats-server -js in a temp dir; stopped (and its data removed) after the test."""
    server = EmbeddedServer().start()
    try:
        yield server
    finally:
        server.stop()


class Cluster:
    """A broker plus kernel replicas, agents and runners started as tasks of the test's loop."""

    def __init__(self, server: EmbeddedServer, prefix: str = "rebuno") -> None:
        self.server = server
        self.url = server.url
        self.names = Names(prefix)
        self.kernels: list[tuple[Kernel, Any]] = []
        self.tasks: list[tuple[Any, asyncio.Task]] = []
        self.clients: list[Client] = []

    async def start_kernel(self, policy: Policy | None = None, config: KernelConfig | None = None) -> Kernel:
        nc = await nats.connect(self.url, name="test-kernel")
        k = Kernel(nc, self.names, policy or permissive(), config)
        await k.start()
        self.kernels.append((k, nc))
        return k

    async def stop_kernel(self, k: Kernel) -> None:
        for i, (kk, nc) in enumerate(self.kernels):
            if kk is k:
                await k.stop()
                await nc.close()
                del self.kernels[i]
                return

    async def agent(self, agent_id: str, handler: Callable[..., Any], **kw: Any) -> Agent:
        a = Agent(agent_id, kernel_url=self.url, **kw)
        task = asyncio.create_task(a.run_async(handler))
        self.tasks.append((a, task))
        await asyncio.wait_for(a.ready.wait(), 10)
        return a

    async def runner(self, runner_id: str, **kw: Any) -> Runner:
        r = Runner(runner_id, kernel_url=self.url, **kw)
        task = asyncio.create_task(r.run_async())
        self.tasks.append((r, task))
        await asyncio.wait_for(r.ready.wait(), 10)
        return r

    async def stop_actor(self, actor: Any) -> None:
        for i, (a, task) in enumerate(self.tasks):
            if a is actor:
                a.stop()
                await asyncio.wait_for(task, 15)
                del self.tasks[i]
                return

    def client(self, **kw: Any) -> Client:
        c = Client(self.url, **kw)
        self.clients.append(c)
        return c

    async def close(self) -> None:
        for a, task in self.tasks:
            a.stop()
        for a, task in self.tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 15)
        for c in self.clients:
            await c.close()
        for k, nc in self.kernels:
            with contextlib.suppress(Exception):
                await k.stop()
            with contextlib.suppress(Exception):
                await nc.close()


@pytest.fixture
async def cluster(nats_server) -> AsyncIterator[Cluster]:
    """A broker with one kernel replica (permissive policy); tests add agents, runners, replicas."""
    c = Cluster(nats_server)
    await c.start_kernel()
    try:
        yield c
    finally:
        await c.close()


def policy_from_yaml(text: str) -> Policy:
    import yaml

    return parse_policy(yaml.safe_load(text), "test-policy.yaml")


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail the test after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def serving_bodies(bodies: dict[str, Callable[..., Any]]):
    """Register real tool bodies under ``bodies``' ids while a runner starts in this process.

    A runner resolves its tools when it starts, so after the block the registry is restored:
    the test process can then hold the agent's ``remote=True`` stubs for the same ids
    (in production the agent and the runner are different processes).
    """
    from rebuno._tools import _REGISTRY, ToolSpec, input_model, input_schema

    saved = {tid: _REGISTRY.get(tid) for tid in bodies}
    for tid, fn in bodies.items():
        _REGISTRY[tid] = ToolSpec(tid, fn, False, fn.__doc__ or "", input_schema(fn), input_model(fn))
    try:
        yield
    finally:
        for tid, spec in saved.items():
            if spec is None:
                _REGISTRY.pop(tid, None)
            else:
                _REGISTRY[tid] = spec
