"""``rebuno.integrations.langchain`` without a broker: names, schemas, results and error
mapping, with a fake kernel backend standing in for the agent."""

import asyncio
import importlib
import sys
import typing
from typing import Annotated, Any, Iterator

import pytest
from pydantic import Field

pytest.importorskip("langchain_core", reason="needs the 'langgraph' extra: pip install -e '.[langgraph]'")

from langchain_core.messages import ToolMessage  # noqa: E402
from langchain_core.tools import StructuredTool  # noqa: E402

from rebuno import _tools, errors, remote  # noqa: E402
from rebuno._execution import ExecutionState, reset_state, set_state  # noqa: E402
from rebuno._tools import make_remote_callable, tool  # noqa: E402
from rebuno.integrations.langchain import (  # noqa: E402
    MAX_NAME_LENGTH, llm_tool_name, rebuno_tool_id, to_langchain_tools, tool_id_map)


@pytest.fixture(autouse=True)
def _isolated_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tools, "_REGISTRY", dict(_tools._REGISTRY))
    monkeypatch.setattr(remote, "_HANDLES", [])


class FakeBackend:
    """Plays the kernel: records intents; ``outcomes[tool_id]`` is a result or an exception."""

    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, Any, bool]] = []

    async def invoke_tool(self, tool_id: str, arguments: Any, *, idempotency_key: str = "",
                          local_fn: Any = None, force_remote: bool = False) -> Any:
        self.calls.append((tool_id, arguments, force_remote))
        outcome = self.outcomes[tool_id]
        if isinstance(outcome, BaseException):
            raise outcome
        if local_fn is not None and outcome is None:
            return await _tools.call_body(local_fn, arguments)
        return outcome


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend({})
    token = set_state(ExecutionState("exec-1", session_id="s", agent_id="a", backend=fake))  # type: ignore[arg-type]
    try:
        yield fake
    finally:
        reset_state(token)


def call(t: StructuredTool, args: dict[str, Any]) -> ToolMessage:
    return asyncio.run(t.ainvoke({"name": t.name, "args": args, "id": "call-1", "type": "tool_call"}))


def test_llm_names() -> None:
    assert llm_tool_name("fs.read_file") == "fs_read_file"
    assert llm_tool_name("web_search") == "web_search"
    long_a, long_b = "a" * 70 + ".x", "a" * 70 + ".y"
    name_a, name_b = llm_tool_name(long_a), llm_tool_name(long_b)
    assert len(name_a) == MAX_NAME_LENGTH and name_a != name_b and name_a == llm_tool_name(long_a)
    assert name_a.startswith("a" * 55 + "_")
    with pytest.raises(ValueError, match="invalid tool_id"):
        llm_tool_name("bad id")


def test_conversion_keeps_ids_descriptions_and_schemas() -> None:
    @tool("fs.read_file")
    async def read_file(path: Annotated[str, Field(description="which file")], limit: int = 10) -> str:
        """Read a file."""
        return ""

    @tool("compute.heavy", remote=True)
    async def heavy(data: str) -> str:
        """Runs on a runner."""

    discovered = make_remote_callable("compute.heavy", "from the directory", {"type": "object"})
    other = make_remote_callable("compute.other", "", {"type": "object", "properties": {"n": {"type": "integer"}}})
    converted = to_langchain_tools([read_file, heavy, discovered, other])
    assert [t.name for t in converted] == ["fs_read_file", "compute_heavy", "compute_other"]  # first of an id wins
    assert tool_id_map(converted) == {"fs_read_file": "fs.read_file", "compute_heavy": "compute.heavy",
                                      "compute_other": "compute.other"}
    rf, hv, ot = converted
    assert rf.description == "Read a file." and hv.description == "Runs on a runner."
    assert ot.description == "Rebuno tool compute.other"
    assert rf.args_schema == {"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string", "title": "Path", "description": "which file"},
        "limit": {"type": "integer", "title": "Limit", "default": 10}}}
    assert rf.metadata == {"rebuno_tool_id": "fs.read_file", "rebuno_remote": False}
    assert hv.metadata == {"rebuno_tool_id": "compute.heavy", "rebuno_remote": True}
    assert rebuno_tool_id(ot) == "compute.other"
    with pytest.raises(ValueError, match="not made by"):
        rebuno_tool_id(StructuredTool.from_function(lambda: 1, name="x", description="x"))


