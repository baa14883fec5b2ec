"""A separate process for fault tests: ``python -m tests.integration._actor_proc agent|runner URL LOG``.

agent: serves ``fault-agent``; the handler calls the local tool ``fault.count`` (which appends
a line to LOG, so the test can count body runs), then waits for the signal ``proceed``.
runner: serves ``fault.sleepy`` (appends to LOG, then sleeps).
"""

from __future__ import annotations

import asyncio
import os
import sys

from rebuno import Agent, Runner, execution, tool

LOG = sys.argv[3]


@tool("fault.count")
def count(tag: str) -> int:
    with open(LOG, "a") as f:
        f.write(f"{os.getpid()} {tag}\n")
    return sum(1 for _ in open(LOG))


@tool("fault.sleepy")
async def sleepy(seconds: float) -> str:
    with open(LOG, "a") as f:
        f.write(f"{os.getpid()} start\n")
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


async def handler(tag: str) -> dict:
    n = await count(tag)
    payload = await execution.wait_signal("proceed")
    return {"count": n, "payload": payload, "pid": os.getpid()}


if __name__ == "__main__":
    role, url = sys.argv[1], sys.argv[2]
    if role == "agent":
        Agent("fault-agent", kernel_url=url, lease=2.0).run(handler)
    else:
        Runner("fault-runner", kernel_url=url, capabilities=["fault.sleepy"], lease=2.0).run()
