"""Example client: run the "researcher" agent once, print its events as they happen and the
final output, then list the latest executions.

    export REBUNO_URL=nats://127.0.0.1:4222      # what `rebuno dev` prints
    python examples/client.py                     # primes call denied by examples/policies/example.yaml
    python examples/client.py --trusted           # label tier=trusted: the policy allows it
"""

from __future__ import annotations

import argparse
import asyncio
import json

import msgspec

from rebuno import Client
from rebuno.types import Event


def print_event(event: Event) -> None:
    payload = json.dumps(msgspec.to_builtins(event.payload), separators=(",", ":"), default=str)
    step = f" step=…{event.step_id[-8:]}" if event.step_id else ""
    print(f"  [{event.sequence:>2}] {event.type:<20}{step:<15} {payload[:110]}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default="The kernel decides, records and routes every tool call")
    parser.add_argument("--n", type=int, default=90, help="which Fibonacci number to compute")
    parser.add_argument("--primes-below", type=int, default=50)
    parser.add_argument("--trusted", action="store_true", help="add the label tier=trusted")
    parser.add_argument("--url", default=None, help="NATS URL (default $REBUNO_URL)")
    args = parser.parse_args()

    labels = {"example": "researcher", **({"tier": "trusted"} if args.trusted else {})}
    async with Client(args.url, timeout=10.0) as client:
        print("events:")
        final = await client.run_until_complete(
            "researcher", {"text": args.text, "n": args.n, "primes_below": args.primes_below}, labels,
            on_event=print_event)
        print(f"\nexecution {final.id} {final.status.value}")
        if final.error:
            print(f"error: {final.error}")
        print("output:", json.dumps(final.output, indent=2))

        page = await client.list(agent_id="researcher", limit=5)
        print("\nlatest researcher executions:")
        for row in page.executions:
            print(f"  {row.id}  {row.status.value:<10} {row.created_at:%Y-%m-%d %H:%M:%S}  {row.labels}")
    return 0 if final.status.value == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
