"""Example agent "researcher": one local tool, one remote tool, a direct ``invoke_tool``, and a
call that the example policy denies.

Run it (with ``rebuno dev`` and ``examples/runner.py`` up)::

    export REBUNO_URL=nats://127.0.0.1:4222      # what `rebuno dev` prints
    python examples/agent.py

Every tool call below goes through the kernel first: it checks the policy, records the
decision as an event, and only then does the body run (here, for local tools) or a runner get
the job (remote tools). Keep agent and runner in separate processes: the ``@tool`` registry is
process-wide and refuses two functions with the same id, so the remote stub ``compute.fib``
below cannot live next to the runner's real ``compute.fib``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rebuno import Agent, PolicyError, execution, tool


@tool("text.word_count")
def word_count(text: Annotated[str, Field(description="the text to analyse")]) -> dict:
    """Words, characters and the longest word of a text (runs inside this agent process)."""
    words = text.split()
    return {"words": len(words), "characters": len(text), "longest": max(words, key=len, default="")}


@tool("compute.fib", remote=True)
async def fib(n: int) -> dict:
    """The n-th Fibonacci number; the body lives on the "compute" runner (examples/runner.py)."""
    raise NotImplementedError  # a remote stub: never runs here, the kernel sends a job to a runner


async def research(text: str = "Rebuno routes every tool call through a kernel", n: int = 90,
                   primes_below: int = 50) -> dict:
    """The handler: the execution's input ``{"text": ..., "n": ..., "primes_below": ...}`` is
    bound to these parameters; the returned dict becomes the execution's output."""
    stats = await word_count(text=text)          # local @tool: policy check, then the body runs here
    fibonacci = await fib(n=n)                   # remote stub: policy check, then a job for a runner
    # By id, without a stub: a local @tool of this process runs here, anything else on a runner.
    again = await execution.invoke_tool("text.word_count", {"text": text.upper()})
    try:
        found = await execution.invoke_tool("compute.primes", {"n": primes_below})
        primes = {"allowed": True, "count": found["count"], "first": found["primes"][:10]}
    except PolicyError as exc:                   # denied: recorded as intent.denied, the tool never ran
        primes = {"allowed": False, "rule_id": exc.rule_id, "reason": exc.message}
    return {
        "execution_id": execution.id,
        "labels": execution.labels,
        "word_count": stats,
        "word_count_via_invoke_tool": again["words"],
        "fib": {"n": fibonacci["n"], "digits": fibonacci["digits"], "value": fibonacci["value"][:40]},
        "primes": primes,
    }


if __name__ == "__main__":
    # REBUNO_URL / REBUNO_API_KEY / REBUNO_PREFIX are read from the environment.
    Agent("researcher", max_concurrency=8).run(research)
