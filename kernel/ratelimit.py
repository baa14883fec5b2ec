"""Rate limits shared by every kernel replica (``spec/policy.md`` §7, DESIGN §3.4).

The original kept a sliding log per ``<agent_id>:<tool_id>`` in each process's
memory, so N replicas together allowed N times the limit. Here the log lives in
the ``<prefix>-ratelimit`` bucket under ``<agent_id>.<tool_id>`` and every
check is a compare-and-set on it: two replicas racing for the last slot cannot
both win, because the loser's write fails and it decides again on the new log.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

__all__ = ["RateLimiter", "RateLimitUnavailable"]

_ATTEMPTS = 20


class RateLimitUnavailable(Exception):
    """The shared log could not be updated (too contended, or the bucket is unreachable)."""


class _Log(msgspec.Struct, array_like=True):
    times_ns: list[int] = []
    """Epoch nanoseconds of the calls that passed, oldest first."""


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Log)


class RateLimiter:
    """Sliding-log limiter over a key-value bucket.

    Args:
        kv: the ``<prefix>-ratelimit`` bucket.
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @staticmethod
    def key(agent_id: str, tool_id: str) -> str:
        """The bucket key of an agent's calls of a tool (every rule limiting the tool shares it)."""
        return f"{agent_id}.{tool_id}"

    async def acquire(self, agent_id: str, tool_id: str, max_calls: int, window_ns: int, now: datetime) -> bool:
        """Record a call at ``now`` and return True, unless ``max_calls`` calls already passed
        within the last ``window_ns`` nanoseconds (strictly newer than ``now - window``), in
        which case nothing is recorded and False is returned.

        Raises:
            RateLimitUnavailable: the log could not be read or written after retries.
        """
        key = self.key(agent_id, tool_id)
        now_ns = int(now.timestamp() * 1_000_000_000)
        for attempt in range(_ATTEMPTS):
            try:
                try:
                    entry = await self.kv.get(key)
                    log, revision = _DECODER.decode(entry.value or b""), entry.revision
                except nats.js.errors.KeyDeletedError as exc:
                    log, revision = _Log(), exc.entry.revision if exc.entry else 0
                except nats.js.errors.KeyNotFoundError:
                    log, revision = _Log(), 0
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log, revision = _Log(), None  # unreadable: start over
                recent = [t for t in log.times_ns if t > now_ns - window_ns]
                if len(recent) >= max_calls:
                    return False
                recent.append(now_ns)
                data = _ENCODER.encode(_Log(recent))
                if revision is None:
                    await self.kv.put(key, data)
                elif revision == 0:
                    await self.kv.create(key, data)
                else:
                    await self.kv.update(key, data, last=revision)
                return True
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyHistoryTooLargeError):
                await asyncio.sleep(0.001 * attempt)
            except nats.js.errors.APIError as exc:
                if "wrong last sequence" in str(exc).lower():
                    await asyncio.sleep(0.001 * attempt)
                    continue
                raise RateLimitUnavailable(str(exc)) from exc
        raise RateLimitUnavailable(f"rate-limit log {key} is too contended")