def test_name_collisions_overrides_and_bad_items() -> None:
    @tool("a.b")
    async def dotted() -> None: ...

    @tool("a_b")
    async def underscored() -> None: ...

    with pytest.raises(ValueError, match="'a.b' and 'a_b' would both be named 'a_b'"):
        to_langchain_tools([dotted, underscored])
    renamed = to_langchain_tools([dotted, underscored], names={"a.b": "a-dot-b", "unknown.id": "ignored"})
    assert [t.name for t in renamed] == ["a-dot-b", "a_b"]
    with pytest.raises(ValueError, match="not a valid tool name"):
        to_langchain_tools([dotted], names={"a.b": "a.b"})

    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="would bypass the kernel"):
        to_langchain_tools([plain])
    with pytest.raises(RuntimeError, match="has not been connected"):
        to_langchain_tools([remote.Tools("nowhere")])


def test_results_and_errors_reach_the_model(backend: FakeBackend) -> None:
    ran: list[str] = []

    @tool("t.local")
    def local(text: str, times: int = 2) -> str:
        ran.append(text)
        return text * times

    @tool("t.denied")
    def denied(path: str) -> None:
        ran.append(path)

    @tool("t.broken", remote=True)
    async def broken(x: int) -> int: ...

    structured = make_remote_callable("t.structured", "", {"type": "object", "properties": {"q": {"type": "string"}}})
    backend.outcomes.update({
        "t.local": None,  # run the body
        "t.denied": errors.PolicyError("policy denied: no (rule: r1)", details={"rule_id": "r1"}),
        "t.broken": errors.ToolError("division by zero", "t.broken", "step-1"),
        "t.structured": {"rows": [1, "é"]},
    })
    lc = {t.name: t for t in to_langchain_tools([local, denied, broken, structured])}

    ok = call(lc["t_local"], {"text": "ab"})
    assert (ok.status, ok.content, ok.artifact, ok.tool_call_id) == ("success", "abab", "abab", "call-1")
    data = call(lc["t_structured"], {"q": "x"})
    assert (data.status, data.content, data.artifact) == ("success", '{"rows": [1, "é"]}', {"rows": [1, "é"]})
    no = call(lc["t_denied"], {"path": "/"})
    assert (no.status, no.content) == ("error", "Error: the call to t_denied was refused: policy denied: no (rule: r1)")
    failed = call(lc["t_broken"], {"x": 1})
    assert (failed.status, failed.content) == ("error", "Error: t_broken failed: division by zero")
    bad = call(lc["t_local"], {"txt": "ab"})
    assert bad.status == "error" and bad.content.startswith("Error: invalid arguments for t_local:")
    assert ran == ["ab"]  # the denied body never ran; bad arguments never reached the kernel
    assert backend.calls == [("t.local", {"text": "ab", "times": 2}, False), ("t.structured", {"q": "x"}, True),
                             ("t.denied", {"path": "/"}, False), ("t.broken", {"x": 1}, True)]

    # anything else is not the model's business: it propagates out of the graph
    backend.outcomes["t.structured"] = errors.UnauthorizedError("session fenced", "UNAUTHORIZED")
    with pytest.raises(errors.UnauthorizedError):
        call(lc["t_structured"], {"q": "x"})
    with pytest.raises(NotImplementedError):
        lc["t_local"].invoke({"text": "sync"})


def test_outside_an_execution_raises() -> None:
    @tool("t.lonely")
    async def lonely() -> None: ...

    with pytest.raises(RuntimeError, match="outside an active execution"):
        call(to_langchain_tools([lonely])[0], {})


def test_remote_callables_have_annotations_for_introspection() -> None:
    fn = make_remote_callable("calc.add", "Add.", {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer"}, "b": {"type": "number", "default": 1.5}}})
    assert typing.get_type_hints(fn) == {"a": int, "b": float, "return": Any}


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "rebuno.integrations.langchain")
    monkeypatch.setitem(sys.modules, "langchain_core.tools", None)
    with pytest.raises(ImportError, match=r"pip install 'rebuno\[langgraph\]'"):
        importlib.import_module("rebuno.integrations.langchain")
