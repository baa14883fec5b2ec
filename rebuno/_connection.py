"""The one place that talks nats-py: connecting, kernel API requests, and error translation.

Every nats-py exception the SDK can meet is translated here into the most
specific :mod:`rebuno.errors` class (``translate``); ``tests/unit/test_errors.py``
enumerates them.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import weakref
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from schemas import codec
from schemas.subjects import HEADER_TYPE, Names

from ._config import Settings, redact_url, split_credentials
from .errors import (
    ClientClosedError, NetworkError, RebunoError, RequestTimeoutError, ServiceUnavailableError, UnauthorizedError,
    ValidationError, error_from_reply,
)

__all__ = ["connect", "Requester", "translate", "backoff_delay"]

T = TypeVar("T")
log = structlog.get_logger("rebuno.connection")

class _Violations(dict):
    """Subject → the broker's permissions-violation message; ``changed`` fires on each new one."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()


_VIOLATIONS: "weakref.WeakKeyDictionary[NATS, _Violations]" = weakref.WeakKeyDictionary()
_VIOLATION_RE = re.compile(r'permissions violation for (?:publish|subscription) to "([^"]+)"', re.I)


def backoff_delay(base: float, failures: int, cap: float) -> float:
    """Jittered exponential backoff in seconds: ``min(base·2^(n−1), cap) · U(0.5, 1)`` (``spec/sdk.md`` §12.2)."""
    return min(base * 2 ** max(failures - 1, 0), cap) * random.uniform(0.5, 1.0)


def translate(exc: BaseException, *, subject: str = "", timeout: float | None = None) -> RebunoError:
    """Map a nats-py exception to the SDK's error tree."""
    details = {"subject": subject} if subject else {}
    if isinstance(exc, RebunoError):
        return exc
    if isinstance(exc, nats.errors.MaxPayloadError):
        return ValidationError(f"message too large for the broker's max payload ({exc})", "VALIDATION_ERROR", details)
    if isinstance(exc, nats.errors.NoRespondersError):
        return ServiceUnavailableError(f"no kernel replica is serving {subject or 'the request'}; "
                                       "is a kernel running on this broker and prefix?", "SERVICE_UNAVAILABLE", details)
    if isinstance(exc, (nats.errors.TimeoutError, asyncio.TimeoutError, nats.js.errors.FetchTimeoutError)):
        return RequestTimeoutError(f"no reply on {subject or 'the broker'} within {timeout} s",
                                   {**details, "timeout": timeout})
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)):
        return ClientClosedError("the connection to the broker is closed", details)
    if isinstance(exc, (nats.errors.NoServersError, nats.errors.UnexpectedEOF, nats.errors.StaleConnectionError,
                        ConnectionError, OSError)):
        return NetworkError(f"cannot reach the broker: {exc!r}", details)
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return ServiceUnavailableError(f"JetStream is unavailable: {exc}", "SERVICE_UNAVAILABLE", details)
    if isinstance(exc, nats.errors.Error):
        return NetworkError(f"broker error: {exc!r}", details)
    return RebunoError(f"unexpected error: {exc!r}", details)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.tls_ca or settings.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=settings.tls_ca or None)
    if settings.tls_cert:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return ctx


async def connect(settings: Settings, name: str, *, reconnect_delay: float = 2.0, max_reconnect_delay: float = 60.0,
                  retry_initial: bool = False, stop: asyncio.Event | None = None) -> NATS:
    """Open a NATS connection that reconnects forever.

    Args:
        settings: broker URL and credentials.
        name: connection name shown by ``nats server report connections``.
        reconnect_delay: seconds between reconnect attempts (and base of the initial backoff).
        max_reconnect_delay: cap in seconds of the initial-connect backoff.
        retry_initial: keep retrying the first connect with jittered backoff (agents, runners).
        stop: when set during initial retries, give up with ``ClientClosedError``.

    Raises:
        NetworkError: the broker is unreachable and ``retry_initial`` is False.
    """
    failures = 0
    violations = _Violations()

    async def on_error(exc: Exception) -> None:
        match = _VIOLATION_RE.search(str(exc))
        if match:
            violations[match.group(1)] = str(exc)
            violations.changed.set()
            violations.changed = asyncio.Event()
            log.warning("the broker refused an operation", error=str(exc), connection=name)
        else:
            log.debug("nats connection error", error=repr(exc))

    servers, user, password, token = split_credentials(settings.url)
    shown = redact_url(settings.url)
    while True:
        try:
            # One pass over the servers for the first connect (nats-py would otherwise retry
            # forever and ignore signals); once connected, reconnect forever.
            nc = await nats.connect(
                servers=servers, name=name, user=user or None, password=password or None,
                token=settings.api_key or token or None, user_credentials=settings.creds_file or None,
                tls=_tls_context(settings), allow_reconnect=True, max_reconnect_attempts=1,
                reconnect_time_wait=min(reconnect_delay, 1.0), connect_timeout=5, error_cb=on_error,
            )
            _VIOLATIONS[nc] = violations
            nc.options["max_reconnect_attempts"] = -1
            nc.options["reconnect_time_wait"] = reconnect_delay
            return nc
        except Exception as exc:  # noqa: BLE001 - translated below
            err = translate(exc)
            if not retry_initial:
                raise NetworkError(f"cannot connect to {shown}: {err.message}") from exc
            failures += 1
            delay = backoff_delay(reconnect_delay, failures, max_reconnect_delay)
            log.warning("broker unreachable, retrying", url=shown, error=err.message, retry_in_s=round(delay, 2))
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    raise ClientClosedError("stopped while connecting") from exc
                except asyncio.TimeoutError:
                    pass


