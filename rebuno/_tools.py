"""``@tool``: the global tool registry, call wrappers and input schemas (``spec/sdk.md`` §7, §10).

A ``@tool`` function called inside an agent's handler submits an intent to the
kernel first and runs its body only if policy allows (local tools), or waits
for a runner (``remote=True`` stubs). A runner runs the registered bodies
directly. Wrappers keep ``__name__``, ``__doc__`` and a synthesized
``inspect.Signature`` so frameworks that introspect callables work.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import keyword
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar, overload

import msgspec
import pydantic

from schemas.ids import validate_tool_id
from schemas.records import ToolSchema

from ._execution import current_state
from .errors import ToolError

__all__ = ["jsonable", "tool", "ToolSpec", "registry", "get_tool", "input_schema", "input_model",
           "make_remote_callable", "signature_from_schema", "mark_tool", "call_body", "run_tool"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A registered tool: its id, the original function, and whether its body lives on a runner."""

    id: str
    fn: Callable[..., Any]
    remote: bool
    description: str
    schema: dict[str, Any]
    model: type[pydantic.BaseModel] | None = None
    """Validates arguments before the body runs (None: no parameters)."""

    def tool_schema(self) -> ToolSchema:
        return ToolSchema(id=self.id, description=self.description, input_schema=self.schema)


_REGISTRY: dict[str, ToolSpec] = {}


def registry() -> dict[str, ToolSpec]:
    """Every ``@tool`` of the process by tool id (a copy)."""
    return dict(_REGISTRY)


def get_tool(tool_id: str) -> ToolSpec | None:
    return _REGISTRY.get(tool_id)


def input_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """JSON Schema of a function's keyword arguments, derived with pydantic (``spec/sdk.md`` §10.1).

    ``Annotated[X, Field(description=...)]`` becomes the property's ``description``;
    parameters without a default are required; ``*args``/``**kwargs`` are ignored.
    """
    model = input_model(fn)
    if model is None:
        return {"type": "object", "properties": {}}
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


