"""Run a coroutine on uvloop when it is installed (DESIGN §9: 1.2–1.4× lower latency), else on
the default asyncio loop. ``REBUNO_UVLOOP=0`` forces the default loop."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine, TypeVar

__all__ = ["run", "using_uvloop"]

T = TypeVar("T")


def using_uvloop() -> bool:
    """True when :func:`run` will use uvloop."""
    if os.environ.get("REBUNO_UVLOOP", "1").lower() in ("0", "false", "no"):
        return False
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, on uvloop when available."""
    if using_uvloop():
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
