"""A read-only filesystem runner: serves ``fs.walk``, ``fs.read_file`` and ``fs.stat`` for
one root directory, to any agent the kernel's policy allows.

Run it anywhere that reaches the broker (no inbound ports)::

    python -m runners.fs --root /srv/data --runner-id fs-edge-1 --url nats://broker:4222

Paths are relative to the root; anything that resolves outside it is refused. With
``--mcp-config servers.json`` the runner also hosts the MCP servers of that standard
``mcpServers`` file, next to its own tools (``rebuno demo`` hosts the git MCP server so).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from rebuno import MCPServer, Runner, ToolError, tool
from rebuno.mcp import MCPConfigError

__all__ = ["main", "set_root", "CAPABILITIES"]

CAPABILITIES = ["fs.walk", "fs.read_file", "fs.stat"]
_SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache"}
_root = Path(os.environ.get("REBUNO_FS_ROOT", ".")).resolve()


def set_root(path: str | Path) -> Path:
    """Set the directory the tools serve; returns it resolved.

    Raises:
        NotADirectoryError: ``path`` is not a directory.
    """
    global _root
    p = Path(path).resolve()
    if not p.is_dir():
        raise NotADirectoryError(f"runner root {p} is not a directory")
    _root = p
    return p


def _inside(rel: str) -> Path:
    p = (_root / rel).resolve()
    if p != _root and _root not in p.parents:
        raise ToolError(f"path {rel!r} is outside the runner's root")
    return p


@tool("fs.walk")
def walk(max_entries: Annotated[int, Field(description="stop after this many files", ge=1, le=100_000)] = 5000
         ) -> dict:
    """List the files under the root (skipping VCS and virtualenv folders) with their sizes in bytes."""
    files, truncated = [], False
    for dirpath, dirnames, filenames in os.walk(_root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            try:
                size = full.stat().st_size
            except OSError:
                continue
            files.append({"path": str(full.relative_to(_root)), "size_bytes": size})
            if len(files) >= max_entries:
                truncated = True
                break
        if truncated:
            break
    return {"root": str(_root), "files": files, "truncated": truncated}


@tool("fs.read_file")
def read_file(path: Annotated[str, Field(description="file path relative to the runner's root")],
              max_bytes: Annotated[int, Field(description="read at most this many bytes", ge=1)] = 65536) -> dict:
    """Read the start of a text file (UTF-8, undecodable bytes replaced)."""
    p = _inside(path)
    if not p.is_file():
        raise ToolError(f"{path!r} is not a file under the runner's root")
    with p.open("rb") as f:
        data = f.read(max_bytes + 1)
    return {"path": path, "text": data[:max_bytes].decode("utf-8", "replace"), "truncated": len(data) > max_bytes}


@tool("fs.stat")
def stat(path: Annotated[str, Field(description="path relative to the runner's root")]) -> dict:
    """Size in bytes, kind and modification time (Unix seconds) of a path under the root."""
    p = _inside(path)
    if not p.exists():
        raise ToolError(f"{path!r} does not exist under the runner's root")
    st = p.stat()
    return {"path": path, "kind": "dir" if p.is_dir() else "file", "size_bytes": st.st_size, "mtime_s": st.st_mtime}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.fs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="directory to serve (default: current directory)")
    parser.add_argument("--runner-id", default="fs", help="runner id (instances with one id share jobs)")
    parser.add_argument("--url", default=None, help="NATS URL (default $REBUNO_URL)")
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--mcp-config", default=None, metavar="PATH",
                        help="also host the MCP servers of this mcpServers JSON file")
    args = parser.parse_args(argv)
    set_root(args.root)
    try:
        servers = MCPServer.from_config(args.mcp_config) if args.mcp_config else []
    except MCPConfigError as exc:
        parser.error(str(exc))
    # with hosted servers: every @tool of this process (the fs tools) plus every tool of the servers
    runner = Runner(args.runner_id, kernel_url=args.url, max_concurrency=args.max_concurrency,
                    capabilities=None if servers else CAPABILITIES)
    for server in servers:
        runner.host(server)
    runner.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
