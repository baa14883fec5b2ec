"""Helper processes of the latency benchmark: ``echo URL`` (raw NATS responder) or ``runner URL``."""

from __future__ import annotations

import asyncio
import sys

import nats

from rebuno import Runner, tool


@tool("bench.echo")
async def echo(value: int) -> int:
    return value


async def raw_echo(url: str) -> None:
    nc = await nats.connect(url)

    async def reply(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.raw", cb=reply)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    role, url = sys.argv[1], sys.argv[2]
    if role == "echo":
        asyncio.run(raw_echo(url))
    else:
        Runner("bench-runner", kernel_url=url, capabilities=["bench.echo"], max_concurrency=1).run()
