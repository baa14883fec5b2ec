"""``MCPServer``: describes an MCP server whose tools an agent or runner uses.

This release validates and records the server description (stdio ``command`` or
streamable-HTTP ``url``) and its tool prefix; connecting to MCP servers is the
subject of the MCP integration work and raises a clear error until it lands.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

__all__ = ["MCPServer"]


class MCPServer:
    """An MCP server reached over stdio (``command``/``args``/``env``) or HTTP (``url``/``headers``).

    Args:
        name: the server's name; the default tool prefix.
        prefix: tool id prefix (tools are ``<prefix>.<tool>``); defaults to ``name``.

    Raises:
        ValueError: empty name, or neither / both of ``command`` and ``url``.
    """

    def __init__(self, name: str, *, command: str | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, url: str | None = None,
                 headers: Mapping[str, str] | None = None, prefix: str | None = None) -> None:
        if not name:
            raise ValueError("MCPServer requires a non-empty name")
        if bool(command) == bool(url):
            raise ValueError("MCPServer needs exactly one of command= (stdio) or url= (streamable HTTP)")
        self.name = name
        self.prefix = prefix or name
        self.command, self.args, self.env = command, list(args), dict(env or {})
        self.url, self.headers = url, dict(headers or {})
        self._tools: list[Callable[..., Any]] | None = None

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "streamable-http"

    @property
    def tools(self) -> list[Callable[..., Any]]:
        """The server's tools as callables.

        Raises:
            RuntimeError: the server is not connected.
        """
        if self._tools is None:
            raise RuntimeError(f"MCPServer {self.name!r} is not connected; MCP connections are not available in "
                               "this release of rebuno")
        return self._tools

    def __repr__(self) -> str:
        where = self.command if self.command else self.url
        return f"<MCPServer {self.name!r} {self.transport} {where!r}>"
