"""structlog setup: readable lines in a terminal, JSON otherwise (``REBUNO_LOG_FORMAT``)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]

_done = False


def configure_logging(level: str | None = None, fmt: str | None = None, *, force: bool = False) -> None:
    """Configure structlog once per process (unless the application already did).

    Args:
        level: ``debug``/``info``/``warning``/``error`` (default ``$REBUNO_LOG_LEVEL`` or ``info``).
        fmt: ``text`` or ``json`` (default ``$REBUNO_LOG_FORMAT``; else text on a TTY, JSON otherwise).
        force: reconfigure even if structlog was configured before.
    """
    global _done
    if (_done or structlog.is_configured()) and not force:
        return
    level = (level or os.environ.get("REBUNO_LOG_LEVEL") or "info").upper()
    fmt = (fmt or os.environ.get("REBUNO_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")).lower()
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _done = True
