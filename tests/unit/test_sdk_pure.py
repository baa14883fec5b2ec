"""Unit tests for the SDK pieces that need no broker: input binding, tool schemas and
wrappers, remote callables, the ``execution`` proxy, errors and their translation from
nats-py, settings, the public surface and constructor validation.

(No ``from __future__ import annotations`` here: handlers and tools are inspected with
their real annotations, as users write them.)"""

import asyncio
import contextlib
import inspect
import re
from typing import Annotated, Any, Iterator

import nats.errors
import nats.js.errors
import pydantic
import pytest
from pydantic import Field

import rebuno
from rebuno import _tools, errors, remote
from rebuno._binding import InputBinder
from rebuno._config import DEFAULT_URL, Settings
from rebuno._connection import translate
from rebuno._execution import ExecutionState, current_state, execution, reset_state, set_state
from rebuno._tools import get_tool, input_schema, make_remote_callable, registry, tool
from rebuno.mcp import MCPServer
from schemas import api
from schemas.ids import InvalidIdError
from schemas.records import ToolEntry


@pytest.fixture(autouse=True)
def _isolated_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tools registered and remote handles created here never leak into the process-wide state."""
    monkeypatch.setattr(_tools, "_REGISTRY", dict(_tools._REGISTRY))
    monkeypatch.setattr(remote, "_HANDLES", [])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("REBUNO_URL", "REBUNO_API_KEY", "REBUNO_PREFIX", "REBUNO_NATS_CREDS", "REBUNO_TLS_CA",
                "REBUNO_TLS_CERT", "REBUNO_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


class FakeBackend:
    """Records ``invoke_tool`` calls instead of talking to a kernel."""

    def __init__(self, result: Any = "backend-result") -> None:
        self.calls: list[tuple] = []
        self.result = result

    async def invoke_tool(self, tool_id: str, arguments: Any, *, idempotency_key: str = "", local_fn: Any = None,
                          force_remote: bool = False) -> Any:
        self.calls.append((tool_id, arguments, local_fn, force_remote))
        return self.result


@contextlib.contextmanager
def in_execution(backend: Any = None, **kw: Any) -> Iterator[ExecutionState]:
    state = ExecutionState("exec-1", backend=backend, **kw)
    token = set_state(state)
    try:
        yield state
    finally:
        reset_state(token)


# ------------------------------------------------------------------ InputBinder --
class Query(pydantic.BaseModel):
    q: str
    n: int = 1


class AllDefaults(pydantic.BaseModel):
    mode: str = "fast"


async def h_str(prompt: str) -> None: ...
async def h_unannotated(prompt) -> None: ...
async def h_any(data: Any) -> None: ...
async def h_dict(data: dict) -> None: ...
async def h_dict_generic(input: dict[str, Any]) -> None: ...
async def h_model(query: Query) -> None: ...
async def h_defaults_model(cfg: AllDefaults) -> None: ...
async def h_none() -> None: ...
def h_many(b: int, a: str, c: int = 3, *args: Any, d: str, e: int = 5, **kwargs: Any) -> None: ...
def h_self(self, prompt) -> None: ...
def h_varargs(x, *rest, **more) -> None: ...


@pytest.mark.parametrize("handler, mode", [
    (h_str, "kwargs"), (h_unannotated, "raw"), (h_any, "raw"), (h_dict, "raw"), (h_dict_generic, "kwargs"),
    (h_model, "model"), (h_none, "kwargs"), (h_many, "kwargs"), (h_self, "raw"), (h_varargs, "raw"),
])
def test_binder_classifies_handlers(handler, mode: str) -> None:
    assert InputBinder(handler).mode == mode


def test_binder_kwargs_for_one_annotated_parameter() -> None:
    b = InputBinder(h_str)
    assert b.bind({"prompt": "hi", "extra": 1}) == ((), {"prompt": "hi"})
    with pytest.raises(ValueError, match=r"^missing required input fields: prompt$"):
        b.bind({"other": 1})
    with pytest.raises(ValueError, match="missing required input fields: prompt"):
        b.bind("a bare string is not a mapping")


@pytest.mark.parametrize("data", [{"a": 1}, [1, 2], "text", 3, None])
def test_binder_raw_passes_the_input_unchanged(data: Any) -> None:
    for handler in (h_unannotated, h_any, h_dict, h_self, h_varargs):
        args, kwargs = InputBinder(handler).bind(data)
        assert args == (data,) and args[0] is data and kwargs == {}


def test_binder_dict_generic_is_kwargs_needing_a_key_named_input() -> None:
    b = InputBinder(h_dict_generic)
    with pytest.raises(ValueError, match="missing required input fields: input"):
        b.bind({"a": 1})
    assert b.bind({"input": {"a": 1}, "b": 2}) == ((), {"input": {"a": 1}})


def test_binder_missing_fields_are_listed_in_signature_order() -> None:
    b = InputBinder(h_many)
    with pytest.raises(ValueError, match=r"^missing required input fields: b, a, d$"):
        b.bind({})
    with pytest.raises(ValueError, match=r"^missing required input fields: a$"):
        b.bind({"b": 1, "d": "x"})


def test_binder_kwargs_drop_extra_keys_and_leave_defaults_to_python() -> None:
    b = InputBinder(h_many)
    assert b.bind({"b": 1, "a": "x", "d": "y", "zzz": 0, "args": 1, "kwargs": 2}) == (
        (), {"b": 1, "a": "x", "d": "y"})
    assert b.bind({"b": 1, "a": "x", "d": "y", "e": 9}) == ((), {"b": 1, "a": "x", "d": "y", "e": 9})


def test_binder_no_parameters() -> None:
    assert InputBinder(h_none).bind({"anything": 1}) == ((), {})
    assert InputBinder(h_none).bind(None) == ((), {})


def test_binder_model_validates_and_ignores_extra_keys() -> None:
    b = InputBinder(h_model)
    assert b.model is Query
    (q,), kwargs = b.bind({"q": "search", "n": "3", "extra": True})
    assert kwargs == {} and q == Query(q="search", n=3)
    with pytest.raises(ValueError, match=r"^input validation failed:") as info:
        b.bind({"n": 2})
    assert "q" in str(info.value)
    with pytest.raises(ValueError, match=r"^input validation failed:"):
        b.bind({"q": "x", "n": "not a number"})
    with pytest.raises(ValueError, match=r"^input validation failed:"):
        b.bind(["not", "a", "dict"])  # Model() without the required field


def test_binder_model_with_defaults_accepts_non_dict_input() -> None:
    assert InputBinder(h_defaults_model).bind("ignored") == ((AllDefaults(),), {})


def test_binder_bound_method() -> None:
    class Handler:
        async def process(self, prompt: str) -> None: ...

    b = InputBinder(Handler().process)
    assert b.mode == "kwargs"
    assert b.bind({"prompt": "p"}) == ((), {"prompt": "p"})


def test_binder_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="handler must be callable, got int"):
        InputBinder(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------ input_schema --
def test_input_schema_uses_field_descriptions_and_required() -> None:
    def search(query: Annotated[str, Field(description="What to search for")], limit: int = 10,
               exact: bool = False) -> list:
        """Search the web."""

    schema = input_schema(search)
    assert schema["type"] == "object"
    assert "title" not in schema
    assert schema["required"] == ["query"]
    assert schema["properties"]["query"]["description"] == "What to search for"
    assert schema["properties"]["query"]["type"] == "string"
    assert schema["properties"]["limit"] == {"default": 10, "title": "Limit", "type": "integer"}
    assert schema["properties"]["exact"]["default"] is False
    assert set(schema["properties"]) == {"query", "limit", "exact"}


def test_input_schema_without_parameters() -> None:
    def ping() -> str: ...
    def only_varargs(*args: Any, **kwargs: Any) -> None: ...

    assert input_schema(ping) == {"type": "object", "properties": {}}
    assert input_schema(only_varargs) == {"type": "object", "properties": {}}


def test_input_schema_skips_self_and_varargs_and_accepts_unannotated() -> None:
    def method(self, path, *rest: Any, mode: str = "r", **extra: Any) -> None: ...

    schema = input_schema(method)
    assert set(schema["properties"]) == {"path", "mode"}
    assert schema["required"] == ["path"]
    assert "type" not in schema["properties"]["path"]  # Any


def test_input_schema_nested_model_uses_defs() -> None:
    def run(query: Query) -> None: ...

    schema = input_schema(run)
    assert schema["properties"]["query"] == {"$ref": "#/$defs/Query"}
    assert "Query" in schema["$defs"]


def test_input_schema_skips_cls() -> None:
    def factory(cls, name: str) -> None: ...

    assert set(input_schema(factory)["properties"]) == {"name"}


# -------------------------------------------------------------------------- @tool --
def test_tool_bare_decorator() -> None:
    def unit_sdk_bare(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    wrapped = tool(unit_sdk_bare)
    assert wrapped.__rebuno_tool_id__ == "unit_sdk_bare"
    assert wrapped.__rebuno_remote__ is False
    assert wrapped.__name__ == "unit_sdk_bare"
    assert wrapped.__doc__ == "Add two numbers."
    assert wrapped.__wrapped__ is unit_sdk_bare
    assert inspect.signature(wrapped) == inspect.signature(unit_sdk_bare)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__input_schema__ == input_schema(unit_sdk_bare)
    spec = get_tool("unit_sdk_bare")
    assert spec is not None and spec.fn is unit_sdk_bare and spec.description == "Add two numbers."
    ts = spec.tool_schema()
    assert (ts.id, ts.description, ts.input_schema) == ("unit_sdk_bare", "Add two numbers.", spec.schema)


def test_tool_empty_call_form() -> None:
    @tool()
    def unit_sdk_empty_call(x: str) -> str:
        return x

    assert unit_sdk_empty_call.__rebuno_tool_id__ == "unit_sdk_empty_call"
    assert unit_sdk_empty_call.__rebuno_remote__ is False
    assert "unit_sdk_empty_call" in registry()


def test_tool_with_a_dotted_id() -> None:
    @tool("unit_sdk.compute.heavy")
    def heavy(n: int) -> int:
        """Heavy work."""
        return n

    assert heavy.__rebuno_tool_id__ == "unit_sdk.compute.heavy"
    assert heavy.__name__ == "heavy"
    assert get_tool("unit_sdk.compute.heavy").fn.__name__ == "heavy"
    assert get_tool("heavy") is None


def test_tool_remote_forms() -> None:
    @tool(remote=True)
    def unit_sdk_remote_stub(q: str) -> str: ...

    @tool("unit_sdk.remote_named", remote=True)
    def stub(q: str) -> str: ...

    assert (unit_sdk_remote_stub.__rebuno_tool_id__, unit_sdk_remote_stub.__rebuno_remote__) == (
        "unit_sdk_remote_stub", True)
    assert (stub.__rebuno_tool_id__, stub.__rebuno_remote__) == ("unit_sdk.remote_named", True)
    assert get_tool("unit_sdk.remote_named").remote is True


@pytest.mark.parametrize("bad_id", ["bad id", "a..b", ".a", "a/b"])
def test_tool_rejects_invalid_ids(bad_id: str) -> None:
    with pytest.raises(InvalidIdError):
        tool(bad_id)(lambda: None)
    assert bad_id not in registry()


def test_tool_id_collision_is_an_error() -> None:
    @tool("unit_sdk.collide")
    def first() -> None: ...

    def second() -> None: ...

    with pytest.raises(ValueError, match=r"tool id 'unit_sdk.collide' is already registered by .*first"):
        tool("unit_sdk.collide")(second)
    assert get_tool("unit_sdk.collide").fn.__name__ == "first"


def test_tool_re_registering_the_same_function_is_allowed() -> None:
    def unit_sdk_again() -> None: ...

    tool(unit_sdk_again)
    tool(unit_sdk_again)  # e.g. a module imported twice
    assert get_tool("unit_sdk_again").fn is unit_sdk_again


async def test_tool_called_outside_an_execution_raises() -> None:
    @tool("unit_sdk.outside")
    def outside(x: int) -> int:
        return x

    assert current_state() is None
    with pytest.raises(RuntimeError, match="called outside an active execution"):
        await outside(1)


async def test_tool_called_in_a_runner_job_state_raises() -> None:
    @tool("unit_sdk.nobackend")
    def nobackend() -> None: ...

    with in_execution(backend=None):
        with pytest.raises(RuntimeError, match="outside an active execution"):
            await nobackend()


async def test_tool_bad_arguments_raise_type_error_before_anything_is_sent() -> None:
    @tool("unit_sdk.strict_args")
    def strict_args(a: int, b: int = 2) -> int:
        return a + b

    backend = FakeBackend()
    with in_execution(backend):
        with pytest.raises(TypeError):
            await strict_args()
        with pytest.raises(TypeError):
            await strict_args(1, 2, 3)
        with pytest.raises(TypeError):
            await strict_args(1, c=3)
    assert backend.calls == []


async def test_local_tool_call_goes_through_the_backend_with_defaults_applied() -> None:
    def body(a: int, b: int = 2, *, c: str = "x") -> int:
        raise AssertionError("the body runs only through the backend")

    wrapped = tool("unit_sdk.local_call")(body)
    backend = FakeBackend(result=99)
    with in_execution(backend):
        assert await wrapped(1, c="y") == 99
    assert backend.calls == [("unit_sdk.local_call", {"a": 1, "b": 2, "c": "y"}, body, False)]


async def test_remote_tool_stub_never_passes_its_body() -> None:
    @tool("unit_sdk.remote_call", remote=True)
    def stub(q: str) -> str: ...

    backend = FakeBackend()
    with in_execution(backend):
        await stub(q="hello")
    assert backend.calls == [("unit_sdk.remote_call", {"q": "hello"}, None, True)]


# ------------------------------------------------------------ make_remote_callable --
SEARCH_SCHEMA = {
    "type": "object",
    "properties": {
        "limit": {"type": "integer", "default": 5},
        "query": {"type": "string", "description": "q"},
        "flag": {"type": "boolean"},
        "ratio": {"type": "number"},
        "tags": {"type": "array"},
        "opts": {"type": "object"},
        "anything": {},
        "not-an-identifier": {"type": "string"},
    },
    "required": ["query"],
}


def test_make_remote_callable_builds_a_keyword_only_signature() -> None:
    fn = make_remote_callable("web.search-v2", "Search the web.", SEARCH_SCHEMA)
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    assert [p.name for p in params] == ["query", "limit", "flag", "ratio", "tags", "opts", "anything"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert sig.parameters["query"].default is inspect.Parameter.empty
    assert sig.parameters["limit"].default == 5
    assert sig.parameters["flag"].default is None
    assert {p.name: p.annotation for p in params} == {
        "query": str, "limit": int, "flag": bool, "ratio": float, "tags": list, "opts": dict, "anything": Any}
    assert fn.__name__ == fn.__qualname__ == "web_search_v2"
    assert fn.__doc__ == "Search the web."
    assert (fn.__rebuno_tool_id__, fn.__rebuno_remote__) == ("web.search-v2", True)
    assert fn.__input_schema__ is SEARCH_SCHEMA
    assert inspect.iscoroutinefunction(fn)


def test_make_remote_callable_name_override_and_empty_schema() -> None:
    fn = make_remote_callable("x.ping", "", {}, name="ping")
    assert fn.__name__ == "ping"
    assert list(inspect.signature(fn).parameters) == []


async def test_remote_callable_outside_an_execution_raises() -> None:
    fn = make_remote_callable("web.search", "", SEARCH_SCHEMA)
    with pytest.raises(RuntimeError, match="remote tool 'web.search' called outside an active execution"):
        await fn(query="x")


async def test_remote_callable_sends_only_the_given_arguments() -> None:
    fn = make_remote_callable("web.search", "", SEARCH_SCHEMA)
    backend = FakeBackend(result=[1])
    with in_execution(backend):
        assert await fn(query="cats", flag=None) == [1]
        with pytest.raises(TypeError):
            await fn("positional")
        with pytest.raises(TypeError):
            await fn(query="x", unknown=1)
        with pytest.raises(TypeError):
            await fn(limit=1)  # query is required
    assert backend.calls == [("web.search", {"query": "cats", "flag": None}, None, True)]


def test_make_remote_callable_tolerates_keyword_property_names() -> None:
    schema = {"properties": {"from": {"type": "string"}, "to": {"type": "string"}}, "required": ["to"]}
    fn = make_remote_callable("mail.send", "Send mail.", schema)
    assert "to" in inspect.signature(fn).parameters


# ------------------------------------------------------------------- remote.Tools --
def test_remote_tools_requires_a_prefix() -> None:
    with pytest.raises(ValueError, match="non-empty prefix"):
        remote.Tools("")


def test_remote_tools_before_connect() -> None:
    handle = remote.Tools("compute")
    with pytest.raises(RuntimeError, match="has not been connected"):
        handle.tools
    with pytest.raises(RuntimeError):
        len(handle)
    with pytest.raises(RuntimeError):
        "compute.x" in handle
    with pytest.raises(RuntimeError):
        handle["compute.x"]
    assert repr(handle) == "<remote.Tools prefix='compute' unconnected>"
    assert remote._HANDLES == [handle]


async def test_remote_tools_connect_and_disconnect() -> None:
    from datetime import datetime, timezone

    class FakeRequester:
        def __init__(self) -> None:
            self.calls: list = []

        async def call(self, op: str, req: Any) -> Any:
            self.calls.append((op, req))
            now = datetime(2026, 3, 25, tzinfo=timezone.utc)
            return api.ToolsReply(tools=[
                ToolEntry(id="compute.add", registered_at=now, description="Add.",
                          input_schema={"properties": {"a": {"type": "integer"}}, "required": ["a"]}),
                ToolEntry(id="compute.mul", registered_at=now),
            ])

    handle = remote.Tools("compute")
    req = FakeRequester()
    await handle.connect(req)
    await handle.connect(req)  # once only
    assert req.calls == [("tools.list", api.ListTools(prefix="compute"))]
    assert len(handle) == 2 and "compute.add" in handle and "compute.sub" not in handle
    assert [f.__rebuno_tool_id__ for f in handle.tools] == ["compute.add", "compute.mul"]
    assert [f.__rebuno_tool_id__ for f in handle] == ["compute.add", "compute.mul"]
    assert handle["compute.add"].__doc__ == "Add."
    with pytest.raises(KeyError, match="compute.sub"):
        handle["compute.sub"]
    assert repr(handle) == "<remote.Tools prefix='compute' 2 tools>"
    handle.disconnect()
    with pytest.raises(RuntimeError):
        handle.tools


# -------------------------------------------------------------- execution proxy --
def test_execution_proxy_outside_an_execution() -> None:
    with pytest.raises(RuntimeError, match="execution.* accessed without an active execution context"):
        execution.id
    with pytest.raises(RuntimeError):
        execution.invoke_tool
    assert "no active execution" in repr(execution)
    assert rebuno.execution is execution


async def test_execution_proxy_forwards_to_the_current_state() -> None:
    backend = FakeBackend(result={"r": 1})
    with in_execution(backend, session_id="sess", agent_id="agent-a", input={"q": 1}, labels={"k": "v"}):
        assert (execution.id, execution.session_id, execution.agent_id, execution.input, execution.labels) == (
            "exec-1", "sess", "agent-a", {"q": 1}, {"k": "v"})
        assert execution.history == []
        assert await execution.invoke_tool("calc", {"a": 1}) == {"r": 1}
        assert "exec-1" in repr(execution)
    assert backend.calls == [("calc", {"a": 1}, None, False)]
    with pytest.raises(RuntimeError):
        execution.id


async def test_execution_methods_need_an_agent_backend() -> None:
    with in_execution(backend=None):
        assert execution.id == "exec-1" and execution.session_id == "" and execution.labels == {}
        with pytest.raises(RuntimeError, match=r"execution.invoke_tool\(\) is only available in an agent's handler"):
            await execution.invoke_tool("calc")
        with pytest.raises(RuntimeError, match="wait_signal"):
            await execution.wait_signal("go")


async def test_execution_state_is_per_task() -> None:
    seen: dict[str, str] = {}

    async def run(eid: str) -> None:
        token = set_state(ExecutionState(eid))
        try:
            await asyncio.sleep(0)
            seen[eid] = execution.id
        finally:
            reset_state(token)

    await asyncio.gather(run("e-a"), run("e-b"))
    assert seen == {"e-a": "e-a", "e-b": "e-b"}


# ------------------------------------------------------------------------ errors --
@pytest.mark.parametrize("code, cls", [
    ("VALIDATION_ERROR", errors.ValidationError),
    ("UNAUTHORIZED", errors.UnauthorizedError),
    ("NOT_FOUND", errors.NotFoundError),
    ("CONFLICT", errors.ConflictError),
    ("FORBIDDEN", errors.PolicyError),
    ("RATE_LIMITED", errors.RateLimitedError),
    ("SERVICE_UNAVAILABLE", errors.ServiceUnavailableError),
    ("INTERNAL_ERROR", errors.ServiceUnavailableError),
    ("SOMETHING_NEW", errors.APIError),
])
def test_error_from_reply_maps_codes_to_classes(code: str, cls: type) -> None:
    err = errors.error_from_reply(code, "it went wrong", {"execution_id": "e1"})
    assert type(err) is cls
    assert isinstance(err, errors.APIError) and isinstance(err, errors.RebunoError)
    assert err.code == code
    assert err.message == "it went wrong"
    assert err.details == {"execution_id": "e1"}
    assert str(err) == f"[{code}] it went wrong"


def test_error_details_default_to_empty() -> None:
    assert errors.error_from_reply("CONFLICT", "m").details == {}


def test_policy_error_rule_id_comes_from_details() -> None:
    err = errors.error_from_reply("FORBIDDEN", "policy denied: no (rule: r1)", {"rule_id": "r1", "tool_id": "t"})
    assert err.rule_id == "r1"
    assert errors.error_from_reply("FORBIDDEN", "m").rule_id == ""
    limited = errors.error_from_reply("RATE_LIMITED", "rate limit exceeded", {"rule_id": "r2"})
    assert isinstance(limited, errors.PolicyError) and limited.rule_id == "r2" and limited.code == "RATE_LIMITED"
    assert issubclass(errors.RateLimitedError, errors.PolicyError)
    assert errors.PolicyError("m").code == "FORBIDDEN"


def test_error_tree() -> None:
    assert issubclass(errors.RequestTimeoutError, errors.NetworkError)
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
    assert issubclass(errors.ClientClosedError, errors.RebunoError)
    assert not issubclass(errors.ClientClosedError, errors.NetworkError)
    assert issubclass(errors.ToolError, errors.RebunoError) and not issubclass(errors.ToolError, errors.APIError)
    e = errors.ToolError("boom", tool_id="t", step_id="s", retryable=True)
    assert (e.message, e.tool_id, e.step_id, e.retryable, e.details, str(e)) == ("boom", "t", "s", True, {}, "boom")


@pytest.mark.parametrize("exc, cls, code", [
    (nats.errors.TimeoutError(), errors.RequestTimeoutError, None),
    (asyncio.TimeoutError(), errors.RequestTimeoutError, None),
    (nats.errors.NoRespondersError(), errors.ServiceUnavailableError, "SERVICE_UNAVAILABLE"),
    (nats.errors.MaxPayloadError(), errors.ValidationError, "VALIDATION_ERROR"),
    (nats.errors.ConnectionClosedError(), errors.ClientClosedError, None),
    (nats.errors.ConnectionDrainingError(), errors.ClientClosedError, None),
    (nats.errors.NoServersError(), errors.NetworkError, None),
    (nats.errors.UnexpectedEOF(), errors.NetworkError, None),
    (nats.errors.StaleConnectionError(), errors.NetworkError, None),
    (OSError("network is unreachable"), errors.NetworkError, None),
    (ConnectionRefusedError(), errors.NetworkError, None),
    (nats.js.errors.ServiceUnavailableError(code=503, description="no jetstream"), errors.ServiceUnavailableError,
     "SERVICE_UNAVAILABLE"),
    (nats.errors.Error("something odd"), errors.NetworkError, None),
    (Exception("surprise"), errors.RebunoError, None),
    (ValueError("surprise"), errors.RebunoError, None),
], ids=lambda v: type(v).__module__.split(".")[0] + "." + type(v).__name__ if isinstance(v, BaseException) else None)
def test_translate_maps_nats_errors(exc: BaseException, cls: type, code: str | None) -> None:
    err = translate(exc, subject="rebuno.api.health", timeout=2.5)
    assert type(err) is cls
    assert err.details.get("subject") == "rebuno.api.health"
    if code is not None:
        assert err.code == code
    if cls is errors.RequestTimeoutError:
        assert err.details["timeout"] == 2.5
        assert "rebuno.api.health" in err.message and "2.5" in err.message


def test_translate_passes_rebuno_errors_through() -> None:
    err = errors.ConflictError("m", "CONFLICT")
    assert translate(err) is err


def test_translate_without_subject_has_no_details() -> None:
    assert translate(OSError("x")).details == {}


# ---------------------------------------------------------------------- settings --
def test_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings.resolve()
    assert (s.url, s.api_key, s.prefix, s.creds_file, s.tls_ca) == (DEFAULT_URL, "", "rebuno", "", "")
    assert DEFAULT_URL == "nats://127.0.0.1:4222"


def test_settings_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REBUNO_URL", "nats://env-host:4222")
    clean_env.setenv("REBUNO_API_KEY", "env-token")
    clean_env.setenv("REBUNO_PREFIX", "envp")
    clean_env.setenv("REBUNO_NATS_CREDS", "/creds")
    clean_env.setenv("REBUNO_TLS_CA", "/ca.pem")
    s = Settings.resolve()
    assert (s.url, s.api_key, s.prefix, s.creds_file, s.tls_ca) == (
        "nats://env-host:4222", "env-token", "envp", "/creds", "/ca.pem")


def test_settings_explicit_arguments_win_over_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REBUNO_URL", "nats://env-host:4222")
    clean_env.setenv("REBUNO_API_KEY", "env-token")
    clean_env.setenv("REBUNO_PREFIX", "envp")
    s = Settings.resolve("nats://arg-host:1234", "arg-token", "argp")
    assert (s.url, s.api_key, s.prefix) == ("nats://arg-host:1234", "arg-token", "argp")


def test_settings_empty_api_key_disables_the_env_key(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REBUNO_API_KEY", "env-token")
    assert Settings.resolve(api_key="").api_key == ""
    assert Settings.resolve(api_key=None).api_key == "env-token"


def test_settings_url_is_trimmed(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings.resolve(" nats://h:4222/ ").url == "nats://h:4222"


@pytest.mark.parametrize("url", ["http://localhost:8080", "https://kernel.example.com"])
def test_settings_refuse_http_urls(clean_env: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ValueError, match="must be a nats:// URL"):
        Settings.resolve(url)
    clean_env.setenv("REBUNO_URL", url)
    with pytest.raises(ValueError, match="must be a nats:// URL"):
        Settings.resolve()


# ---------------------------------------------------------------- public surface --
EXPECTED_PUBLIC_NAMES = [
    "Agent", "Client", "Runner", "tool", "MCPServer", "remote", "execution", "ExecutionState", "types",
    "RebunoError", "APIError", "PolicyError", "RateLimitedError", "ToolError", "StepTimeoutError", "NetworkError", "ConflictError",
    "NotFoundError", "UnauthorizedError", "ValidationError", "__version__",
]


def test_public_surface_is_pinned() -> None:
    assert rebuno.__all__ == EXPECTED_PUBLIC_NAMES, (
        "the public surface of `rebuno` changed: update EXPECTED_PUBLIC_NAMES deliberately (and the docs)")
    for name in rebuno.__all__:
        assert hasattr(rebuno, name), name
    assert rebuno.PolicyError is errors.PolicyError and rebuno.tool is tool
    assert re.fullmatch(r"\d+\.\d+\.\d+", rebuno.__version__)


# ------------------------------------------------------------- Agent / Runner ctor --
def test_agent_and_runner_require_an_id(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="agent_id must not be empty"):
        rebuno.Agent("")
    with pytest.raises(ValueError, match="runner_id must not be empty"):
        rebuno.Runner("")


@pytest.mark.parametrize("bad", ["bad id", "a.b", "x" * 129])
def test_agent_and_runner_reject_invalid_ids(clean_env: pytest.MonkeyPatch, bad: str) -> None:
    with pytest.raises(InvalidIdError, match="invalid agent_id"):
        rebuno.Agent(bad)
    with pytest.raises(InvalidIdError, match="invalid runner_id"):
        rebuno.Runner(bad)
    assert issubclass(InvalidIdError, ValueError)


def test_consumer_id_format(clean_env: pytest.MonkeyPatch) -> None:
    a1, a2 = rebuno.Agent("researcher"), rebuno.Agent("researcher")
    assert re.fullmatch(r"researcher-[0-9a-f]{8}", a1.consumer_id)
    assert a1.consumer_id != a2.consumer_id
    assert rebuno.Agent("researcher", consumer_id="mine").consumer_id == "mine"
    r = rebuno.Runner("fs-runner")
    assert re.fullmatch(r"fs-runner-[0-9a-f]{8}", r.consumer_id)


def test_agent_settings(clean_env: pytest.MonkeyPatch) -> None:
    a = rebuno.Agent("researcher", kernel_url="nats://k:4222", prefix="staging")
    assert (a.agent_id, a.settings.url, a.names.prefix) == ("researcher", "nats://k:4222", "staging")
    with pytest.raises(ValueError, match="nats://"):
        rebuno.Agent("researcher", kernel_url="http://localhost:8080")
    with pytest.raises(ValueError, match="invalid prefix"):
        rebuno.Agent("researcher", prefix="bad.prefix")


# --------------------------------------------------------------------- MCPServer --
def test_mcp_server_needs_exactly_one_transport() -> None:
    with pytest.raises(ValueError, match="exactly one of command= .* or url="):
        MCPServer("fs")
    with pytest.raises(ValueError, match="exactly one"):
        MCPServer("fs", command="npx", url="http://localhost:3000/mcp")
    with pytest.raises(ValueError, match="non-empty name"):
        MCPServer("", command="npx")


def test_mcp_server_description() -> None:
    stdio = MCPServer("filesystem", command="npx", args=["-y", "server-fs", "/tmp"], env={"A": "1"})
    assert (stdio.transport, stdio.prefix, stdio.command, stdio.args, stdio.env) == (
        "stdio", "filesystem", "npx", ["-y", "server-fs", "/tmp"], {"A": "1"})
    http = MCPServer("github", url="https://mcp.example.com/mcp", headers={"Authorization": "x"}, prefix="gh")
    assert (http.transport, http.prefix, http.url, http.headers) == (
        "streamable-http", "gh", "https://mcp.example.com/mcp", {"Authorization": "x"})
    assert repr(http) == "<MCPServer 'github' streamable-http 'https://mcp.example.com/mcp'>"
    with pytest.raises(RuntimeError, match="not connected"):
        stdio.tools


def test_redact_url_and_split_credentials() -> None:
    from rebuno._config import redact_url, split_credentials

    assert redact_url("nats://user:secret@h1:4222,nats://h2:4223") == "nats://***@h1:4222,nats://h2:4223"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    servers, user, password, token = split_credentials("nats://u:p@h1:4222, nats://h2:4223")
    assert servers == ["nats://h1:4222", "nats://h2:4223"] and (user, password, token) == ("u", "p", "")
    assert split_credentials("nats://tok@h1:4222")[1:] == ("", "", "tok")
