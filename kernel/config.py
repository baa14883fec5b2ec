"""Kernel settings (DESIGN §6): timeouts, stream replicas and retention."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

__all__ = ["KernelConfig"]


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """Settings of one kernel replica.

    Attributes:
        step_timeout: default step deadline when policy sets none (``spec/kernel.md`` §23: 5 min).
        execution_timeout: maximum lifetime of an execution (1 h; recorded, enforced by the timer issue).
        agent_lease: ack wait of assignment notices and jobs, i.e. how long an instance may go
            silent before its work is redelivered to another instance (30 s).
        replicas: stream and bucket replicas (1 on one server, 3 in a cluster).
        events_max_age: retention of the event stream; zero keeps events forever.
        request_concurrency: API requests served at once by this replica.
    """

    step_timeout: timedelta = timedelta(minutes=5)
    execution_timeout: timedelta = timedelta(hours=1)
    agent_lease: timedelta = timedelta(seconds=30)
    replicas: int = 1
    events_max_age: timedelta = timedelta(0)
    request_concurrency: int = 256
    kernel_id: str = field(default="")
