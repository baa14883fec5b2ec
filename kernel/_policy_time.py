"""Durations (rate-limit windows) and schedules for the policy language.

``parse_duration`` reads Go duration strings (``spec/policy.md`` §7); ``Schedule``
is the ``when.schedule`` condition (§4.8). Both raise :class:`ValueError` with a
message fit to follow ``… is invalid: ``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo

__all__ = ["parse_duration", "Schedule", "parse_schedule", "DAY_NAMES"]

_UNITS_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_MAX_NS = (1 << 63) - 1
_PIECE = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go duration string: decimal numbers with units ``ns``, ``us``
    (``µs``), ``ms``, ``s``, ``m``, ``h``, e.g. ``30s``, ``1h30m``, ``1.5m``, ``500ms``;
    an optional sign; ``0`` alone needs no unit. No days.

    Raises:
        ValueError: not a duration (``1d``, ``30``, ``invalid``, ``""``), or beyond ~292 years.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as \"30s\", got {text!r}")
    s, neg = text, False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'invalid duration "{text}"')
    total = 0
    pos = 0
    while pos < len(s):
        m = _PIECE.match(s, pos)
        assert m is not None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f'invalid duration "{text}"')
        if not unit:
            raise ValueError(f'missing unit in duration "{text}"')
        if unit not in _UNITS_NS:
            raise ValueError(f'unknown unit "{unit}" in duration "{text}" (use ns, us, ms, s, m or h)')
        scale = _UNITS_NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_NS + (1 if neg else 0):
            raise ValueError(f'invalid duration "{text}" (too large)')
        pos = m.end()
    return -total if neg else total


DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{1,2})")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed ``<days> <HH:MM>-<HH:MM> <timezone>`` (``spec/policy.md`` §4.8).

    ``days`` uses 0 = Sunday … 6 = Saturday; ``start``/``end`` are minutes of the day
    (start inclusive, end exclusive, overnight when start > end, never when equal);
    ``tz`` None means the host's local zone (``Local``).
    """

    text: str
    days: frozenset[int]
    start: int
    end: int
    zone: str
    tz: tzinfo | None

    def matches(self, now: datetime) -> bool:
        """Whether the instant ``now`` (naive = UTC) is inside the schedule, judged by the
        weekday and minute of day in the schedule's zone."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        local = now.astimezone(self.tz) if self.tz is not None else now.astimezone()
        if (local.weekday() + 1) % 7 not in self.days:
            return False
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        if self.start > self.end:
            return minute >= self.start or minute < self.end
        return False


def _day(name: str) -> int:
    if name not in DAY_NAMES:
        raise ValueError(f'unknown day "{name}" (use {", ".join(DAY_NAMES)})')
    return DAY_NAMES.index(name)


def _parse_days(text: str) -> frozenset[int]:
    if "-" in text and "," in text:
        raise ValueError(f'days "{text}" mix a range and a list')
    if "-" in text:
        parts = text.split("-")
        if len(parts) != 2:
            raise ValueError(f'invalid day range "{text}"')
        first, last = _day(parts[0]), _day(parts[1])
        return frozenset((first + k) % 7 for k in range((last - first) % 7 + 1))
    return frozenset(_day(name) for name in text.split(","))


def _parse_minute(text: str) -> int:
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f'invalid time "{text}" (use H:MM, 24-hour)')
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23:
        raise ValueError(f'invalid hour in "{text}" (0-23)')
    if minute > 59:
        raise ValueError(f'invalid minute in "{text}" (0-59)')
    return hour * 60 + minute


def _zone(name: str) -> tzinfo | None:
    if name == "Local":
        return None
    if name == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError (bad key), OSError (a directory)
        raise ValueError(f'unknown time zone "{name}"') from None


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule string.

    Raises:
        ValueError: wrong number of parts, bad day name or range, a mixed range and list,
            hour > 23, minute > 59, a malformed time range, an unknown zone.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {text!r}")
    parts = text.split()
    if len(parts) != 3:
        raise ValueError(f"expected 3 parts '<days> <HH:MM>-<HH:MM> <timezone>', got {len(parts)}")
    days_text, times, zone = parts
    days = _parse_days(days_text)
    bounds = times.split("-")
    if len(bounds) != 2:
        raise ValueError(f'invalid time range "{times}" (use HH:MM-HH:MM)')
    return Schedule(text, days, _parse_minute(bounds[0]), _parse_minute(bounds[1]), zone, _zone(zone))
