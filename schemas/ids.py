"""Identifiers: validation of IDs that travel as subject tokens, and UUIDv7 generation.

DESIGN §3: IDs that appear as subject tokens (``agent_id``, ``runner_id``,
execution and step IDs) are restricted to ``[A-Za-z0-9_-]{1,128}``. Tool IDs
may contain dots (``compute.heavy``) and never appear as a subject token; they
are also used as key-value keys, so they are restricted to dot-separated
segments of ``[A-Za-z0-9_-]`` (at most 256 characters).
"""

from __future__ import annotations

import os
import re
import time
import uuid

__all__ = ["InvalidIdError", "new_id", "validate_token_id", "validate_tool_id", "is_token_id"]

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOOL_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
TOOL_ID_MAX = 256


class InvalidIdError(ValueError):
    """An identifier does not have the required form.

    Attributes:
        kind: what the identifier names (``"agent_id"``, ``"tool_id"``, ...).
        value: the rejected value (truncated to 200 characters).
    """

    def __init__(self, kind: str, value: object, rule: str) -> None:
        self.kind = kind
        self.value = str(value)[:200]
        super().__init__(f"invalid {kind} {self.value!r}: {rule}")


def is_token_id(value: object) -> bool:
    """Return True when ``value`` is a str usable as a subject token (DESIGN §3)."""
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None


def validate_token_id(kind: str, value: object) -> str:
    """Check an ID that appears as a subject token and return it.

    Raises:
        InvalidIdError: when ``value`` is not 1 to 128 characters of ``[A-Za-z0-9_-]``.
    """
    if not is_token_id(value):
        raise InvalidIdError(kind, value, "must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value  # type: ignore[return-value]


def validate_tool_id(value: object) -> str:
    """Check a tool ID and return it.

    Raises:
        InvalidIdError: when ``value`` is not 1 to 256 characters of dot-separated
            segments of ``[A-Za-z0-9_-]``.
    """
    if not isinstance(value, str) or len(value) > TOOL_ID_MAX or _TOOL_RE.fullmatch(value) is None:
        raise InvalidIdError(
            "tool_id", value, "must be dot-separated segments of A-Z, a-z, 0-9, '_' or '-' (at most 256)"
        )
    return value


def new_id() -> str:
    """Return a new UUID version 7 (time-ordered) in canonical lowercase hyphenated form."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))
