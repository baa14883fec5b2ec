"""``remote.Tools(prefix)``: tools that runners publish, discovered from the kernel directory.

Schemas are fetched once when ``agent.run()`` starts (the seed document: restart the
agent to pick up runner-side schema changes); each callable submits a remote
``invoke_tool`` intent, and the kernel routes it to a runner advertising the id.
"""

from __future__ import annotations

from typing import Any, Callable

import structlog

from schemas import api

from ._connection import Requester
from ._tools import ToolCollection, make_remote_callable
from .errors import RebunoError

__all__ = ["Tools"]

_HANDLES: list["Tools"] = []


class Tools(ToolCollection):
    """A handle on the directory's tools under ``prefix``.

    Matches ids equal to ``prefix`` or starting with ``prefix.`` or ``prefix_``.

    Raises:
        ValueError: empty prefix.
    """

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("Tools requires a non-empty prefix")
        self.prefix = prefix
        self._tools: dict[str, Callable[..., Any]] | None = None
        _HANDLES.append(self)

    def _require(self) -> dict[str, Callable[..., Any]]:
        if self._tools is None:
            raise RuntimeError(f"remote.Tools(prefix={self.prefix!r}) has not been connected; its tools are "
                               "fetched when agent.run() starts")
        return self._tools

    def _label(self) -> str:
        return f"remote.Tools(prefix={self.prefix!r})"

    async def connect(self, requester: Requester) -> None:
        """Fetch the schemas from ``tools.list`` (once; later calls do nothing).

        Raises:
            RebunoError: the kernel could not be asked.
        """
        if self._tools is not None:
            return
        reply: api.ToolsReply = await requester.call("tools.list", api.ListTools(prefix=self.prefix))
        self._tools = {t.id: make_remote_callable(t.id, t.description, t.input_schema) for t in reply.tools}

    def disconnect(self) -> None:
        """Forget the tools (``.tools`` raises again until the next connect)."""
        self._tools = None

    def __repr__(self) -> str:
        n = "unconnected" if self._tools is None else f"{len(self._tools)} tools"
        return f"<remote.Tools prefix={self.prefix!r} {n}>"


async def connect_all(requester: Requester, log: structlog.BoundLogger) -> None:
    """Connect every handle of the process; failures are logged and leave the handle unconnected."""
    for handle in _HANDLES:
        try:
            await handle.connect(requester)
            log.info("remote tools discovered", prefix=handle.prefix, tools=len(handle))
        except RebunoError as exc:
            log.warning("remote tool discovery failed", prefix=handle.prefix, error=str(exc))


async def disconnect_all() -> None:
    for handle in _HANDLES:
        handle.disconnect()
