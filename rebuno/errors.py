"""The SDK's errors, one tree split by who has to act.

::

    RebunoError                      root of everything the SDK raises on purpose
    ├── NetworkError                 the broker could not be reached or did not answer
    │   └── RequestTimeoutError      no reply within the timeout (also a TimeoutError)
    ├── ClientClosedError            the Client was closed by you
    ├── APIError                     the kernel answered with an Error (code, message, details)
    │   ├── ValidationError          VALIDATION_ERROR: the request was malformed; nothing changed
    │   ├── UnauthorizedError        UNAUTHORIZED: bad credentials, or a fenced/unknown session
    │   ├── NotFoundError            NOT_FOUND: unknown execution, step or tool
    │   ├── ConflictError            CONFLICT: the execution/step is not in a state that allows it
    │   ├── ServiceUnavailableError  SERVICE_UNAVAILABLE / INTERNAL_ERROR: retry later
    │   └── PolicyError              FORBIDDEN: policy denied the intent (``rule_id``)
    │       └── RateLimitedError     RATE_LIMITED: a policy rate limit refused the call
    └── ToolError                    a tool body failed (``tool_id``, ``step_id``, ``retryable``)
        └── StepTimeoutError         the call passed its step deadline (``step.timed_out``)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RebunoError", "NetworkError", "RequestTimeoutError", "ClientClosedError", "APIError", "ValidationError",
    "UnauthorizedError", "NotFoundError", "ConflictError", "ServiceUnavailableError", "PolicyError",
    "RateLimitedError", "ToolError", "StepTimeoutError", "error_from_reply",
]


class RebunoError(Exception):
    """Root of the SDK's errors. ``details`` holds machine-readable facts (may be empty)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NetworkError(RebunoError):
    """The broker could not be reached, or the connection broke."""


class RequestTimeoutError(NetworkError, TimeoutError):
    """No reply arrived in time (``subject`` and ``timeout`` seconds in ``details``)."""


class ClientClosedError(RebunoError):
    """A request was made on a Client (or Agent/Runner) that was already closed."""


class APIError(RebunoError):
    """The kernel refused a request.

    Attributes:
        code: the wire error code, e.g. ``"CONFLICT"``.
    """

    def __init__(self, message: str, code: str = "INTERNAL_ERROR", details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ValidationError(APIError):
    """The request was malformed or out of bounds; nothing changed."""


class UnauthorizedError(APIError):
    """Credentials were refused, or the session is unknown or fenced (another instance took over)."""


class NotFoundError(APIError):
    """The execution, step or tool does not exist."""


class ConflictError(APIError):
    """The execution or step is in a state that does not allow the request (e.g. terminal)."""


class ServiceUnavailableError(APIError):
    """The kernel could not serve the request now (internal or storage trouble); retry later."""


class PolicyError(APIError):
    """Policy denied a tool call. ``rule_id`` names the deciding rule."""

    def __init__(self, message: str, code: str = "FORBIDDEN", details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code, details)
        self.rule_id = str(self.details.get("rule_id", ""))


class RateLimitedError(PolicyError):
    """A policy rate limit refused the call."""


class ToolError(RebunoError):
    """A tool failed.

    Attributes:
        tool_id: the tool.
        step_id: the kernel step of the call ("" when none was created).
        retryable: raised by a tool body on a runner, asks the kernel to retry the step.
    """

    def __init__(self, message: str, tool_id: str = "", step_id: str = "", retryable: bool = False,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.tool_id = tool_id
        self.step_id = step_id
        self.retryable = retryable


class StepTimeoutError(ToolError, TimeoutError):
    """A tool call passed its step deadline (policy ``timeout_ms``, else the kernel's step
    timeout) and the kernel recorded ``step.timed_out``. The execution goes on: the handler
    may catch this and try something else."""


_BY_CODE: dict[str, type[APIError]] = {
    "VALIDATION_ERROR": ValidationError, "UNAUTHORIZED": UnauthorizedError, "NOT_FOUND": NotFoundError,
    "CONFLICT": ConflictError, "FORBIDDEN": PolicyError, "RATE_LIMITED": RateLimitedError,
    "SERVICE_UNAVAILABLE": ServiceUnavailableError, "INTERNAL_ERROR": ServiceUnavailableError,
}


def error_from_reply(code: str, message: str, details: dict[str, Any] | None = None) -> APIError:
    """The APIError subclass for a wire ``Error`` reply."""
    return _BY_CODE.get(code, APIError)(message, code, details)
