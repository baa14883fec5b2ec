"""Check that a broker enforces the per-actor permissions of ``deploy/nats/accounts.conf``.

Connects once per check with each actor's login and asks the server whether an action is a
permissions violation; it needs no kernel (a kernel may be running). Run it against a test
deployment, not a production one: when a permission is wrongly granted, the "denied" probe
really happens (``{}`` lands on ``rebuno.events.permcheck``, ``rebuno.jobs.permcheck``, in the
``rebuno-executions`` bucket under ``permcheck``..., where the kernel will trip over it).

    nats-server -c single.conf            # with `include ./accounts.conf` uncommented
    python deploy/nats/check_permissions.py --server 127.0.0.1:4222 \\
        [--password kernel=...] [--password agent=...] [--password runner=...] [--password client=...]

Exits 1 when any check fails. Default passwords are the placeholders of accounts.conf; the
prefix is ``rebuno`` (the file's subjects are written for it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import nats

USERS = ("kernel", "agent", "runner", "client")
ACTORS = USERS[1:]

# (user, action, subject, queue, allowed): action "pub" publishes, "sub" subscribes.
# A JetStream API call or a kernel request is a publish to its subject, so it is checked as one.
CHECKS: list[tuple[str, str, str, str, bool]] = [
    # only the kernel writes the log, the work queues and the buckets (the kernel's own writes
    # are not probed: they would really land; a working kernel shows it has them)
    *[(u, "pub", s, "", False)
      for u in ACTORS
      for s in ("rebuno.events.permcheck", "rebuno.feed.permcheck", "rebuno.jobs.permcheck", "rebuno.assign.permcheck",
                "$KV.rebuno-executions.permcheck")],
    *[(u, "pub", "_INBOX.permcheck.forged", "", False) for u in USERS],   # nobody forges replies
    *[(u, "sub", "rebuno.api.permcheck", "kernel", u == "kernel") for u in USERS],
    ("kernel", "sub", "rebuno.api.permcheck", "", False),                # only inside queue group `kernel`
    *[(u, "sub", "rebuno.feed.permcheck", "", True) for u in ACTORS],     # stored events, republished
    *[(u, "sub", "rebuno.events.permcheck", "", False) for u in ACTORS],  # not raw appends, refused ones too
    *[(u, "pub", "$JS.API.STREAM.CREATE.PERMCHECK", "", u == "kernel") for u in USERS],
    *[(u, "pub", "$JS.API.STREAM.DELETE.PERMCHECK", "", u == "kernel") for u in USERS],
    # kernel API operations per role
    *[("agent", "pub", f"rebuno.api.{op}", "", True)
      for op in ("agent.claim", "agent.intent", "agent.step_result", "agent.renew", "tools.list",
                 "executions.events", "health")],
    *[("agent", "pub", f"rebuno.api.{op}", "", False)
      for op in ("runner.result", "runner.started", "runner.register", "executions.create", "executions.cancel")],
    *[("runner", "pub", f"rebuno.api.{op}", "", True)
      for op in ("runner.register", "runner.started", "runner.result", "executions.events", "health")],
    *[("runner", "pub", f"rebuno.api.{op}", "", False)
      for op in ("executions.create", "executions.list", "executions.get", "agent.intent", "agent.step_result")],
    *[("client", "pub", f"rebuno.api.{op}", "", True)
      for op in ("executions.create", "executions.get", "executions.list", "executions.cancel",
                 "executions.signal", "executions.events", "tools.list", "health")],
    *[("client", "pub", f"rebuno.api.{op}", "", False)
      for op in ("agent.claim", "agent.intent", "runner.result", "runner.register")],
    # work queues: each actor only its own stream's consumers and acks
    ("agent", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.REBUNO_ASSIGN.agent-permcheck", "", True),
    ("agent", "pub", "$JS.API.CONSUMER.MSG.NEXT.REBUNO_ASSIGN.agent-permcheck", "", True),
    ("agent", "pub", "$JS.ACK.REBUNO_ASSIGN.agent-permcheck.1.1.1.1.1", "", True),
    ("agent", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.REBUNO_JOBS.runner-permcheck", "", False),
    ("agent", "pub", "$JS.ACK.REBUNO_JOBS.runner-permcheck.1.1.1.1.1", "", False),
    ("runner", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.REBUNO_JOBS.runner-permcheck", "", True),
    ("runner", "pub", "$JS.API.CONSUMER.MSG.NEXT.REBUNO_JOBS.runner-permcheck", "", True),
    ("runner", "pub", "$JS.ACK.REBUNO_JOBS.runner-permcheck.1.1.1.1.1", "", True),
    ("runner", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.REBUNO_ASSIGN.agent-permcheck", "", False),
    ("client", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.REBUNO_ASSIGN.agent-permcheck", "", False),
    # reading events straight from the stream; no direct reads of the buckets but the kernel's
    ("client", "pub", "$JS.API.DIRECT.GET.REBUNO_EVENTS", "", True),
    ("runner", "pub", "$JS.API.DIRECT.GET.REBUNO_EVENTS", "", False),
    *[(u, "pub", "$JS.API.DIRECT.GET.KV_rebuno-executions.$KV.rebuno-executions.permcheck", "", u == "kernel")
      for u in USERS],
]


async def violated(url: str, action: str, subject: str, queue: str) -> bool:
    """True when the server reports a permissions violation for the action."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=5)
    try:
        if action == "pub":
            # a harmless body: {} is not a valid request for any kernel API or JetStream call
            await nc.publish(subject, json.dumps({}).encode())
        else:
            await nc.subscribe(subject, queue=queue)
        await nc.flush()
        await asyncio.sleep(0.1)  # the -ERR arrives asynchronously
    finally:
        await nc.close()
    return any("permissions violation" in e.lower() for e in errors)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:4222", help="HOST:PORT of a server with accounts.conf")
    parser.add_argument("--password", action="append", default=[], metavar="USER=PASSWORD")
    args = parser.parse_args()
    passwords = {u: f"REPLACE-ME-{u}-password" for u in USERS}
    for item in args.password:
        user, _, pw = item.partition("=")
        passwords[user] = pw
    failures = 0
    for user, action, subject, queue, allowed in CHECKS:
        url = f"nats://{user}:{passwords[user]}@{args.server}"
        denied = await violated(url, action, subject, queue)
        ok = denied != allowed
        failures += not ok
        what = f"{'publish' if action == 'pub' else 'subscribe'} {subject}" + (f" (queue {queue})" if queue else "")
        print(f"{'ok  ' if ok else 'FAIL'} {user:<7} {what:<78} {'allowed' if not denied else 'denied'}")
    print(f"\n{len(CHECKS) - failures}/{len(CHECKS)} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
