"""Route an execution's input to the handler (``spec/sdk.md`` §5)."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

import pydantic

__all__ = ["InputBinder"]


class InputBinder:
    """Inspects a handler once and binds ``claim.input`` to it in one of three ways:

    - **model**: one parameter annotated with a pydantic ``BaseModel`` → ``Model(**input)``;
    - **raw**: one parameter, unannotated, ``Any`` or exactly ``dict`` → the input unchanged;
    - **kwargs**: anything else → input keys become keyword arguments; parameters
      without a default are required.

    Raises:
        TypeError: ``handler`` is not callable.
    """

    def __init__(self, handler: Callable[..., Any]) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self.handler = handler
        sig = inspect.signature(handler)
        try:
            hints = typing.get_type_hints(handler)
        except Exception:  # noqa: BLE001
            hints = {}
        self.params = [p for p in sig.parameters.values()
                       if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        self.mode = "kwargs"
        self.model: type[pydantic.BaseModel] | None = None
        if len(self.params) == 1:
            p = self.params[0]
            ann = hints.get(p.name, p.annotation)
            if inspect.isclass(ann) and issubclass(ann, pydantic.BaseModel):
                self.mode, self.model = "model", ann
            elif ann in (inspect.Parameter.empty, Any, dict):
                self.mode = "raw"

    def bind(self, data: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments for the handler.

        Raises:
            ValueError: ``missing required input fields: a, b`` or ``input validation failed: ...``.
        """
        if self.mode == "raw":
            return (data,), {}
        if self.mode == "model":
            assert self.model is not None
            try:
                return (self.model(**data) if isinstance(data, dict) else self.model(),), {}
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"input validation failed: {exc}") from exc
        data = data if isinstance(data, dict) else {}
        missing = [p.name for p in self.params if p.default is inspect.Parameter.empty and p.name not in data]
        if missing:
            raise ValueError(f"missing required input fields: {', '.join(missing)}")
        names = {p.name for p in self.params}
        return (), {k: v for k, v in data.items() if k in names}
