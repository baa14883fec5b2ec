"""Sequential tool-call latency through the kernel, against a raw NATS round trip.

One run, one machine, the embedded broker: a kernel replica and a runner each in
their own process (as in production), the agent and the measuring client here.
Measures, per call:

- raw: a NATS request/reply to an echo responder in another process;
- local: a local ``@tool`` call through the kernel (intent + step result);
- remote: a remote tool call through the kernel and a runner
  (intent → job → started → result → event back to the agent).

Prints p50 / p99 / mean in milliseconds and the ratios to the raw p50.

    make bench            # or: .venv/bin/python benchmarks/tool_latency.py --calls 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rebuno import Agent, Client, tool  # noqa: E402
from rebuno._logging import configure_logging  # noqa: E402
from rebuno._server import EmbeddedServer  # noqa: E402


@tool("bench.noop")
async def noop(value: int) -> int:
    return value


@tool("bench.echo", remote=True)
async def remote_echo(value: int) -> int:
    """Served by the runner process."""


async def handler(kind: str, calls: int) -> list[list[float]]:
    """Per measured call: [wall start, wall end] in Unix seconds (after 20 warm-up calls)."""
    fn = noop if kind == "local" else remote_echo
    out = []
    for i in range(calls + 20):
        t = time.time()
        assert await fn(value=i) == i
        if i >= 20:
            out.append([t, time.time()])
    return out


def breakdown(calls: list[list[float]], events: list) -> list[tuple[str, list[float]]]:
    """Split each remote call by the kernel's event timestamps (same machine clock)."""
    steps: dict[str, dict[str, float]] = {}
    order: list[str] = []
    for e in events:
        if e.step_id and e.type in ("step.created", "step.started", "step.completed"):
            if e.step_id not in steps:
                order.append(e.step_id)
            steps.setdefault(e.step_id, {})[e.type] = e.timestamp.timestamp()
    order = order[-len(calls):]
    parts: dict[str, list[float]] = {k: [] for k in (
        "agent -> kernel decides (intent)", "job queued -> runner started", "runner started -> result stored",
        "result stored -> caller resumes")}
    for (start, end), sid in zip(calls, order):
        t = steps[sid]
        parts["agent -> kernel decides (intent)"].append(t["step.created"] - start)
        parts["job queued -> runner started"].append(t["step.started"] - t["step.created"])
        parts["runner started -> result stored"].append(t["step.completed"] - t["step.started"])
        parts["result stored -> caller resumes"].append(end - t["step.completed"])
    return list(parts.items())


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def row(name: str, xs: list[float], base: float) -> str:
    p50, p99, mean = pct(xs, 50) * 1e3, pct(xs, 99) * 1e3, statistics.fmean(xs) * 1e3
    return f"{name:<34} {p50:8.3f} {p99:8.3f} {mean:8.3f} {p50 / (base * 1e3):8.2f}x"


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "REBUNO_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


async def main(calls: int) -> None:
    configure_logging("warning", "text")
    procs: list[subprocess.Popen] = []
    with EmbeddedServer() as server, tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "allow.yaml"
        policy.write_text("rules:\n  - {id: all, when: {}, then: {decision: allow}}\n")
        try:
            procs.append(spawn("-m", "rebuno.cli", "kernel", "--nats", server.url, "--policy", str(policy)))
            procs.append(spawn("benchmarks/_bench_actors.py", "runner", server.url))
            echo = spawn("benchmarks/_bench_actors.py", "echo", server.url)
            procs.append(echo)
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"

            nc = await nats.connect(server.url)
            raw = []
            for i in range(calls + 20):
                t = time.perf_counter()
                await nc.request("bench.raw", b"x" * 64, timeout=5)
                if i >= 20:
                    raw.append(time.perf_counter() - t)
            await nc.close()

            agent = Agent("bench-agent", kernel_url=server.url, max_concurrency=1)
            task = asyncio.create_task(agent.run_async(handler))
            await agent.ready.wait()
            async with Client(server.url) as client:
                deadline = time.monotonic() + 30
                while not await client.list_tools("bench"):
                    if time.monotonic() > deadline:
                        raise SystemExit("runner did not register")
                    await asyncio.sleep(0.1)
                results, logs = {}, {}
                for kind in ("local", "remote"):
                    ex = await client.run_until_complete("bench-agent", {"kind": kind, "calls": calls})
                    if ex.status.value != "completed":
                        raise SystemExit(f"{kind} run failed: {ex.error}")
                    results[kind] = ex.output
                    logs[kind] = []
                    after = 0
                    while batch := await client.events_snapshot(ex.id, after_sequence=after, limit=1000):
                        logs[kind].extend(batch)
                        after = batch[-1].sequence
            agent.stop()
            await task
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)
    base = pct(raw, 50)
    print(f"\nRebuno tool-call latency, {calls} sequential calls each, embedded nats-server, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'vs raw':>9}")
    print(row("raw NATS request/reply", raw, base))
    print(row("local @tool through the kernel", [e - s for s, e in results["local"]], base))
    print(row("remote tool via kernel + runner", [e - s for s, e in results["remote"]], base))
    print("\nwhere a remote call's time goes (kernel event timestamps; p50 per segment):")
    for name, xs in breakdown(results["remote"], logs["remote"]):
        print(f"  {name:<34} {pct(xs, 50) * 1e3:8.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="measured calls per kind (after 20 warm-up calls)")
    from rebuno import _loop

    print(f"event loop: {'uvloop' if _loop.using_uvloop() else 'asyncio'}")
    _loop.run(main(parser.parse_args().calls))
