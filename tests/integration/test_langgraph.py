"""LangGraph agents driven by a scripted chat model call Rebuno tools through the kernel.

No network and no API key: :class:`ScriptedChatModel` answers each model turn from
a script, with tool calls, and records the tool schemas the graph bound to it.
The tools are of every kind an agent can hold: local ``@tool`` functions, a
``@tool(remote=True)`` stub and ``remote.Tools`` served by a runner, and a local
MCP server over stdio (the test server of ``_mcp_server.py``). The kernel's event
log is the proof that every call went through policy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable, Iterator, Sequence

import pytest
from pydantic import Field

pytest.importorskip("langchain_core", reason="needs the 'langgraph' extra: pip install -e '.[langgraph]'")
pytest.importorskip("langgraph", reason="needs the 'langgraph' extra: pip install -e '.[langgraph]'")
pytest.importorskip("langchain.agents", reason="needs the 'langgraph' extra: pip install -e '.[langgraph]'")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.language_models.chat_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402

from rebuno import MCPServer, PolicyError, remote, tool  # noqa: E402
from rebuno import mcp as rebuno_mcp  # noqa: E402
from rebuno.integrations.langchain import to_langchain_tools, tool_id_map  # noqa: E402
from schemas.records import ExecutionStatus  # noqa: E402

from ..conftest import Cluster, policy_from_yaml, serving_bodies  # noqa: E402

pytestmark = pytest.mark.integration

Turn = Callable[[list[BaseMessage]], AIMessage]


class ScriptedChatModel(BaseChatModel):
    """A chat model that plays a script: turn *n* (the number of AI messages already in the
    conversation) is answered by ``script[n](messages)``. ``bind_tools`` works like a real
    provider's: the tools reach the model as OpenAI-style schemas, recorded in ``bound``."""

    script: list[Turn]
    bound: list[list[dict[str, Any]]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _reply(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None) -> ChatResult:
        if tools is not None:
            self.bound.append(tools)
        turn = sum(isinstance(m, AIMessage) for m in messages)
        return ChatResult(generations=[ChatGeneration(message=self.script[turn](messages))])

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        return self._reply(messages, kwargs.get("tools"))

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        return self._reply(messages, kwargs.get("tools"))


def calls(*tool_calls: tuple[str, dict[str, Any]]) -> Turn:
    """A turn that asks for these tool calls (ids ``call-<name>``)."""
    return lambda _: AIMessage(content="", tool_calls=[
        {"name": name, "args": args, "id": f"call-{name}", "type": "tool_call"} for name, args in tool_calls])


def report(messages: list[BaseMessage]) -> AIMessage:
    """The final turn: answer with what the tools returned, as the model saw it."""
    seen = {m.name: {"status": m.status, "content": m.content} for m in messages if isinstance(m, ToolMessage)}
    return AIMessage(content=json.dumps(seen, sort_keys=True))


# Tools of this module (ids unique to it). The agent holds the local tools and the stub;
# the runner serves the stub's id and the lgcalc.* tools discovered through remote.Tools.
WIPED: list[str] = []


@tool("lg.search")
async def search(query: Annotated[str, Field(description="what to look for")], limit: int = 3) -> dict:
    """Search the team's notes."""
    return {"query": query, "hits": [f"{query}-{i}" for i in range(limit)]}


@tool("lg.wipe")
def wipe(path: str) -> str:
    """Delete everything under a path."""
    WIPED.append(path)
    return "wiped"


@tool("lg.heavy", remote=True)
async def heavy(data: str) -> str:
    """Crunch data on a runner."""
    raise NotImplementedError


lgcalc = remote.Tools("lgcalc")

POLICY = """
rules:
  - {id: no-wipe, priority: 1, when: {tool_id: "lg.wipe"}, then: {decision: deny, reason: "destructive"}}
  - {id: allow-lg, priority: 2, when: {tool_ids: ["lg.*", "lgcalc.*", "lgmcp.*"]}, then: {decision: allow}}
"""


@pytest.fixture
async def lg_cluster(nats_server) -> AsyncIterator[Cluster]:
    """A kernel with POLICY and a runner serving lg.heavy and lgcalc.add."""
    def heavy_body(data: str) -> str:
        return data.upper() + "!"

    def add_body(a: Annotated[int, Field(description="first addend")], b: int = 0) -> int:
        """Add two integers."""
        return a + b

    cluster = Cluster(nats_server)
    await cluster.start_kernel(policy_from_yaml(POLICY))
    try:
        with serving_bodies({"lg.heavy": heavy_body, "lgcalc.add": add_body}):
            await cluster.runner("lg-runner", capabilities=["lg.heavy", "lgcalc.add"])
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
def lgmcp() -> Iterator[MCPServer]:
    """A local MCP server (stdio) for the agent; it leaves the process registry afterwards, so
    agents of later tests do not connect it."""
    server = MCPServer("lgmcp", command=sys.executable, args=[str(Path(__file__).with_name("_mcp_server.py"))])
    try:
        yield server
    finally:
        rebuno_mcp._forget(server)


def tool_messages(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m.name: {"status": m.status, "content": m.content, "artifact": m.artifact}
            for m in state["messages"] if isinstance(m, ToolMessage)}


async def test_create_agent_with_adapter_calls_every_kind_of_tool(lg_cluster: Cluster, lgmcp: MCPServer) -> None:
    WIPED.clear()
    model = ScriptedChatModel(script=[
        calls(("lg_search", {"query": "nats", "limit": 2}), ("lg_heavy", {"data": "abc"}),
              ("lgmcp_shout", {"text": "hey"})),
        calls(("lgcalc_add", {"a": 2, "b": 40}), ("lg_wipe", {"path": "/"}), ("lgmcp_fail", {"reason": "nope"})),
        report,
    ])

    async def handler(prompt: str) -> dict:
        tools = to_langchain_tools([search, heavy, wipe, lgcalc, lgmcp])
        graph = create_agent(model, tools, system_prompt="You are a test.")
        state = await graph.ainvoke({"messages": [HumanMessage(prompt)]})
        return {"answer": state["messages"][-1].content, "tools": tool_messages(state),
                "ids": tool_id_map(tools)}

    await lg_cluster.agent("lg-agent", handler)
    client = lg_cluster.client()
    final = await client.run_until_complete("lg-agent", {"prompt": "look around"})
    assert final.status is ExecutionStatus.COMPLETED, final.error
    out = final.output

    # the model was given every tool under an LLM-safe name, with the directory's schemas
    mcp_ids = {name: tid for name, tid in out["ids"].items() if name.startswith("lgmcp_")}
    assert len(mcp_ids) == len(lgmcp.tool_ids) and mcp_ids["lgmcp_shout"] == "lgmcp.shout"
    assert mcp_ids["lgmcp_weird_name_v2"] == "lgmcp.weird_name_v2"  # MCP name "weird name/v2"
    assert {n: t for n, t in out["ids"].items() if n not in mcp_ids} == {
        "lg_search": "lg.search", "lg_heavy": "lg.heavy", "lg_wipe": "lg.wipe", "lgcalc_add": "lgcalc.add"}
    schemas = {t["function"]["name"]: t["function"] for t in model.bound[0]}
    assert set(schemas) == set(out["ids"])
    assert schemas["lgmcp_shout"]["parameters"]["required"] == ["text"]
    assert schemas["lg_search"]["description"] == "Search the team's notes."
    assert schemas["lg_search"]["parameters"]["properties"]["query"]["description"] == "what to look for"
    assert schemas["lg_search"]["parameters"]["required"] == ["query"]
    assert schemas["lgcalc_add"]["parameters"]["properties"]["a"]["description"] == "first addend"

    # results (and the denial, as an error) flowed back into the model's messages
    tools = out["tools"]
    assert tools["lg_search"] == {"status": "success", "content": '{"query": "nats", "hits": ["nats-0", "nats-1"]}',
                                  "artifact": {"query": "nats", "hits": ["nats-0", "nats-1"]}}
    assert tools["lg_heavy"] == {"status": "success", "content": "ABC!", "artifact": "ABC!"}
    assert tools["lgcalc_add"] == {"status": "success", "content": "42", "artifact": 42}
    assert tools["lgmcp_shout"] == {"status": "success", "content": "HEY", "artifact": "HEY"}
    assert tools["lgmcp_fail"] == {"status": "error", "artifact": None,
                                   "content": "Error: lgmcp_fail failed: Error executing tool fail: refused: nope"}
    assert tools["lg_wipe"]["status"] == "error" and tools["lg_wipe"]["artifact"] is None
    assert tools["lg_wipe"]["content"] == ("Error: the call to lg_wipe was refused: "
                                           "policy denied: destructive (rule: no-wipe)")
    assert json.loads(out["answer"]) == {name: {"status": t["status"], "content": t["content"]}
                                         for name, t in tools.items()}
    assert WIPED == []

    # the kernel's log: one step per allowed call with the model's arguments, one denial
    events = await client.events_snapshot(final.id, limit=1000)
    created = {e.payload.tool_id: e.payload for e in events if e.type == "step.created"}
    assert sum(e.type == "step.created" for e in events) == len(created) == 5
    assert {tid: (p.arguments, p.remote) for tid, p in created.items()} == {
        "lg.search": ({"query": "nats", "limit": 2}, False),
        "lg.heavy": ({"data": "abc"}, True),
        "lgcalc.add": ({"a": 2, "b": 40}, True),
        "lgmcp.shout": ({"text": "hey"}, False),
        "lgmcp.fail": ({"reason": "nope"}, False),
    }
    completed = {e.step_id: e.payload.result for e in events if e.type == "step.completed"}
    steps = {e.payload.tool_id: e.step_id for e in events if e.type == "step.created"}
    assert {tid: completed.get(sid) for tid, sid in steps.items()} == {
        "lg.search": {"query": "nats", "hits": ["nats-0", "nats-1"]}, "lg.heavy": "ABC!", "lgcalc.add": 42,
        "lgmcp.shout": "HEY", "lgmcp.fail": None}
    failed = {e.step_id: e.payload.error for e in events if e.type == "step.failed"}
    assert failed == {steps["lgmcp.fail"]: "Error executing tool fail: refused: nope"}
    dispatched = {e.step_id: e.payload.runner_id for e in events if e.type == "step.dispatched"}
    assert dispatched == {steps["lg.heavy"]: "lg-runner", steps["lgcalc.add"]: "lg-runner"}
    denied = [e.payload for e in events if e.type == "intent.denied"]
    assert [(d.tool_id, d.arguments, d.rule_id) for d in denied] == [("lg.wipe", {"path": "/"}, "no-wipe")]
    assert events[-1].type == "execution.completed"


async def test_plain_callables_work_with_create_react_agent(lg_cluster: Cluster, lgmcp: MCPServer) -> None:
    """The seed's promise: the wrappers' signatures are enough for LangGraph to use them as
    they are. Without the adapter LangGraph names them by ``__name__``, and what a policy
    denial does depends on its ToolNode: recent versions re-raise it out of the graph
    (older ones turned every exception into an error message)."""
    from langgraph import prebuilt

    create_react_agent = getattr(prebuilt, "create_react_agent", None)
    if create_react_agent is None:
        pytest.skip("langgraph.prebuilt.create_react_agent was removed")
    WIPED.clear()
    happy = ScriptedChatModel(script=[
        calls(("search", {"query": "q", "limit": 1}), ("heavy", {"data": "xy"}), ("lgcalc_add", {"a": 1}),
              ("shout", {"text": "mcp"})),
        report,
    ])
    denied = ScriptedChatModel(script=[calls(("wipe", {"path": "/tmp"})), report])

    async def handler(input: dict) -> dict:
        graph = create_react_agent(happy, [search, heavy, *lgcalc.tools, lgmcp["lgmcp.shout"]])
        state = await graph.ainvoke({"messages": [HumanMessage("go")]})
        out: dict[str, Any] = {"tools": {n: (t["status"], t["artifact"], t["content"])
                                         for n, t in tool_messages(state).items()}}
        try:
            state = await create_react_agent(denied, [wipe]).ainvoke({"messages": [HumanMessage("wipe it")]})
            out["denial"] = tool_messages(state)["wipe"]["status"]
        except PolicyError as exc:
            out["denial"] = f"escaped: {exc.rule_id}"
        return out

    await lg_cluster.agent("lg-plain", handler)
    with pytest.warns(DeprecationWarning, match="create_react_agent"):
        final = await lg_cluster.client().run_until_complete("lg-plain", {})
    assert final.status is ExecutionStatus.COMPLETED, final.error
    assert final.output["tools"] == {"search": ["success", None, '{"query": "q", "hits": ["q-0"]}'],
                                     "heavy": ["success", None, "XY!"],
                                     "lgcalc_add": ["success", None, "1"], "shout": ["success", None, "MCP"]}
    assert final.output["denial"] in ("escaped: no-wipe", "error")
    assert WIPED == []
    assert [t["function"]["name"] for t in happy.bound[0]] == ["search", "heavy", "lgcalc_add", "shout"]
    events = await lg_cluster.client().events_snapshot(final.id, limit=1000)
    args = {e.payload.tool_id: e.payload.arguments for e in events if e.type == "step.created"}
    # LangChain validates plain callables' arguments with a model of the signature; recent
    # langchain-core versions send the defaults along
    assert args.pop("lgcalc.add") in ({"a": 1}, {"a": 1, "b": 0})
    assert args == {"lg.search": {"query": "q", "limit": 1}, "lg.heavy": {"data": "xy"}, "lgmcp.shout": {"text": "mcp"}}
    assert [e.payload.tool_id for e in events if e.type == "intent.denied"] == ["lg.wipe"]
