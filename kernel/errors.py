"""The kernel's typed failure: becomes an ``Error`` reply (DESIGN §3.1)."""

from __future__ import annotations

from typing import Any

__all__ = ["KernelError"]


class KernelError(Exception):
    """A request that cannot be served; carried back to the caller as ``schemas.api.Error``.

    Attributes:
        code: one of ``schemas.api.ErrorCode``.
        message: a sentence for humans, naming the ids involved.
        details: optional machine-readable facts.
    """

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