class Requester:
    """Kernel API calls over core request/reply (DESIGN §3.1) with retries.

    Every API request is idempotent under retry (each mutating request carries a key),
    so timeouts and "no responders" are retried up to ``max_retries`` times with
    exponential backoff; an ``Error`` reply is raised at once as its APIError subclass.
    """

    def __init__(self, nc: NATS, names: Names, *, timeout: float = 10.0, max_retries: int = 3,
                 retry_base_delay: float = 0.2, retry_max_delay: float = 5.0) -> None:
        self.nc = nc
        self.names = names
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._subjects: dict[str, str] = {}

    async def _request(self, subject: str, data: bytes, timeout: float, request: Any):
        """One request/reply; a permissions violation the broker reports for ``subject`` while
        waiting ends it at once as UnauthorizedError instead of a timeout."""
        violations = _VIOLATIONS.get(self.nc)
        if violations is None:
            return await self.nc.request(subject, data, timeout=timeout, headers=codec.type_headers(request))
        refused = violations.get(subject)
        if refused is None:
            reply = asyncio.ensure_future(self.nc.request(subject, data, timeout=timeout,
                                                          headers=codec.type_headers(request)))
            while refused is None and not reply.done():
                changed = asyncio.ensure_future(violations.changed.wait())
                await asyncio.wait({reply, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                refused = violations.get(subject)
            if reply.done():
                return reply.result()
            reply.cancel()
        raise UnauthorizedError(f"the broker does not allow these credentials to publish to {subject}: {refused}",
                                "UNAUTHORIZED", {"subject": subject})

    async def call(self, operation: str, request: Any, *, timeout: float | None = None,
                   max_retries: int | None = None) -> Any:
        """Send ``request`` to ``<prefix>.api.<operation>`` and return the decoded reply struct.

        Args:
            operation: an API operation (``schemas.subjects.API_OPERATIONS``).
            request: the operation's request struct.
            timeout: seconds to wait for each reply (default: the Requester's).
            max_retries: retries after a timeout or no-responders (default: the Requester's).

        Raises:
            APIError: (a subclass) the kernel answered with an Error.
            RequestTimeoutError: no reply after all retries.
            ServiceUnavailableError: no kernel replica is subscribed.
            ValidationError: the request exceeds the broker's max payload.
            ClientClosedError: the connection is closed.
        """
        subject = self._subjects.get(operation)
        if subject is None:
            subject = self._subjects[operation] = self.names.api(operation)
        data = codec.encode(request)
        if len(data) + 512 > self.nc.max_payload:  # headers travel in the same frame
            raise ValidationError(f"{operation} request is {len(data)} bytes, over the broker's max payload of "
                                  f"{self.nc.max_payload} bytes", "VALIDATION_ERROR",
                                  {"size_bytes": len(data), "limit_bytes": self.nc.max_payload})
        t = self.timeout if timeout is None else timeout
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            if self.nc.is_closed:
                raise ClientClosedError("the connection to the broker is closed")
            try:
                msg = await self._request(subject, data, t, request)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError) as exc:
                err = translate(exc, subject=subject, timeout=t)
                if attempt >= retries:
                    raise err from exc
            except Exception as exc:  # noqa: BLE001
                raise translate(exc, subject=subject, timeout=t) from exc
            attempt += 1
            await asyncio.sleep(min(self.retry_base_delay * 2 ** (attempt - 1), self.retry_max_delay))
        headers = msg.headers or {}
        if headers.get(HEADER_TYPE) == "Error":
            reply_error = codec.ERROR_DECODER.decode(msg.data)
            raise error_from_reply(reply_error.code, reply_error.message, reply_error.details)
        try:
            return codec.REPLY_DECODERS[operation].decode(msg.data)
        except msgspec.DecodeError as exc:
            raise RebunoError(f"undecodable reply on {subject}: {exc}") from exc
