"""Rebuno tools as LangChain tools, for LangGraph / LangChain agents.

Needs ``langchain-core`` (``pip install 'rebuno[langgraph]'``, which also brings
``langgraph`` and ``langchain``). Typical use inside an agent handler::

    from langchain.agents import create_agent          # or langgraph.prebuilt.create_react_agent
    from rebuno.integrations.langchain import to_langchain_tools

    async def process(prompt: str) -> str:
        tools = to_langchain_tools([search, heavy, *github.tools, *compute.tools])
        graph = create_agent(llm, tools)
        state = await graph.ainvoke({"messages": [("user", prompt)]})
        return state["messages"][-1].content

Every call the model makes goes through the kernel exactly as a direct call of
the Rebuno callable would: a local ``@tool`` submits an intent and runs its body
only if policy allows, a ``@tool(remote=True)`` stub or a ``remote.Tools`` tool
waits for a runner, an ``MCPServer`` tool calls its server after the kernel
allowed it.

What the adapter adds over handing the callables to the framework directly:

* **Names.** The model sees each tool under an LLM-safe name derived from its
  *tool id* (see :func:`llm_tool_name`): ``fs.read_file`` becomes
  ``fs_read_file``. Providers accept only ``[A-Za-z0-9_-]{1,64}``, and tool ids
  may contain dots and be up to 256 characters long. The id is kept in the
  tool's ``metadata["rebuno_tool_id"]`` (:func:`rebuno_tool_id`,
  :func:`tool_id_map`).
* **Errors the model can act on.** A policy denial (:class:`~rebuno.PolicyError`,
  including rate limits and refused approvals), a failed tool
  (:class:`~rebuno.ToolError`) and arguments that do not fit the tool's
  signature come back to the model as a ``ToolMessage`` with
  ``status="error"``; the graph goes on. Given the bare callables, recent
  versions of LangGraph's ``ToolNode`` re-raise such errors out of the graph,
  which fails the execution.
* **Schemas.** The argument schema is the tool's JSON Schema as the kernel's
  tool directory has it (``Annotated[..., Field(description=...)]`` included).
* **Results.** A string result is the message content as is; anything else is
  sent to the model as JSON. The raw result is the message's ``artifact``.

The tools are async only: run the graph with ``ainvoke`` / ``astream`` inside the
handler (the kernel session and the current execution live in the handler's
event loop); a synchronous ``invoke`` raises ``NotImplementedError``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
from typing import Any, Callable, Iterable, Mapping, Union

try:
    from langchain_core.tools import BaseTool, StructuredTool, ToolException
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain_core
    raise ImportError(
        "rebuno.integrations.langchain needs langchain-core (and langgraph to build agents); "
        "install them with: pip install 'rebuno[langgraph]'"
    ) from exc

from schemas.ids import validate_tool_id

from .._tools import input_schema, jsonable
from ..errors import PolicyError, ToolError
from ..mcp import MCPServer
from ..remote import Tools

__all__ = ["to_langchain_tools", "llm_tool_name", "rebuno_tool_id", "tool_id_map", "MAX_NAME_LENGTH"]

MAX_NAME_LENGTH = 64
"""Longest tool name the adapter produces (the OpenAI and Anthropic limit)."""

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_NAME_LENGTH)

ToolSource = Union[Callable[..., Any], Tools, MCPServer]
"""What :func:`to_langchain_tools` accepts: a Rebuno tool callable, or a handle whose ``.tools`` are."""


def llm_tool_name(tool_id: str) -> str:
    """The name under which the model sees the tool ``tool_id``.

    Every ``.`` becomes ``_`` (``fs.read_file`` → ``fs_read_file``; ids contain only
    ``[A-Za-z0-9_-]`` besides dots). A result longer than :data:`MAX_NAME_LENGTH`
    characters is cut to 55 characters plus ``_`` and the first 8 hex digits of
    the id's SHA-256, so it stays unique and stable. The result always matches
    ``[A-Za-z0-9_-]{1,64}``.

    Raises:
        ValueError: ``tool_id`` is not a valid tool id.
    """
    validate_tool_id(tool_id)
    name = tool_id.replace(".", "_")
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(tool_id.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LENGTH - 9]}_{digest}"
    return name


def rebuno_tool_id(tool: BaseTool) -> str:
    """The Rebuno tool id behind a tool made by :func:`to_langchain_tools`.

    Raises:
        ValueError: ``tool`` was not made by :func:`to_langchain_tools`.
    """
    tool_id = (tool.metadata or {}).get("rebuno_tool_id")
    if not isinstance(tool_id, str):
        raise ValueError(f"tool {tool.name!r} was not made by rebuno.integrations.langchain.to_langchain_tools")
    return tool_id


def tool_id_map(tools: Iterable[BaseTool]) -> dict[str, str]:
    """``{llm name: tool id}`` for tools made by :func:`to_langchain_tools` (e.g. to read the
    ``name`` of a ``ToolMessage`` or of an ``AIMessage`` tool call back as a tool id).

    Raises:
        ValueError: one of ``tools`` was not made by :func:`to_langchain_tools`.
    """
    return {t.name: rebuno_tool_id(t) for t in tools}


def to_langchain_tools(tools: Iterable[ToolSource], *, names: Mapping[str, str] | None = None) -> list[StructuredTool]:
    """Convert Rebuno tools into LangChain ``StructuredTool`` objects, in the given order.

    Args:
        tools: Rebuno tool callables — ``@tool`` functions, ``@tool(remote=True)`` stubs,
            items of ``remote.Tools(...).tools``, ``MCPServer(...).tools`` — or the
            ``remote.Tools`` / ``MCPServer`` handles themselves (their ``.tools`` are
            expanded in place). A tool id given more than once is converted once, at its
            first occurrence (so ``[heavy, *compute.tools]`` is fine when ``compute``
            also lists ``heavy``'s id).
        names: optional ``{tool id: name}`` overrides of :func:`llm_tool_name`; each name
            must match ``[A-Za-z0-9_-]{1,64}``. Ids that are not among ``tools`` are
            ignored.

    Returns:
        One ``StructuredTool`` per distinct tool id, with ``name`` (the LLM-safe name),
        ``description`` (the tool's docstring or directory description),
        ``args_schema`` (its JSON Schema), ``response_format="content_and_artifact"``,
        ``metadata={"rebuno_tool_id": ..., "rebuno_remote": ...}``, and an async
        implementation that calls the Rebuno callable. Calling it (``ainvoke`` from a
        graph running in an agent's handler):

        * returns the tool's result — a ``ToolMessage`` whose content is the result
          (JSON unless it is a string) and whose ``artifact`` is the raw result;
        * on :class:`~rebuno.PolicyError` (denied by policy, rate limited, approval
          refused), :class:`~rebuno.ToolError` (the body failed, on a runner or here;
          invalid arguments rejected by the tool's validation) or arguments that do not
          bind to the tool's signature: returns a ``ToolMessage`` with ``status="error"``
          and content ``"Error: ..."`` (the tool is not retried);
        * raises anything else unchanged: ``RuntimeError`` outside an active execution,
          connection or session errors (``NetworkError``, ``UnauthorizedError`` when
          another instance took the execution over, ``ConflictError`` after a
          cancel), ``asyncio.CancelledError``.

    Raises:
        TypeError: an item is neither a Rebuno tool callable (no ``__rebuno_tool_id__``:
            a plain function would bypass the kernel) nor a ``remote.Tools`` /
            ``MCPServer`` handle.
        RuntimeError: a ``remote.Tools`` / ``MCPServer`` handle is not connected yet
            (they connect when ``agent.run()`` starts: convert inside the handler).
        ValueError: two different tool ids get the same name (pass ``names=`` to
            rename one), or an override in ``names`` is not a valid name.
    """
    overrides = dict(names or {})
    for tool_id, name in overrides.items():
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            raise ValueError(f"names[{tool_id!r}] = {name!r} is not a valid tool name: it must match "
                             f"[A-Za-z0-9_-]{{1,{MAX_NAME_LENGTH}}}")
    out: list[StructuredTool] = []
    by_name: dict[str, str] = {}
    seen: set[str] = set()
    for fn in _expand(tools):
        tool_id = fn.__rebuno_tool_id__  # type: ignore[attr-defined]
        if tool_id in seen:
            continue
        seen.add(tool_id)
        name = overrides.get(tool_id) or llm_tool_name(tool_id)
        if name in by_name:
            raise ValueError(f"tools {by_name[name]!r} and {tool_id!r} would both be named {name!r}; "
                             f"rename one with names={{{tool_id!r}: '...'}}")
        by_name[name] = tool_id
        out.append(_convert(fn, tool_id, name))
    return out


def _expand(tools: Iterable[ToolSource]) -> Iterable[Callable[..., Any]]:
    for item in tools:
        if isinstance(item, (Tools, MCPServer)):
            yield from item.tools
        elif callable(item) and isinstance(getattr(item, "__rebuno_tool_id__", None), str):
            yield item
        else:
            raise TypeError(f"{item!r} is not a Rebuno tool: pass @tool functions, @tool(remote=True) stubs, "
                            "remote.Tools or MCPServer tools (a plain function would bypass the kernel)")


def _content(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(jsonable(result), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)


def _convert(fn: Callable[..., Any], tool_id: str, name: str) -> StructuredTool:
    schema = getattr(fn, "__input_schema__", None)
    schema = copy.deepcopy(schema) if isinstance(schema, dict) else input_schema(fn)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    sig = inspect.signature(fn)

    async def call(**arguments: Any) -> tuple[str, Any]:
        try:
            sig.bind(**arguments)
        except TypeError as exc:
            raise ToolException(f"Error: invalid arguments for {name}: {exc}") from exc
        try:
            result = fn(**arguments)
            if inspect.isawaitable(result):
                result = await result
        except PolicyError as exc:
            raise ToolException(f"Error: the call to {name} was refused: {exc.message}") from exc
        except ToolError as exc:
            raise ToolException(f"Error: {name} failed: {exc.message}") from exc
        return _content(result), result

    call.__name__ = name
    call.__doc__ = inspect.getdoc(fn)
    return StructuredTool(
        name=name,
        description=inspect.getdoc(fn) or f"Rebuno tool {tool_id}",
        args_schema=schema,
        coroutine=call,
        response_format="content_and_artifact",
        handle_tool_error=True,
        metadata={"rebuno_tool_id": tool_id, "rebuno_remote": bool(getattr(fn, "__rebuno_remote__", False))},
    )
