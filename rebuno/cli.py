"""The ``rebuno`` command line: run a broker and kernel, inspect and drive executions.

Run ``rebuno --help`` or ``rebuno COMMAND --help``. Inspection commands talk
to the kernel through the broker at ``--url`` (default ``$REBUNO_URL``, else
``nats://127.0.0.1:4222``). Errors are printed as ``error: [CODE] message`` and
exit with status 1; usage errors exit with status 2.

``rebuno policy check PATH`` and ``rebuno policy eval PATH …`` work offline on a
policy file or directory: ``check`` exits 1 when the policy is invalid; ``eval``
exits 2 on any bad input (invalid policy, bad ``--args`` JSON, bad ``--at`` time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from . import __version__
from . import _loop
from ._config import DEFAULT_URL, redact_url
from .client import Client
from .errors import RebunoError

_STATUS_COLOURS = {"pending": 33, "running": 36, "blocked": 35, "completed": 32, "failed": 31, "cancelled": 90}


def _colour(status: str) -> str:
    code = _STATUS_COLOURS.get(status)
    if code is None or os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        return status
    return f"\033[{code}m{status}\033[0m"


def _json_arg(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"rebuno: invalid {flag} JSON: {exc}") from None


def _labels(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise SystemExit(f'rebuno: invalid label "{part}" (expected key=value)')
            out[key] = value
    return out


def _dump(obj: Any) -> str:
    return json.dumps(msgspec.to_builtins(obj), indent=2, default=str)


def _print_execution(ex, as_json: bool) -> None:
    if as_json:
        print(_dump(ex))
        return
    print(f"ID:       {ex.id}\nStatus:   {_colour(ex.status.value)}\nAgent:    {ex.agent_id}")
    if ex.labels:
        print("Labels:   " + ", ".join(f"{k}={v}" for k, v in sorted(ex.labels.items())))
    print(f"Created:  {ex.created_at.isoformat()}\nUpdated:  {ex.updated_at.isoformat()}")
    if ex.input is not None:
        print(f"Input:    {json.dumps(ex.input)}")
    if ex.output is not None:
        print(f"Output:   {json.dumps(ex.output)}")
    if ex.error:
        print(f"Error:    {ex.error}")


def _event_line(e) -> str:
    step = f" step={e.step_id}" if e.step_id else ""
    payload = json.dumps(msgspec.to_builtins(e.payload), separators=(",", ":"), default=str)
    return f"[{e.sequence}] {e.timestamp:%H:%M:%S.%f}"[:-3] + f" {e.type}{step} {payload}"


# ------------------------------------------------------------------ servers --
def _load_policy(path: str | None, *, dev: bool):
    from kernel.policy import PolicyError, load_policy, permissive, secure_default

    if not path:
        if dev:
            return permissive()
        print("rebuno kernel: no --policy given: every tool call will be denied (secure default)", file=sys.stderr)
        return secure_default()
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise SystemExit(f"rebuno: invalid policy: {exc}") from None


def _kernel_config(args) -> Any:
    from kernel.config import KernelConfig

    return KernelConfig(step_timeout=timedelta(seconds=args.step_timeout),
                        execution_timeout=timedelta(seconds=args.execution_timeout), replicas=args.replicas,
                        events_max_age=timedelta(seconds=args.events_max_age),
                        agent_lease=timedelta(seconds=args.agent_lease),
                        retry_base_delay=timedelta(seconds=args.retry_base_delay),
                        retry_max_delay=timedelta(seconds=args.retry_max_delay))


async def _serve_kernel(url: str, policy, config, api_key: str | None, prefix: str | None,
                        on_ready=None) -> None:
    from kernel import Kernel
    from schemas import Names

    from ._config import Settings
    from ._connection import connect

    settings = Settings.resolve(url, api_key, prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    nc = await connect(settings, "rebuno-kernel", retry_initial=True, stop=stop)
    kernel = Kernel(nc, Names(settings.prefix), policy, config)
    await kernel.start()
    if on_ready:
        on_ready()
    await stop.wait()
    print("\nshutting down…", file=sys.stderr)
    await kernel.stop()
    await nc.drain()


def cmd_dev(args) -> int:
    from ._logging import configure_logging
    from ._server import EmbeddedServer

    configure_logging(args.log_level, "text")
    policy = _load_policy(args.policy, dev=True)
    data_dir = Path(args.data_dir).resolve()
    server = EmbeddedServer(port=args.port, data_dir=data_dir / "nats").start()

    def banner() -> None:
        print(f"\nRebuno dev kernel ready\n  broker:  {server.url}  (JetStream data in {data_dir / 'nats'})\n"
              f"  policy:  {policy.describe()}\n\n  export REBUNO_URL={server.url}\n\nPress Ctrl-C to stop.",
              flush=True)

    try:
        _loop.run(_serve_kernel(server.url, policy, _kernel_config(args), None, args.prefix, banner))
    finally:
        server.stop()
    return 0


def cmd_kernel(args) -> int:
    from ._logging import configure_logging

    configure_logging(args.log_level)
    policy = _load_policy(args.policy, dev=False)
    _loop.run(_serve_kernel(args.url, policy, _kernel_config(args), args.api_key, args.prefix))
    return 0


def cmd_runner(args) -> int:
    from runners.mcp import run_from_args

    from ._logging import configure_logging

    configure_logging(args.log_level)
    return run_from_args(args)


def cmd_demo(args) -> int:
    from ._demo import run_demo

    return _loop.run(run_demo(args.path, keep_logs=args.verbose))


# ------------------------------------------------------------------- policy --
def _policy_input_error(message: str) -> NoReturn:
    print(f"rebuno policy eval: {message}", file=sys.stderr)
    raise SystemExit(2)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def cmd_policy_eval(args) -> int:
    """Decide one tool call offline; print the decision as one JSON object."""
    from kernel.policy import NO_ARGUMENTS, PolicyError, PolicyInput, load_policy

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        _policy_input_error(f"invalid policy: {exc}")
    arguments: Any = NO_ARGUMENTS
    if args.args is not None:
        try:
            arguments = json.loads(args.args)
        except json.JSONDecodeError as exc:
            _policy_input_error(f"invalid --args JSON: {exc}")
    labels: dict[str, str] = {}
    for item in args.labels or []:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key:
                _policy_input_error(f'invalid label "{part}" (expected key=value)')
            labels[key] = value
    now = datetime.now(timezone.utc)
    if args.at is not None:
        try:
            now = datetime.fromisoformat(args.at)
        except ValueError:
            _policy_input_error(f'invalid --at time "{args.at}" (expected ISO 8601, e.g. 2026-03-25T12:00:00Z)')
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
    decision = policy.evaluate(PolicyInput(tool_id=args.tool, agent_id=args.agent, labels=labels,
                                           arguments=arguments, step_count=args.steps,
                                           duration_ms=args.elapsed_ms, now=now))
    print(json.dumps(decision.as_dict()))
    return 0


def _print_policy_summary(summary: dict[str, Any]) -> None:
    directory = summary["mode"] == "directory"
    agents = [e for e in summary["engines"] if e["agents"] != "*"]
    size = (f"{len(agents)} agent file{'s' if len(agents) != 1 else ''}"
            + (" + _global" if any(f.rsplit(".", 1)[0] == "_global" for f in summary["files"]) else "")
            if directory else f"{len(summary['engines'][0]['rules'])} rules")
    print(f"{summary['origin']}: OK ({summary['mode']} policy, {size}, version {summary['version']})")
    for engine in summary["engines"]:
        if engine["agents"] != "*":
            title = f'agent "{engine["agents"]}"'
        else:
            title = "agents without their own file" if directory else "every agent"
        print(f"\n{title}" + (f" ({' + '.join(engine['files'])})" if engine["files"] else ""))
        if not engine["rules"] and engine["default"]["rule_id"] == "agent-default":
            print('  no _global file: denied (rule agent-default, "no policy configured for agent …")')
            continue
        width = max((len(r["id"]) for r in engine["rules"]), default=0)
        for r in engine["rules"]:
            extras = []
            if r["timeout_ms"]:
                extras.append(f"timeout {r['timeout_ms']} ms")
            if r["rate_limit"]:
                extras.append(f"rate limit {r['rate_limit']['max']} per {r['rate_limit']['window']}")
            reason = f" {json.dumps(r['reason'])}" if r["reason"] else ""
            print(f"  {r['priority']:>6}  {r['id']:<{width}}  {r['decision']}{reason}"
                  + (f" [{', '.join(extras)}]" if extras else ""))
            print(f"  {'':>6}  {'':<{width}}  when {r['when']}")
        default = engine["default"]
        reason = f" {json.dumps(default['reason'])}" if default["reason"] else ""
        print(f"  default: {default['decision']}{reason}")


def cmd_policy_check(args) -> int:
    """Validate a policy file or directory and print the rules as the kernel will apply them."""
    from kernel.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(f"rebuno: invalid policy: {exc}", file=sys.stderr)
        return 1
    summary = policy.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_policy_summary(summary)
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_policy_apply(args) -> int:
    """Validate a policy and store it in ``<prefix>-policy``: every kernel replica switches to it."""
    from kernel.policy import PolicyError, policy_from_sources, policy_sources
    from kernel.policy_store import apply_policy

    try:
        files = policy_sources(args.path)
        policy = policy_from_sources(files, str(args.path))
    except PolicyError as exc:
        print(f"rebuno: invalid policy: {exc}", file=sys.stderr)
        return 1
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    async def apply() -> int:
        from schemas import Names

        from ._config import Settings
        from ._connection import connect
        from ._logging import configure_logging

        configure_logging(os.environ.get("REBUNO_LOG_LEVEL", "warning"), "text")
        settings = Settings.resolve(args.url, args.api_key, args.prefix)
        nc = await connect(settings, "rebuno-policy-apply")
        try:
            bundle = await apply_policy(nc, Names(settings.prefix), files, str(args.path))
        finally:
            await nc.close()
        if args.json:
            print(json.dumps({"version": bundle.version, "origin": bundle.origin, "files": sorted(files)}))
        else:
            print(f"Applied policy {bundle.version} from {args.path} ({policy.describe()}).\n"
                  f"Every kernel replica switches to it now; intent events record this version.")
        return 0

    return _loop.run(apply())


def _add_policy_commands(sub, client_args) -> Any:
    """``rebuno policy SUBCOMMAND``; returns its subparsers so more (``apply``) can be added,
    with ``client_args`` for those that talk to the broker."""
    sp = sub.add_parser("policy", help="validate a policy and try decisions offline")
    psub = sp.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    ep = psub.add_parser("check", help="validate a policy file or directory and print its rules",
                         description="Validate PATH (a policy file or directory) as the kernel would at startup "
                                     "and print each engine's rules in evaluation order. Exit 1 when invalid.")
    ep.add_argument("path", help="policy YAML file or directory")
    ep.add_argument("--json", action="store_true", help="print the rules as JSON")
    ep.set_defaults(func=cmd_policy_check)

    ep = psub.add_parser("eval", help="decide one tool call offline and print the decision as JSON",
                         description="Evaluate one tool call against PATH and print one JSON object: decision, "
                                     "rule_id, reason, timeout_ms, rate_limit ({max, window} or null), "
                                     "policy_version. Exit 2 on invalid input or an invalid policy.")
    ep.add_argument("path", help="policy YAML file or directory")
    ep.add_argument("--agent", required=True, help="agent id of the execution")
    ep.add_argument("--tool", required=True, help="tool id of the proposed call")
    ep.add_argument("--args", default=None, help="the call's arguments as JSON (default: no arguments)")
    ep.add_argument("--labels", "--label", dest="labels", nargs="+", action="extend", metavar="K=V",
                    help="execution labels key=value (repeatable; comma-separated also accepted)")
    ep.add_argument("--steps", type=_non_negative_int, default=0, help="steps the execution already has (default 0)")
    ep.add_argument("--elapsed-ms", type=_non_negative_int, default=0,
                    help="milliseconds since the execution was created (default 0)")
    ep.add_argument("--at", default=None, help="evaluation time, ISO 8601 (naive = UTC; default now)")
    ep.set_defaults(func=cmd_policy_eval)

    ep = psub.add_parser("apply", help="make a policy the one every kernel replica enforces, live",
                         description="Validate PATH like `check`, then store it in the <prefix>-policy bucket. "
                                     "Every running kernel replica switches to it without a restart, and "
                                     "replicas started later adopt it too (it overrides their --policy).")
    ep.add_argument("path", help="policy YAML file or directory")
    client_args(ep)
    ep.set_defaults(func=cmd_policy_apply)
    return psub


# --------------------------------------------------------------- inspection --
async def _with_client(args, fn) -> int:
    from ._logging import configure_logging

    configure_logging(os.environ.get("REBUNO_LOG_LEVEL", "warning"), "text")
    async with Client(args.url, args.api_key, prefix=args.prefix, timeout=args.timeout, max_retries=1) as client:
        await fn(client)
    return 0


async def _create(args, c: Client) -> None:
    ex = await c.create(args.agent, _json_arg(args.input, "--input"), _labels(args.label) or None)
    _print_execution(ex, args.json)


async def _get(args, c: Client) -> None:
    _print_execution(await c.get(args.id), args.json)


async def _list(args, c: Client) -> None:
    page = await c.list(status=args.status, agent_id=args.agent or "", labels=_labels(args.label), limit=args.limit,
                        cursor=args.cursor or "")
    if args.json:
        print(_dump(page))
        return
    if not page.executions:
        print("No executions found.")
        return
    print(f"{'ID':<38} {'STATUS':<10} {'AGENT':<20} {'CREATED':<26} UPDATED")
    for r in page.executions:
        print(f"{r.id:<38} {_colour(r.status.value):<10} {r.agent_id:<20} {r.created_at:%Y-%m-%d %H:%M:%S}        "
              f"{r.updated_at:%Y-%m-%d %H:%M:%S}")
    if page.next_cursor:
        print(f"\nmore: rebuno list --cursor {page.next_cursor}")


async def _events(args, c: Client) -> None:
    if args.tail:
        async for e in c.events(args.id):
            print(_event_line(e) if not args.json else msgspec.json.encode(e).decode(), flush=True)
            if e.type == "step.approval_required" and not args.json:
                print(f"    waiting for a human: rebuno approve {args.id} --step {e.step_id}   "
                      f"or   rebuno deny {args.id} --step {e.step_id} --reason TEXT", flush=True)
        return
    events = await c.events_snapshot(args.id, limit=args.limit)
    if not events:
        print("No events found.")
    for e in events:
        print(_event_line(e) if not args.json else msgspec.json.encode(e).decode())


async def _cancel(args, c: Client) -> None:
    await c.cancel(args.id)
    print(f"Execution {args.id} cancelled.")


async def _signal(args, c: Client) -> None:
    await c.send_signal(args.id, args.type, _json_arg(args.payload, "--payload"))
    print("Signal sent.")


async def _approve(args, c: Client) -> None:
    await c.approve(args.id, args.step, reason=args.reason or "")
    print(f"Approved{' step ' + args.step if args.step else ''} on execution {args.id}.")


async def _deny(args, c: Client) -> None:
    await c.deny(args.id, args.step, reason=args.reason)
    print(f"Denied{' step ' + args.step if args.step else ''} on execution {args.id}: {args.reason}")


async def _tools(args, c: Client) -> None:
    tools = await c.list_tools(args.tool_prefix or "")
    if args.json:
        print(_dump(tools))
        return
    if not tools:
        print("No tools registered.")
    for t in tools:
        print(f"{t.id:<32} {', '.join(t.runner_ids):<20} {t.description.splitlines()[0] if t.description else ''}")


async def _health(args, c: Client) -> None:
    h = await c.health()
    url = redact_url(args.url or os.environ.get("REBUNO_URL", DEFAULT_URL))
    print(f"{'OK' if h.status == 'ok' else 'DEGRADED'} kernel {h.kernel_id} at {url}"
          f" (JetStream {'reachable' if h.jetstream else 'unreachable'})")
    if h.policy:
        print(f"  policy: {h.policy} [version {h.policy_version or '-'}]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rebuno", description="Rebuno: a kernel-authoritative runtime for AI agents, on NATS.")
    p.add_argument("--version", action="version", version=f"rebuno {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def client_args(sp):
        sp.add_argument("--url", default=None, help="NATS URL (default $REBUNO_URL or nats://127.0.0.1:4222)")
        sp.add_argument("--api-key", default=None, help="NATS token (default $REBUNO_API_KEY)")
        sp.add_argument("--prefix", default=None, help="deployment prefix (default $REBUNO_PREFIX or rebuno)")
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
        sp.add_argument("--json", action="store_true", help="print JSON")

    def kernel_args(sp):
        sp.add_argument("--policy", default=None, help="policy YAML file or directory")
        sp.add_argument("--step-timeout", type=float, default=300.0,
                        help="step deadline when the policy rule sets no timeout_ms, seconds (default 300)")
        sp.add_argument("--execution-timeout", type=float, default=3600.0,
                        help="maximum execution lifetime from creation, seconds (default 3600; 0 disables)")
        sp.add_argument("--agent-lease", type=float, default=30.0,
                        help="session lease when an agent names none, seconds (default 30)")
        sp.add_argument("--retry-base-delay", type=float, default=1.0,
                        help="retry n waits min(base * 2^(n-1), max) seconds (default base 1)")
        sp.add_argument("--retry-max-delay", type=float, default=30.0, help="cap of the retry delay, seconds (default 30)")
        sp.add_argument("--replicas", type=int, default=1, help="stream/bucket replicas (3 in a cluster)")
        sp.add_argument("--events-max-age", type=float, default=0.0,
                        help="seconds the event stream keeps events (default 0: forever)")
        sp.add_argument("--log-level", default=None, help="debug, info, warning, error (default info)")
        sp.add_argument("--prefix", default=None, help="deployment prefix (default $REBUNO_PREFIX or rebuno)")

    sp = sub.add_parser("dev", help="run an embedded NATS server with JetStream and a kernel")
    sp.add_argument("--port", type=int, default=4222, help="broker port (default 4222; 0 picks a free one)")
    sp.add_argument("--data-dir", default=".rebuno", help="where JetStream keeps data (default ./.rebuno)")
    kernel_args(sp)
    sp.set_defaults(func=cmd_dev)

    sp = sub.add_parser("kernel", help="run one kernel replica against an existing broker")
    sp.add_argument("--nats", dest="url", default=None, help="NATS URL (default $REBUNO_URL)")
    sp.add_argument("--api-key", default=None, help="NATS token (default $REBUNO_API_KEY)")
    kernel_args(sp)
    sp.set_defaults(func=cmd_kernel)

    _add_policy_commands(sub, client_args)

    sp = sub.add_parser("runner", help="host the MCP servers of an mcpServers config file (no code)")
    from runners.mcp import add_arguments as runner_args

    runner_args(sp)
    sp.add_argument("--log-level", default=None, help="debug, info, warning, error (default info)")
    sp.set_defaults(func=cmd_runner)

    sp = sub.add_parser("demo", help="run the end-to-end demo on a real directory")
    sp.add_argument("--path", default=".", help="directory to inspect (default: current directory)")
    sp.add_argument("--verbose", action="store_true", help="show the actors' logs")
    sp.set_defaults(func=cmd_demo)

    for name, fn, help_, extra in (
        ("create", _create, "create an execution", lambda sp: (
            sp.add_argument("agent", help="agent id"),
            sp.add_argument("--input", default=None, help="input JSON"),
            sp.add_argument("--label", action="append", help="label key=value (repeatable)"))),
        ("get", _get, "show one execution", lambda sp: sp.add_argument("id")),
        ("list", _list, "list executions, newest first", lambda sp: (
            sp.add_argument("--status", default=None,
                            choices=["pending", "running", "blocked", "completed", "failed", "cancelled"]),
            sp.add_argument("--agent", default=None), sp.add_argument("--label", action="append"),
            sp.add_argument("--limit", type=int, default=50), sp.add_argument("--cursor", default=None))),
        ("events", _events, "show (or follow with --tail) an execution's events", lambda sp: (
            sp.add_argument("id"), sp.add_argument("--tail", action="store_true", help="follow until it ends"),
            sp.add_argument("--limit", type=int, default=100))),
        ("cancel", _cancel, "cancel an execution", lambda sp: sp.add_argument("id")),
        ("signal", _signal, "send a signal to an execution", lambda sp: (
            sp.add_argument("id"), sp.add_argument("type", help="signal type"),
            sp.add_argument("--payload", default=None, help="payload JSON"))),
        ("approve", _approve, "grant the tool call an execution holds for approval", lambda sp: (
            sp.add_argument("id", help="execution id"),
            sp.add_argument("--step", default=None, help="the held step (default: the one it is blocked on)"),
            sp.add_argument("--reason", default=None, help="note recorded with the approval"))),
        ("deny", _deny, "refuse the tool call an execution holds for approval", lambda sp: (
            sp.add_argument("id", help="execution id"),
            sp.add_argument("--step", default=None, help="the held step (default: the one it is blocked on)"),
            sp.add_argument("--reason", required=True, help="why; the agent's call fails with it"))),
        ("tools", _tools, "list the tool directory", lambda sp: sp.add_argument("tool_prefix", nargs="?", default="", help="only ids equal to or under this prefix")),
        ("health", _health, "check a kernel replica", lambda sp: None),
    ):
        sp = sub.add_parser(name, help=help_)
        client_args(sp)
        extra(sp)
        sp.set_defaults(func=lambda args, fn=fn: _loop.run(_with_client(args, lambda c: fn(args, c))))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RebunoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
