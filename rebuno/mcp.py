"""``MCPServer``: the tools of an MCP server as rebuno tools, in an agent or on a runner.

An agent uses an MCP server *locally* (the transport runs in the agent process)::

    fs = MCPServer("filesystem", command="npx", args=["-y", "@modelcontextprotocol/server-filesystem", "/tmp"])
    github = MCPServer("github", url="https://api.githubcopilot.com/mcp/", headers={"Authorization": "Bearer …"})

    async def process(prompt: str):
        graph = create_agent(llm, [search, *fs.tools, *github.tools])

A runner *hosts* one (credentials stay on the runner; agents use ``remote.Tools(prefix)``)::

    runner = Runner("github-runner")
    runner.host(MCPServer("github", url=..., headers=...))
    runner.run()

or, with no code, ``rebuno runner --runner-id ID --mcp-config servers.json`` (the standard
``{"mcpServers": {...}}`` file, see :meth:`MCPServer.from_config`).

Tool ids
    MCP tool ``name`` of a server with prefix ``p`` (default: the server's name) is the rebuno
    tool ``p.name``. Tool ids are dot-separated segments of ``[A-Za-z0-9_-]``, so in the MCP
    name every other character becomes ``_`` and an empty dot-separated segment becomes ``_``
    (``"weird name/v2"`` -> ``p.weird_name_v2``, ``"a..b"`` -> ``p.a._.b``). A tool whose id
    would exceed 256 characters, or that maps to the same id as another tool of the server, is
    not served and the refusal is logged (naming both tools).

Lifecycle
    Agents connect every ``MCPServer`` of their process that no runner hosts when
    ``agent.run()`` starts and disconnect them on shutdown; runners connect the servers they
    host. Each connection lives in its own background task (the MCP client's anyio task groups
    are entered and left in that task). A server that cannot be reached is retried in the
    background with exponential backoff (``retry_delay`` doubling up to ``max_retry_delay``
    seconds, forever, each failure logged) while the other servers work; a connected server's
    tool list is re-read every ``health_interval`` seconds, which also notices a server that
    died. A runner re-registers its capabilities whenever a hosted server connects, goes away
    or changes its tools.

Calls
    Calling one of ``server.tools`` inside an agent's handler submits an ``invoke_tool``
    intent first (policy may deny it: :class:`~rebuno.errors.PolicyError`, and the MCP server
    is never called), then calls the MCP tool in this process and reports the outcome as the
    step's result. Arguments whose value is ``None`` are not sent (optional parameters the
    caller left out). A call made while the server is reconnecting waits up to
    ``reconnect_wait`` seconds for it.

Results (the same mapping for local and runner-hosted calls)
    ===============================================  ===========================================
    MCP ``CallToolResult``                           step result / error
    ===============================================  ===========================================
    ``isError: true``                                :class:`~rebuno.errors.ToolError` (not
                                                     retryable) whose message is the result's
                                                     text items joined with newlines
    ``structuredContent`` present                    that value, unchanged (``content`` ignored)
    no content                                       ``None``
    only text items                                  their texts joined with ``"\\n"`` (one item:
                                                     its text)
    any other kind among the items (image, audio,    a list with every item as its MCP JSON form,
    resource link, embedded resource)                e.g. ``{"type": "image", "data": …,
                                                     "mimeType": "image/png"}``
    ===============================================  ===========================================

Errors (all :class:`~rebuno.errors.ToolError`)
    - the server refused the call (unknown tool, invalid arguments: a JSON-RPC error) — not
      retryable;
    - the connection broke during the call (server died, HTTP endpoint gone) — ``retryable``:
      a runner reports it so, and the kernel retries the step on the runner, whose call waits
      for the reconnection; the message names the server and the tool;
    - the server is not connected and did not come back within ``reconnect_wait`` — retryable;
    - no answer within ``call_timeout`` seconds (when set) — retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import sys
import weakref
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import structlog

from schemas.ids import InvalidIdError, validate_tool_id

from ._execution import current_state
from ._tools import ToolCollection, ToolSpec, mark_tool, signature_from_schema
from .errors import ToolError

__all__ = ["MCPServer", "MCPConfigError", "tool_id_for", "step_result"]

_SERVERS: list[weakref.ref["MCPServer"]] = []
"""Every live MCPServer of the process, in creation order (agents connect those no runner hosts).
Weak: a server nobody references any more is not connected by the next agent."""

_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_PAGES_MAX = 100
_CLOSE_WAIT_S = 15.0
_CONNECTION_CLOSED = -32000  # mcp.types.CONNECTION_CLOSED (not imported at module level: mcp is slow to import)
_REQUEST_TIMEOUT = -32001  # mcp.types.REQUEST_TIMEOUT

HeadersArg = Mapping[str, str] | Callable[[], Mapping[str, str]]


class MCPConfigError(ValueError):
    """An ``mcpServers`` configuration could not be used (missing or unreadable file, invalid
    JSON, wrong shapes, an unset environment variable); the message says where."""


def tool_id_for(prefix: str, name: str) -> str:
    """The rebuno tool id of MCP tool ``name`` under ``prefix`` (see the module docstring).

    Raises:
        InvalidIdError: the id would be longer than 256 characters (or ``prefix`` is invalid).
    """
    segments = [_BAD_CHARS.sub("_", segment) or "_" for segment in name.split(".")]
    return validate_tool_id(f"{prefix}.{'.'.join(segments)}")


def step_result(result: Any, tool_id: str = "") -> Any:
    """Map an MCP ``CallToolResult`` to a step result (table in the module docstring).

    Raises:
        ToolError: the result has ``isError: true`` (not retryable; message: its text).
    """
    content = list(getattr(result, "content", None) or [])
    if getattr(result, "is_error", False):
        texts = [block.text for block in content if getattr(block, "type", "") == "text" and block.text]
        raise ToolError("\n".join(texts) or "the MCP tool reported an error without a message", tool_id)
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        return structured
    if not content:
        return None
    if all(getattr(block, "type", "") == "text" for block in content):
        return "\n".join(block.text for block in content)
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(block, "model_dump")
            else block for block in content]


def _describe(exc: BaseException) -> str:
    """The innermost meaningful error of ``exc`` (anyio wraps transport failures in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _errlog() -> Any:
    """Where a stdio server's stderr goes: ours, when it is a real file."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


async def _wait_any(events: Sequence[asyncio.Event], timeout: float | None) -> bool:
    """Wait until one of ``events`` is set (True) or ``timeout`` seconds pass (False)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for w in waiters:
            w.cancel()


class MCPServer(ToolCollection):
    """An MCP server reached over stdio (``command``) or streamable HTTP (``url``).

    Args:
        name: the server's name (logs, errors) and the default tool prefix.
        command / args / env / cwd: run the server as a subprocess and talk over its stdin and
            stdout. The process gets a minimal environment (``HOME``, ``PATH``, ``USER``…)
            plus ``env``; its stderr goes to this process's stderr.
        url / headers: a streamable-HTTP endpoint (``http://`` or ``https://``). ``headers``
            is a mapping sent with every request, or a zero-argument callable returning one,
            called for every request (token rotation without reconnecting).
        prefix: tool id prefix (tools are ``<prefix>.<tool>``); defaults to ``name``.
        connect_timeout: seconds one connection attempt (start, handshake, tool list) may take.
        call_timeout: seconds one tool call may take (None: no limit but the kernel's step
            deadline).
        reconnect_wait: seconds a call waits for a reconnecting server before failing (retryable).
        retry_delay / max_retry_delay: background reconnection backoff, seconds (doubling).
        health_interval: seconds between re-reads of the tool list of a connected server.

    Raises:
        ValueError: empty name; not exactly one of ``command`` and ``url``; a URL that is not
            http(s); a prefix that is not a valid tool id (pass ``prefix=`` when the name is
            not one); a non-positive timeout.
    """

    def __init__(self, name: str, *, command: str | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 url: str | None = None, headers: HeadersArg | None = None, prefix: str | None = None,
                 connect_timeout: float = 30.0, call_timeout: float | None = None, reconnect_wait: float = 10.0,
                 retry_delay: float = 1.0, max_retry_delay: float = 60.0, health_interval: float = 30.0) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("MCPServer requires a non-empty name")
        if bool(command) == bool(url):
            raise ValueError(f"MCPServer {name!r} needs exactly one of command= (stdio) or url= (streamable HTTP)")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"MCPServer {name!r}: url must start with http:// or https://, got {url!r}")
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"MCPServer {name!r}: args must be a list of strings")
        try:
            self.prefix = validate_tool_id(prefix or name)
        except InvalidIdError as exc:
            raise ValueError(f"MCPServer {name!r}: {exc}" + ("" if prefix else "; pass prefix=")) from None
        for what, value in (("connect_timeout", connect_timeout), ("reconnect_wait", reconnect_wait),
                            ("retry_delay", retry_delay), ("max_retry_delay", max_retry_delay),
                            ("health_interval", health_interval), ("call_timeout", call_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"MCPServer {name!r}: {what} must be positive")
        self.name = name
        self.command, self.args, self.env = command, list(args), {k: str(v) for k, v in (env or {}).items()}
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.url = url
        self.headers: HeadersArg = headers if callable(headers) else dict(headers or {})
        self.connect_timeout, self.call_timeout, self.reconnect_wait = connect_timeout, call_timeout, reconnect_wait
        self.retry_delay, self.max_retry_delay, self.health_interval = retry_delay, max_retry_delay, health_interval
        self.last_error = ""
        """Why the last connection attempt failed or the connection ended ("" if none)."""
        self._host: str | None = None  # runner id when a runner hosts it
        self._owners = 0
        self._task: asyncio.Task | None = None
        self._client: Any = None
        self._live: dict[str, ToolSpec] = {}  # tools of the current connection
        self._known: dict[str, ToolSpec] = {}  # every tool seen, kept across reconnects
        self._callables: dict[str, Callable[..., Any]] = {}
        self._mcp_names: dict[str, str] = {}  # tool id -> MCP tool name
        self._listeners: list[Callable[["MCPServer"], None]] = []
        self._was_connected = False
        self._log_context: dict[str, str] = {"mcp_server": name}
        self._new_events()
        _SERVERS.append(weakref.ref(self))

    @property
    def _log(self) -> Any:
        # bound at each use, so the process's logging configuration (made later) applies
        return structlog.get_logger("rebuno.mcp").bind(**self._log_context)

    # ------------------------------------------------------------------ config --
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str], **options: Any) -> list["MCPServer"]:
        """Servers from a standard ``mcpServers`` mapping, or a JSON file holding one::

            {"mcpServers": {
                "time":   {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"}},
                "github": {"url": "https://api.githubcopilot.com/mcp/",
                           "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}"}}}}

        Per server: ``command`` (+ ``args``, ``env``, ``cwd``) or ``url`` (+ ``headers``);
        optional ``type`` (``stdio``, ``http``/``streamable-http``; ``sse`` is refused),
        ``prefix`` (default: the server's name) and ``disabled: true`` (skipped). Other keys
        (other clients' settings) are ignored with a warning. ``${VAR}`` and
        ``${VAR:-default}`` in ``command``, ``args``, ``env``, ``cwd``, ``url`` and ``headers``
        are replaced from this process's environment, so secrets need not be in the file.

        Args:
            config: the mapping, or the path of a JSON file.
            options: keyword arguments for every :class:`MCPServer` (e.g. ``connect_timeout``).

        Returns:
            The servers, in the file's order.

        Raises:
            MCPConfigError: missing or unreadable file, invalid JSON, a wrong shape, an
                unknown ``type``, an unset variable, or an invalid server (message says which).
        """
        data, source = _read_config(config)
        entries = data.get("mcpServers") if isinstance(data, Mapping) else None
        if not isinstance(entries, Mapping):
            raise MCPConfigError(f"{source}: expected an object with an \"mcpServers\" object of name -> server")
        servers = []
        for name, entry in entries.items():
            where = f"{source}: server {name!r}"
            if not isinstance(entry, Mapping):
                raise MCPConfigError(f"{where}: expected an object, got {type(entry).__name__}")
            if entry.get("disabled") is True:
                continue
            kwargs = _server_kwargs(entry, where)
            try:
                servers.append(cls(str(name), **kwargs, **options))
            except (TypeError, ValueError) as exc:
                raise MCPConfigError(f"{where}: {exc}") from None
        return servers

    # ------------------------------------------------------------------- tools --
    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"streamable-http"``."""
        return "stdio" if self.command else "streamable-http"

    @property
    def connected(self) -> bool:
        """Whether a connection is up now."""
        return self._client is not None

    @property
    def tools(self) -> list[Callable[..., Any]]:
        """The server's tools as async callables, by tool id (splat them into a tool list).

        Each has the MCP tool's name as ``__name__``, its description as ``__doc__``, a
        keyword-only ``inspect.Signature`` from its input schema, and the attributes of every
        rebuno tool callable (``__rebuno_tool__``, ``__rebuno_tool_id__``,
        ``__rebuno_remote__`` = False, ``__input_schema__``) plus ``__rebuno_mcp__`` = True.
        Tools seen once stay listed while the server reconnects (their calls then wait or fail
        as retryable).

        Raises:
            RuntimeError: the server never connected (outside ``agent.run()``, or unreachable
                so far — the message carries the last error).
        """
        return super().tools

    @property
    def tool_ids(self) -> list[str]:
        """Ids of :attr:`tools`, sorted.

        Raises:
            RuntimeError: as :attr:`tools`.
        """
        return list(self._require())

    def _require(self) -> dict[str, Callable[..., Any]]:
        if not self._callables:
            why = f" (last error: {self.last_error})" if self.last_error else ""
            raise RuntimeError(f"MCPServer {self.name!r} is not connected{why}; its tools are listed once it "
                               "connects, which starts with agent.run() or runner.run()")
        ids = self._live if self._client is not None else self._known
        return {tid: self._callables[tid] for tid in sorted(ids)}

    def _label(self) -> str:
        return f"MCPServer {self.name!r}"

    def _live_specs(self) -> dict[str, ToolSpec]:
        """Tools of the current connection (empty while disconnected)."""
        return dict(self._live)

    def _known_spec(self, tool_id: str) -> ToolSpec | None:
        return self._known.get(tool_id)

    def _mcp_name(self, tool_id: str) -> str:
        return self._mcp_names.get(tool_id, tool_id)

    def _add_listener(self, fn: Callable[["MCPServer"], None]) -> None:
        """Call ``fn(server)`` whenever the server connects, goes away or changes its tools."""
        self._listeners.append(fn)

    def _remove_listener(self, fn: Callable[["MCPServer"], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    # ---------------------------------------------------------------- lifecycle --
    async def connect(self) -> bool:
        """Start this process's connection to the server (or join it: agents of one process
        share it) and wait for the first attempt, at most ``connect_timeout`` seconds. Agents
        and runners call this for you; pair each call with :meth:`disconnect`.

        Returns:
            True when connected; False when the first attempt failed (``last_error`` says
            why) — the server is then retried in the background.
        """
        self._owners += 1
        if self._task is None or self._task.done():
            self._new_events()
            self._task = asyncio.create_task(self._supervise(), name=f"rebuno-mcp-{self.name}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), self.connect_timeout + 5)
        return self._client is not None

    async def disconnect(self) -> None:
        """Leave the connection; the last one to leave closes it (a stdio server's process is
        stopped), waiting at most 15 s."""
        if self._owners == 0:
            return
        self._owners -= 1
        if self._owners > 0:
            return
        task, self._task = self._task, None
        self._closing.set()
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_WAIT_S)
        except asyncio.TimeoutError:
            self._log.warning("MCP server did not close in time; abandoning it")
            task.cancel()
        except Exception:  # noqa: BLE001 - the supervisor logs its own failures
            pass

    def _new_events(self) -> None:
        self._closing = asyncio.Event()
        self._attempted = asyncio.Event()
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()

    async def _supervise(self) -> None:
        """Keep a connection up until closed: connect, serve, and after a failure or a lost
        connection try again with exponential backoff."""
        failures = 0
        while not self._closing.is_set():
            self._was_connected = False
            try:
                await self._session()
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
                self.last_error = _describe(exc)
            finally:
                self._attempted.set()
            if self._closing.is_set():
                break
            failures = 1 if self._was_connected else failures + 1
            delay = min(self.retry_delay * 2 ** (failures - 1), self.max_retry_delay) * random.uniform(0.8, 1.0)
            if self._was_connected:
                self._log.warning("MCP server disconnected; reconnecting", error=self.last_error or "closed by the server",
                                  retry_in_s=round(delay, 2))
            else:
                self._log.warning("MCP server unavailable; retrying in the background", error=self.last_error,
                                  attempt=failures, retry_in_s=round(delay, 2))
            await _wait_any([self._closing], delay)
        self._log.debug("MCP server closed")

    async def _session(self) -> None:
        """One connection, from start to end (``_was_connected`` tells whether it got connected).

        The connection's contexts (subprocess or HTTP client, MCP session) are entered and left
        in this task, inside one cancel scope whose deadline bounds the connection attempt.
        """
        import anyio

        self._lost = asyncio.Event()
        with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout) as scope:
            # closing while still connecting abandons the attempt (once connected, _watch returns)
            closing = asyncio.ensure_future(self._closing.wait())
            closing.add_done_callback(lambda f: None if f.cancelled() or self._was_connected else scope.cancel())
            try:
                await self._connected_session(scope)
            finally:
                closing.cancel()
        if scope.cancelled_caught and not self._was_connected and not self._closing.is_set():
            raise TimeoutError(f"no answer within connect_timeout={self.connect_timeout} s")

    async def _connected_session(self, scope: Any) -> None:
        """Open, list the tools, then serve until closed or lost (``scope`` bounds the opening)."""
        async with AsyncExitStack() as stack:
            client = await self._open(stack)
            tools = await self._list_tools(client)
            scope.deadline = math.inf
            self._client = client
            self._install(tools)
            self._was_connected = True
            self.last_error = ""
            self._connected.set()
            self._attempted.set()
            self._log.info("MCP server connected", transport=self.transport, tools=sorted(self._live))
            self._notify()
            try:
                await self._watch(client)
            finally:
                self._drop(client)

    async def _open(self, stack: AsyncExitStack) -> Any:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.types import Implementation

        from . import __version__

        info = Implementation(name="rebuno", version=__version__)
        if self.command:
            params = StdioServerParameters(command=self.command, args=self.args, env=self.env or None, cwd=self.cwd)
            client = Client(stdio_client(params, errlog=_errlog()), client_info=info, cache=None)
        else:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers=None if callable(self.headers) else self.headers,
                                      auth=_header_auth(self.headers) if callable(self.headers) else None,
                                      timeout=httpx2.Timeout(30.0, read=300.0))
            await stack.enter_async_context(http)
            client = Client(streamable_http_client(self.url or "", http_client=http), client_info=info, cache=None)
        await stack.enter_async_context(client)
        return client

    async def _list_tools(self, client: Any) -> list[Any]:
        tools: list[Any] = []
        cursor = None
        for _ in range(_PAGES_MAX):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    async def _watch(self, client: Any) -> None:
        """Serve until closed or lost; re-read the tool list every ``health_interval`` seconds."""
        import anyio

        while True:
            if await _wait_any([self._closing, self._lost], self.health_interval):
                return
            try:
                with anyio.fail_after(self.connect_timeout):
                    tools = await self._list_tools(client)
            except Exception as exc:  # noqa: BLE001
                self.last_error = f"stopped answering: {_describe(exc)}"
                self._log.warning("MCP server stopped answering; reconnecting", error=self.last_error)
                return
            if self._install(tools):
                self._log.info("MCP server changed its tools", tools=sorted(self._live))
                self._notify()

    def _drop(self, client: Any) -> None:
        """Forget the connection ``client`` (its tools stay known for waiting callers)."""
        if self._client is client:
            self._client = None
        self._connected.clear()
        if self._live:
            self._live = {}
            self._notify()

    def _mark_lost(self, client: Any, why: str) -> None:
        """A call found ``client``'s connection broken: stop using it and reconnect."""
        if client is self._client:
            self.last_error = why
            self._client = None
            self._connected.clear()
            self._lost.set()

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception as exc:  # noqa: BLE001
                self._log.warning("MCP listener failed", error=repr(exc))

    def _install(self, tools: list[Any]) -> bool:
        """Adopt a tool list; returns whether the served tools changed. Tools whose name cannot
        be a tool id, or that collide after mapping, are refused and logged."""
        live: dict[str, ToolSpec] = {}
        names: dict[str, str] = {}
        changed = False
        for tool in sorted(tools, key=lambda t: t.name):
            try:
                tid = tool_id_for(self.prefix, tool.name)
            except InvalidIdError as exc:
                self._log.error("MCP tool not served: its name cannot be a rebuno tool id", mcp_tool=tool.name,
                                error=str(exc))
                continue
            if tid in names:
                self._log.error("MCP tool not served: it maps to the same tool id as another tool of the server",
                                tool_id=tid, mcp_tool=tool.name, other_mcp_tool=names[tid])
                continue
            names[tid] = tool.name
            description = tool.description or ""
            schema = dict(tool.input_schema or {"type": "object", "properties": {}})
            old = self._known.get(tid)
            if old is not None and old.description == description and old.schema == schema \
                    and self._mcp_names.get(tid) == tool.name:
                live[tid] = old
                continue
            spec = self._make_spec(tid, tool.name, description, schema)
            live[tid] = spec
            self._known[tid] = spec
            self._mcp_names[tid] = tool.name
            self._callables[tid] = self._make_callable(spec, tool.name)
            changed = True
        if set(live) != set(self._live):
            changed = True
        self._live = live
        return changed

    def _make_spec(self, tool_id: str, mcp_name: str, description: str, schema: dict[str, Any]) -> ToolSpec:
        async def call_mcp_tool(**arguments: Any) -> Any:
            return await self._call(mcp_name, tool_id, arguments)

        return ToolSpec(id=tool_id, fn=call_mcp_tool, remote=False, description=description, schema=schema)

    def _make_callable(self, spec: ToolSpec, mcp_name: str) -> Callable[..., Any]:
        sig = signature_from_schema(spec.schema)
        tool_id = spec.id

        async def mcp_tool(**kwargs: Any) -> Any:
            state = current_state()
            if state is None or state._backend is None:
                raise RuntimeError(f"MCP tool {tool_id!r} called outside an active execution: call it from an "
                                   "agent handler running under agent.run()")
            bound = sig.bind(**kwargs)  # TypeError for bad arguments, before anything is sent
            arguments = {k: v for k, v in bound.arguments.items() if v is not None}
            return await state._backend.invoke_tool(tool_id, arguments, local_fn=spec.fn)

        mcp_tool.__name__ = mcp_tool.__qualname__ = mcp_name
        mcp_tool.__doc__ = spec.description
        mcp_tool.__module__ = __name__
        mcp_tool.__signature__ = sig  # type: ignore[attr-defined]
        mcp_tool.__rebuno_mcp__ = True  # type: ignore[attr-defined]
        mcp_tool.__rebuno_mcp_server__ = self.name  # type: ignore[attr-defined]
        return mark_tool(mcp_tool, spec)

    # -------------------------------------------------------------------- calls --
    async def _ready_client(self, tool_id: str) -> Any:
        client = self._client
        if client is not None:
            return client
        if self._task is not None and not self._closing.is_set():
            await _wait_any([self._connected, self._closing], self.reconnect_wait)
            client = self._client
        if client is None:
            if self._task is None:
                why = "it connects when agent.run() or runner.run() starts"
            else:
                why = f"still unreachable after {self.reconnect_wait:g} s ({self.last_error or 'connecting'})"
            raise ToolError(f"MCP server {self.name!r} is not connected: {why}; tool {tool_id} is unavailable",
                            tool_id, retryable=True)
        return client

    async def _call(self, mcp_name: str, tool_id: str, arguments: Any) -> Any:
        """Call MCP tool ``mcp_name`` and map the result (module docstring: Results, Errors)."""
        import anyio
        import pydantic
        from mcp import MCPError

        args = {k: v for k, v in arguments.items() if v is not None} if isinstance(arguments, dict) else {}
        client = await self._ready_client(tool_id)
        try:
            result = await client.call_tool(mcp_name, args, read_timeout_seconds=self.call_timeout)
        except MCPError as exc:
            if exc.code == _CONNECTION_CLOSED:
                self._mark_lost(client, f"connection closed during the call to {mcp_name!r}")
                self._log.warning("MCP server went away during a call", tool_id=tool_id)
                raise ToolError(f"MCP server {self.name!r} went away during the call to {mcp_name!r} "
                                f"({exc.message}); it is being reconnected, retry the call", tool_id,
                                retryable=True) from None
            if exc.code == _REQUEST_TIMEOUT:
                raise ToolError(f"MCP server {self.name!r} did not answer the call to {mcp_name!r} within "
                                f"{self.call_timeout} s", tool_id, retryable=True) from None
            raise ToolError(f"MCP server {self.name!r} refused the call to {mcp_name!r}: {exc.message} "
                            f"(MCP error {exc.code})", tool_id) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            self._mark_lost(client, f"connection broken during the call to {mcp_name!r}: {_describe(exc)}")
            raise ToolError(f"MCP server {self.name!r} connection broke during the call to {mcp_name!r} "
                            f"({_describe(exc)}); it is being reconnected, retry the call", tool_id,
                            retryable=True) from None
        except pydantic.ValidationError as exc:
            raise ToolError(f"MCP server {self.name!r} returned an invalid result for {mcp_name!r}: {exc}",
                            tool_id) from None
        return step_result(result, tool_id)

    def __repr__(self) -> str:
        where = self.command if self.command else self.url
        return f"<MCPServer {self.name!r} {self.transport} {where!r}>"


