"""A no-code MCP runner: host the MCP servers of a standard ``mcpServers`` config file.

::

    rebuno runner --runner-id tools-1 --mcp-config servers.json [--capabilities time.get_current_time]
    python -m runners.mcp --runner-id tools-1 --mcp-config servers.json

``servers.json`` is the file MCP clients use (``{"mcpServers": {"time": {"command": "uvx",
"args": ["mcp-server-time"]}, "github": {"url": "…", "headers": {"Authorization": "Bearer
${GITHUB_TOKEN}"}}}}``); ``${VAR}`` is read from the runner's environment, so credentials stay
on the runner. Every server's tools are published as ``<server name>.<tool>`` (or under the
entry's ``prefix``). Servers that cannot be reached are retried in the background; the runner
re-registers its tools as servers come and go. Agents use the tools with
``remote.Tools("<server name>")``.

Exit status: 0 after SIGINT/SIGTERM, 2 for an unusable config file or arguments, 1 when the
runner cannot start (e.g. two servers provide one tool id).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rebuno import MCPServer, Runner
from rebuno.mcp import MCPConfigError

__all__ = ["main", "add_arguments", "run_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the no-code runner (shared by ``rebuno runner`` and ``python -m runners.mcp``)."""
    parser.add_argument("--runner-id", required=True, help="runner id (instances with one id share jobs)")
    parser.add_argument("--mcp-config", required=True, metavar="PATH",
                        help='JSON file with {"mcpServers": {name: {command, args, env} | {url, headers}}}')
    parser.add_argument("--capabilities", action="append", default=None, metavar="IDS",
                        help="only advertise these tool ids (comma-separated, repeatable; default: every tool)")
    parser.add_argument("--url", default=None, help="NATS URL (default $REBUNO_URL or nats://127.0.0.1:4222)")
    parser.add_argument("--api-key", default=None, help="NATS token (default $REBUNO_API_KEY)")
    parser.add_argument("--prefix", default=None, help="deployment prefix (default $REBUNO_PREFIX or rebuno)")
    parser.add_argument("--max-concurrency", type=int, default=8, help="jobs this instance runs at once")


def run_from_args(args: argparse.Namespace, prog: str = "rebuno runner") -> int:
    """Load the config, host every server and serve until SIGINT/SIGTERM; returns the exit status."""
    try:
        servers = MCPServer.from_config(args.mcp_config)
    except MCPConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if not servers:
        print(f"{prog}: MCP config {args.mcp_config}: no servers in \"mcpServers\" (or all disabled)", file=sys.stderr)
        return 2
    capabilities = None
    if args.capabilities:
        capabilities = [c.strip() for item in args.capabilities for c in item.split(",") if c.strip()]
    try:
        runner = Runner(args.runner_id, kernel_url=args.url, api_key=args.api_key, prefix=args.prefix,
                        capabilities=capabilities, max_concurrency=args.max_concurrency)
        for server in servers:
            runner.host(server)
        runner.run()
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.mcp", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog="runners.mcp")


if __name__ == "__main__":
    raise SystemExit(main())
