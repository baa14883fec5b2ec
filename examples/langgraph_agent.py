"""Example agent "lg-researcher": a LangGraph agent whose tool calls all go through the kernel.

Needs the ``langgraph`` extra (``pip install -e '.[langgraph]'``). With ``rebuno dev`` and
``examples/runner.py`` up (the runner first: the agent discovers its tools at start)::

    python examples/langgraph_agent.py                                  # terminal 3: the agent
    python examples/langgraph_agent.py ask "How many primes are below 100?"   # terminal 4

The graph is LangChain's ``create_agent`` (a LangGraph ReAct loop). Its tools are a local
``@tool`` (``text.stats``) and the runner's ``compute.*`` tools discovered with
``remote.Tools("compute")``, converted by ``to_langchain_tools``: the model sees them as
``text_stats``, ``compute_fib`` and ``compute_primes``, every call is an intent the kernel
allows or denies, and a denial comes back to the model as an error message instead of
crashing the graph.

The model: set ``REBUNO_EXAMPLE_MODEL`` to a LangChain model name such as
``openai:gpt-4o-mini`` (install the provider's package, e.g. ``langchain-openai``, and set
its API key). Without it a scripted stand-in is used: it does not read the question, it
always asks for the same three tool calls and then lists what came back. That is enough
to watch the kernel at work offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from rebuno import Agent, Client, remote, tool
from rebuno.integrations.langchain import to_langchain_tools

AGENT_ID = "lg-researcher"
compute = remote.Tools("compute")  # compute.fib and compute.primes, served by examples/runner.py


@tool("text.stats")
def text_stats(text: str) -> dict:
    """Count the words and characters of a text (runs inside this agent process)."""
    return {"words": len(text.split()), "characters": len(text)}


class ScriptedModel(BaseChatModel):
    """Stands in for an LLM when REBUNO_EXAMPLE_MODEL is not set (see the module docstring)."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        return self  # the script already knows the tool names

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if results:
            reply = AIMessage("\n".join(f"{m.name} ({m.status}): {m.content}" for m in results))
        else:
            question = str(messages[-1].content)
            reply = AIMessage("", tool_calls=[
                {"name": "text_stats", "args": {"text": question}, "id": "call-1", "type": "tool_call"},
                {"name": "compute_fib", "args": {"n": 30}, "id": "call-2", "type": "tool_call"},
                {"name": "compute_primes", "args": {"n": 100}, "id": "call-3", "type": "tool_call"},
            ])
        return ChatResult(generations=[ChatGeneration(message=reply)])


async def research(question: str = "How many primes are below 100, and what is fib(30)?") -> dict:
    """The handler: builds the graph for this execution and runs it to the final answer."""
    model: BaseChatModel | str = os.environ.get("REBUNO_EXAMPLE_MODEL") or ScriptedModel()
    graph = create_agent(model, to_langchain_tools([text_stats, compute]),
                         system_prompt="Answer with the help of the tools. Say so when a tool call is refused.")
    state = await graph.ainvoke({"messages": [HumanMessage(question)]})
    return {
        "answer": state["messages"][-1].content,
        "tool_results": [{"tool": m.name, "status": m.status} for m in state["messages"] if isinstance(m, ToolMessage)],
    }


async def ask(question: str) -> None:
    """Run the agent once through the kernel and print its events and answer."""
    async with Client() as client:
        final = await client.run_until_complete(
            AGENT_ID, {"question": question},
            on_event=lambda e: print(f"  [{e.sequence:2}] {e.type:<22} {e.step_id[-8:]:<8} {e.tool_id}"))
        print(f"\nexecution {final.id} {final.status}")
        print(json.dumps(final.output, indent=2) if final.output is not None else final.error)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("agent", help="run the agent (the default)")
    sub.add_parser("ask", help="create one execution and print it").add_argument("question")
    args = parser.parse_args()
    if args.command == "ask":
        asyncio.run(ask(args.question))
    else:
        Agent(AGENT_ID).run(research)  # REBUNO_URL / REBUNO_API_KEY from the environment