def _header_auth(fn: Callable[[], Mapping[str, str]]) -> Any:
    """An httpx2 auth hook that sets ``fn()``'s headers on every request."""
    import httpx2

    class _CallableHeaders(httpx2.Auth):
        def auth_flow(self, request: Any) -> Any:
            for key, value in fn().items():
                request.headers[key] = value
            yield request

    return _CallableHeaders()


# -------------------------------------------------------------------- config --
_CONFIG_KEYS = {"command", "args", "env", "cwd", "url", "headers", "type", "prefix", "disabled"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_log = structlog.get_logger("rebuno.mcp")


def _read_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> tuple[Any, str]:
    if isinstance(config, Mapping):
        return config, "MCP config"
    path = Path(config)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MCPConfigError(f"MCP config {path}: file not found") from None
    except OSError as exc:
        raise MCPConfigError(f"MCP config {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MCPConfigError(f"MCP config {path}: not UTF-8 text") from None
    try:
        return json.loads(text), f"MCP config {path}"
    except json.JSONDecodeError as exc:
        raise MCPConfigError(f"MCP config {path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                             f"{exc.msg}") from None


def _expand(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MCPConfigError(f"{where}: expected a string, got {type(value).__name__}")

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise MCPConfigError(f"{where}: environment variable {var} is not set")

    return _VAR.sub(sub, value)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise MCPConfigError(f"{where}: expected an object of strings, got {type(value).__name__}")
    return {str(k): _expand(v, f"{where}.{k}") for k, v in value.items()}


def _server_kwargs(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(entry) - _CONFIG_KEYS)
    if unknown:
        _log.warning("ignoring MCP config keys rebuno does not use", where=where, keys=unknown)
    kind = entry.get("type")
    if kind is not None and kind not in ("stdio", "http", "streamable-http", "streamable_http", "streamableHttp"):
        if kind == "sse":
            raise MCPConfigError(f"{where}: the SSE transport is not supported; use a streamable HTTP url")
        raise MCPConfigError(f"{where}: unknown type {kind!r} (expected stdio or http)")
    kwargs: dict[str, Any] = {}
    if "command" in entry:
        kwargs["command"] = _expand(entry["command"], f"{where}.command")
        args = entry.get("args", [])
        if not isinstance(args, list):
            raise MCPConfigError(f"{where}.args: expected a list of strings")
        kwargs["args"] = [_expand(a, f"{where}.args[{i}]") for i, a in enumerate(args)]
        if "env" in entry:
            kwargs["env"] = _string_map(entry["env"], f"{where}.env")
        if "cwd" in entry:
            kwargs["cwd"] = _expand(entry["cwd"], f"{where}.cwd")
    if "url" in entry:
        kwargs["url"] = _expand(entry["url"], f"{where}.url")
        if "headers" in entry:
            kwargs["headers"] = _string_map(entry["headers"], f"{where}.headers")
    if "command" in kwargs and "url" in kwargs:
        raise MCPConfigError(f"{where}: give either command (stdio) or url (streamable HTTP), not both")
    if not kwargs:
        raise MCPConfigError(f"{where}: needs \"command\" (stdio) or \"url\" (streamable HTTP)")
    if (kind == "stdio" and "command" not in kwargs) or (kind not in (None, "stdio") and "url" not in kwargs):
        raise MCPConfigError(f"{where}: type {kind!r} does not match the server's command/url")
    if "prefix" in entry:
        kwargs["prefix"] = entry["prefix"]
    return kwargs


# ------------------------------------------------------------ process helpers --
def _registered() -> list[MCPServer]:
    """The live servers of the process, in creation order."""
    alive = [s for s in (ref() for ref in _SERVERS) if s is not None]
    if len(alive) != len(_SERVERS):
        _SERVERS[:] = [weakref.ref(s) for s in alive]
    return alive


def _forget(server: MCPServer) -> None:
    """Take ``server`` out of the process registry (agents started later do not connect it)."""
    _SERVERS[:] = [ref for ref in _SERVERS if ref() is not None and ref() is not server]


def _local_servers() -> list[MCPServer]:
    return [s for s in _registered() if s._host is None]


async def connect_local() -> list[MCPServer]:
    """Connect every MCPServer of the process that no runner hosts (an agent's start); the
    first attempts run concurrently. Returns the servers joined (pass them to
    :func:`disconnect_servers`)."""
    servers = _local_servers()
    if servers:
        await asyncio.gather(*(s.connect() for s in servers))
    return servers


async def disconnect_servers(servers: Sequence[MCPServer]) -> None:
    """Leave each server's connection (closing it when nobody else uses it)."""
    if servers:
        await asyncio.gather(*(s.disconnect() for s in servers), return_exceptions=True)


def local_spec(tool_id: str) -> ToolSpec | None:
    """The tool ``tool_id`` of a connected MCP server that this process uses locally, if any
    (``execution.invoke_tool`` runs such a tool in the agent)."""
    for server in _registered():
        if server._host is None and server._owners > 0:
            spec = server._known_spec(tool_id)
            if spec is not None:
                return spec
    return None
