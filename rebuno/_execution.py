"""The current execution: ``ExecutionState`` and the module-level ``execution`` proxy.

The agent sets the current state (a ``ContextVar``) for each execution's handler
and everything it awaits; the runner sets one for each job so tool bodies can
read ``execution.id`` (``spec/sdk.md`` §6).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from schemas.records import HistoryEntry

__all__ = ["ExecutionState", "execution", "current_state", "set_state", "reset_state"]


class _Backend(Protocol):
    async def invoke_tool(self, tool_id: str, arguments: Any, *, idempotency_key: str = "",
                          local_fn: Any = None, force_remote: bool = False) -> Any: ...
    async def wait_signal(self, signal_type: str, timeout: float | None = None) -> Any: ...
    async def complete(self, output: Any = None) -> None: ...
    async def fail(self, error: str) -> None: ...


class ExecutionState:
    """What the handler and tool bodies can see of the current execution.

    Attributes:
        id: execution id.
        session_id: the agent instance's session ("" inside a runner job).
        agent_id: the agent id ("" inside a runner job).
        input: the creation input (None inside a runner job).
        labels: creation labels ({} inside a runner job).
        history: terminal steps from before this claim, oldest first ([] inside a runner job).
    """

    __slots__ = ("id", "session_id", "agent_id", "input", "labels", "history", "_backend")

    def __init__(self, id: str, *, session_id: str = "", agent_id: str = "", input: Any = None,
                 labels: dict[str, str] | None = None, history: list[HistoryEntry] | None = None,
                 backend: _Backend | None = None) -> None:
        self.id = id
        self.session_id = session_id
        self.agent_id = agent_id
        self.input = input
        self.labels = dict(labels or {})
        self.history = list(history or [])
        self._backend = backend

    def _require_backend(self, what: str) -> _Backend:
        if self._backend is None:
            raise RuntimeError(f"execution.{what}() is only available in an agent's handler, not inside a runner job")
        return self._backend

    async def invoke_tool(self, tool_id: str, arguments: dict[str, Any] | None = None, *,
                          idempotency_key: str = "") -> Any:
        """Invoke a tool through the kernel and return its result.

        Runs the tool in this process when the agent has it (a local ``@tool``), remotely on a
        runner otherwise (DESIGN §8).

        Args:
            tool_id: the tool.
            arguments: JSON-serialisable arguments (keyword arguments of the tool).
            idempotency_key: defaults to ``<execution_id>:<tool_id>:<n>`` for the n-th call of
                this tool in this execution, so a re-claimed handler gets recorded results back.

        Raises:
            PolicyError: policy denied the call (the body never ran).
            ToolError: the tool failed, timed out or was cancelled.
        """
        return await self._require_backend("invoke_tool").invoke_tool(tool_id, arguments,
                                                                      idempotency_key=idempotency_key)

    async def wait_signal(self, signal_type: str, timeout: float | None = None) -> Any:
        """Block the execution until a signal of ``signal_type`` arrives; return its payload.

        A signal sent before the wait is consumed at once (``spec/kernel.md`` §15).

        Args:
            timeout: seconds to wait; None waits until the signal or the execution ends.

        Raises:
            RebunoError: the wait timed out.
        """
        return await self._require_backend("wait_signal").wait_signal(signal_type, timeout)

    async def complete(self, output: Any = None) -> None:
        """Complete the execution now (usually unnecessary: return from the handler)."""
        await self._require_backend("complete").complete(output)

    async def fail(self, error: str) -> None:
        """Fail the execution now (usually unnecessary: raise from the handler)."""
        await self._require_backend("fail").fail(error)

    def __repr__(self) -> str:
        return f"ExecutionState(id={self.id!r}, agent_id={self.agent_id!r}, session_id={self.session_id!r})"


_current: ContextVar[ExecutionState | None] = ContextVar("rebuno_execution", default=None)


def current_state() -> ExecutionState | None:
    """The current execution state, or None outside an execution."""
    return _current.get()


def set_state(state: ExecutionState | None):
    return _current.set(state)


def reset_state(token) -> None:
    _current.reset(token)


class _ExecutionProxy:
    """Forwards attribute access to the current :class:`ExecutionState`.

    Raises:
        RuntimeError: on any attribute access outside an active execution.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        state = _current.get()
        if state is None:
            raise RuntimeError("execution.* accessed without an active execution context "
                               "(use it inside an agent handler, a @tool body, or a runner job)")
        return getattr(state, name)

    def __repr__(self) -> str:
        state = _current.get()
        return f"<execution proxy: {state!r}>" if state else "<execution proxy: no active execution>"


execution: Any = _ExecutionProxy()
"""The current execution (an :class:`ExecutionState`), valid inside a handler, tool or job."""
