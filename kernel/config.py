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
        execution_timeout: maximum lifetime of an execution from its creation (1 h); zero disables.
        agent_lease: how long an agent's session lives without an ``agent.renew`` when the
            agent names no lease of its own (30 s); also the ack wait of notices and jobs.
        retry_base_delay / retry_max_delay: the delay before retry attempt ``n`` is
            ``min(base * 2**(n-1), max)`` (1 s and 30 s, ``spec/kernel.md`` §11).
        timer_interval: how often this replica checks deadlines and leases (0.25 s), so a
            deadline fires well within one second (DESIGN §4.7).
        replicas: stream and bucket replicas (1 on one server, 3 in a cluster).
        events_max_age: retention of the event stream; zero keeps events forever.
        request_concurrency: API requests served at once by this replica.
    """

    step_timeout: timedelta = timedelta(minutes=5)
    execution_timeout: timedelta = timedelta(hours=1)
    agent_lease: timedelta = timedelta(seconds=30)
    retry_base_delay: timedelta = timedelta(seconds=1)
    retry_max_delay: timedelta = timedelta(seconds=30)
    timer_interval: float = 0.25
    replicas: int = 1
    events_max_age: timedelta = timedelta(0)
    request_concurrency: int = 256
    kernel_id: str = field(default="")
