"""Messages of the work-queue streams (DESIGN §3.2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = ["AssignmentNotice", "Job"]


class AssignmentNotice(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Published to ``<prefix>.assign.<agent_id>`` (stream ``<PREFIX>_ASSIGN``) when an
    execution needs an agent instance; the instance that pulls it claims the execution."""

    execution_id: str
    agent_id: str
    created_at: datetime


class Job(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One dispatch of one attempt of a remote step (``spec/kernel.md`` §9.4), published to
    ``<prefix>.jobs.<runner_id>`` (stream ``<PREFIX>_JOBS``).

    Attributes:
        deadline: the step deadline for this attempt (UTC).
    """

    id: str
    execution_id: str
    step_id: str
    tool_id: str
    attempt: int
    deadline: datetime
    runner_id: str
    arguments: Any = None
    tool_version: int = 0
    not_before: datetime | None = None
    """A retry's delay: the runner starts the job no earlier than this (UTC)."""