def input_model(fn: Callable[..., Any]) -> type[pydantic.BaseModel] | None:
    """A pydantic model of a function's keyword arguments (None when it takes none)."""
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in ("self", "cls"):
            continue
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        fields[name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    if not fields:
        return None
    hints = {}
    try:
        hints = __import__("typing").get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable forward references: keep raw annotations
        pass
    for name in fields:
        if name in hints:
            fields[name] = (hints[name], fields[name][1])
    model_name = "".join(c if c.isalnum() else "_" for c in fn.__name__) + "Input"
    return pydantic.create_model(model_name, **fields)  # type: ignore[call-overload]


def jsonable(value: Any) -> Any:
    """A tool or handler result as JSON data (pydantic models dumped, msgspec builtins).

    Raises:
        TypeError: the value cannot be represented as JSON.
    """
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    try:
        return msgspec.to_builtins(value)
    except TypeError as exc:
        raise TypeError(f"result of type {type(value).__name__} is not JSON-serialisable") from exc


async def call_body(fn: Callable[..., Any], arguments: Any) -> Any:
    """Run a tool body with ``**arguments`` (dict arguments only); sync bodies run in a worker
    thread (with the current execution context) so they never block the event loop."""
    kwargs = arguments if isinstance(arguments, dict) else {}
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    result = await asyncio.to_thread(fn, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_tool(spec: ToolSpec, arguments: Any) -> Any:
    """Validate ``arguments`` against the tool's signature (types, ``Field`` bounds), then run
    the body with the validated values.

    Raises:
        ToolError: invalid arguments (not retryable); the body never ran.
    """
    if spec.model is not None:
        if arguments is not None and not isinstance(arguments, dict):
            raise ToolError(f"arguments of tool {spec.id} must be an object, got {type(arguments).__name__}",
                            spec.id)
        try:
            validated = spec.model.model_validate(arguments or {})
        except pydantic.ValidationError as exc:
            raise ToolError(f"invalid arguments for tool {spec.id}: {exc}", spec.id) from None
        arguments = {name: getattr(validated, name) for name in type(validated).model_fields}
    return await call_body(spec.fn, arguments)


def _make_wrapper(spec: ToolSpec) -> Callable[..., Any]:
    sig = inspect.signature(spec.fn)

    @functools.wraps(spec.fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = current_state()
        if state is None or state._backend is None:
            raise RuntimeError(f"@tool {spec.id!r} called outside an active execution: call it from an agent "
                               "handler running under agent.run()")
        bound = sig.bind(*args, **kwargs)  # TypeError for bad arguments, before anything is sent
        bound.apply_defaults()
        return await state._backend.invoke_tool(spec.id, dict(bound.arguments),
                                                local_fn=None if spec.remote else spec.fn,
                                                force_remote=spec.remote)

    wrapper.__signature__ = sig  # type: ignore[attr-defined]
    return mark_tool(wrapper, spec)


def mark_tool(fn: Callable[..., Any], spec: ToolSpec) -> Callable[..., Any]:
    """Give a tool callable the attributes every rebuno tool callable carries, whatever its
    source (``@tool`` wrapper, ``remote.Tools`` callable, ``MCPServer`` tool), and return it:

    ``__rebuno_tool__`` (the :class:`ToolSpec`), ``__rebuno_tool_id__``, ``__rebuno_remote__``
    and ``__input_schema__`` (the JSON Schema of its arguments). Framework adapters should read
    these rather than guess from the callable's name.

    A callable with a synthesized ``__signature__`` (``remote.Tools``, ``MCPServer``) also gets
    matching ``__annotations__``: ``typing.get_type_hints()`` reads those, not the signature,
    and frameworks such as LangChain build their argument models with it.
    """
    sig = fn.__dict__.get("__signature__")
    if isinstance(sig, inspect.Signature) and not hasattr(fn, "__wrapped__"):
        fn.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()
                              if p.annotation is not inspect.Parameter.empty} | {"return": Any}
    fn.__rebuno_tool__ = spec  # type: ignore[attr-defined]
    fn.__rebuno_tool_id__ = spec.id  # type: ignore[attr-defined]
    fn.__rebuno_remote__ = spec.remote  # type: ignore[attr-defined]
    fn.__input_schema__ = spec.schema  # type: ignore[attr-defined]
    return fn


def _register(fn: Callable[..., Any], tool_id: str | None, remote: bool) -> Callable[..., Any]:
    tid = validate_tool_id(tool_id or fn.__name__)
    existing = _REGISTRY.get(tid)
    if existing is not None and (existing.fn.__module__, existing.fn.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(f"tool id {tid!r} is already registered by {existing.fn.__module__}.{existing.fn.__qualname__}; "
                         f"pick another id for {fn.__module__}.{fn.__qualname__}")
    model = input_model(fn)
    schema = {"type": "object", "properties": {}}
    if model is not None:
        schema = model.model_json_schema()
        schema.pop("title", None)
    spec = ToolSpec(id=tid, fn=fn, remote=remote, description=inspect.getdoc(fn) or "", schema=schema, model=model)
    _REGISTRY[tid] = spec
    return _make_wrapper(spec)


@overload
def tool(fn_or_id: F, /) -> F: ...
@overload
def tool(fn_or_id: str | None = None, /, *, remote: bool = False) -> Callable[[F], F]: ...


def tool(fn_or_id: Any = None, /, *, remote: bool = False) -> Any:
    """Register a function as a tool in the process-wide registry.

    Forms: ``@tool``, ``@tool()``, ``@tool("custom.id")``, ``@tool(remote=True)``,
    ``@tool("custom.id", remote=True)``. The id defaults to the function's name and may
    contain dots (``compute.heavy``).

    In an agent, calling the returned async wrapper submits an ``invoke_tool`` intent;
    local tools then run the body and report its result, ``remote=True`` stubs wait for a
    runner. A runner serves every registered tool it advertises.

    Raises:
        ValueError: the id is invalid or already taken by another function.
    """
    if callable(fn_or_id):
        return _register(fn_or_id, None, remote)

    def deco(fn: F) -> F:
        return _register(fn, fn_or_id, remote)  # type: ignore[return-value]

    return deco


_JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


def signature_from_schema(schema: dict[str, Any]) -> inspect.Signature:
    """A keyword-only ``inspect.Signature`` for a JSON Schema object's properties.

    Required properties have no default; others default to the property's ``default`` or
    None. Annotations follow the JSON type (``string`` -> ``str``, ``integer`` -> ``int``,
    ``number`` -> ``float``, ``boolean`` -> ``bool``, ``array`` -> ``list``, ``object`` ->
    ``dict``; anything else ``Any``). Property names that are not Python identifiers (or are
    keywords) get no parameter; required ones come first.
    """
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    params = []
    for pname, prop in props.items():
        if not pname.isidentifier() or keyword.iskeyword(pname):
            continue  # not expressible as a Python parameter; callers can still pass it via invoke_tool
        ann = _JSON_TYPES.get(str(prop.get("type")), Any) if isinstance(prop, dict) else Any
        default = inspect.Parameter.empty if pname in required else (prop.get("default") if isinstance(prop, dict) else None)
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
    return inspect.Signature(sorted(params, key=lambda p: p.default is not inspect.Parameter.empty))


def make_remote_callable(tool_id: str, description: str, schema: dict[str, Any],
                         name: str | None = None) -> Callable[..., Any]:
    """An async callable for a tool known only by its directory schema (``remote.Tools``):
    keyword-only parameters from the schema's properties; calling it submits a remote intent."""
    sig = signature_from_schema(schema)

    async def remote_tool(**kwargs: Any) -> Any:
        state = current_state()
        if state is None or state._backend is None:
            raise RuntimeError(f"remote tool {tool_id!r} called outside an active execution")
        bound = sig.bind(**kwargs)
        arguments = {k: v for k, v in bound.arguments.items()}
        return await state._backend.invoke_tool(tool_id, arguments, force_remote=True)

    remote_tool.__name__ = name or "".join(c if c.isalnum() or c == "_" else "_" for c in tool_id)
    remote_tool.__qualname__ = remote_tool.__name__
    remote_tool.__doc__ = description
    remote_tool.__signature__ = sig  # type: ignore[attr-defined]
    return mark_tool(remote_tool, ToolSpec(id=tool_id, fn=remote_tool, remote=True, description=description,
                                           schema=schema))


class ToolCollection:
    """The read-only interface shared by ``remote.Tools`` and ``MCPServer``: iterate the tool
    callables, ``len()``, ``tool_id in``, and ``collection["tool.id"]``. Subclasses provide
    ``_require()`` (tool id → callable, sorted; raises RuntimeError when not connected) and
    ``_label()`` (how error messages name the collection)."""

    def _require(self) -> dict[str, Callable[..., Any]]:
        raise NotImplementedError

    def _label(self) -> str:
        raise NotImplementedError

    @property
    def tools(self) -> list[Callable[..., Any]]:
        """The tool callables, in id order (splat them into a framework's tool list).

        Raises:
            RuntimeError: the collection is not connected yet (outside ``agent.run()``).
        """
        return list(self._require().values())

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self._require())

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._require()

    def __getitem__(self, tool_id: str) -> Callable[..., Any]:
        """The callable of one tool by its full id.

        Raises:
            KeyError: no such tool (the message lists the available ids).
            RuntimeError: as :attr:`tools`.
        """
        tools = self._require()
        if tool_id not in tools:
            raise KeyError(f"{self._label()} has no tool {tool_id!r}; available: {sorted(tools)}")
        return tools[tool_id]
