"""Subject, stream, bucket, consumer and header names (DESIGN §3).

Every name is built here and nowhere else. All names start with a configurable
prefix (default ``rebuno``, env ``REBUNO_PREFIX``) so several deployments can
share one NATS system.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .ids import validate_token_id

__all__ = ["Names", "HEADER_TYPE", "HEADER_SCHEMA", "HEADER_EXPECTED_LAST_SUBJECT_SEQ", "HEADER_MSG_ID",
           "DEFAULT_PREFIX", "KERNEL_QUEUE", "API_OPERATIONS"]

DEFAULT_PREFIX = "rebuno"
KERNEL_QUEUE = "kernel"

HEADER_TYPE = "Rebuno-Type"
"""Header naming the struct a message carries (``Error`` for error replies)."""
HEADER_SCHEMA = "Rebuno-Schema"
"""Header carrying the wire schema version (an integer as text)."""
HEADER_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HEADER_MSG_ID = "Nats-Msg-Id"

API_OPERATIONS = (
    "executions.create", "executions.get", "executions.list", "executions.cancel",
    "executions.signal", "executions.events", "tools.list", "agent.claim", "agent.intent",
    "agent.step_result", "agent.renew", "runner.register", "runner.started", "runner.result", "health",
)
"""Every kernel API operation; the subject is ``<prefix>.api.<operation>``."""

_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class Names:
    """Broker resource names for one deployment prefix.

    Attributes:
        prefix: the deployment prefix; 1 to 32 characters of ``[A-Za-z0-9_-]``.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"invalid prefix {self.prefix!r}: must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")

    @classmethod
    def from_env(cls, prefix: str | None = None) -> "Names":
        """Names for ``prefix``, else ``$REBUNO_PREFIX``, else ``rebuno``."""
        return cls(prefix or os.environ.get("REBUNO_PREFIX") or DEFAULT_PREFIX)

    # -- kernel API (core request/reply, queue group ``kernel``) --------------
    def api(self, operation: str) -> str:
        """Subject of one kernel API operation, e.g. ``rebuno.api.agent.intent``."""
        if operation not in API_OPERATIONS:
            raise ValueError(f"unknown API operation {operation!r}")
        return f"{self.prefix}.api.{operation}"

    @property
    def api_wildcard(self) -> str:
        return f"{self.prefix}.api.>"

    def api_operation(self, subject: str) -> str | None:
        """The operation named by an API subject, or None when it is not one."""
        head = f"{self.prefix}.api."
        if not subject.startswith(head):
            return None
        op = subject[len(head):]
        return op if op in API_OPERATIONS else None

    # -- work queues -----------------------------------------------------------
    def assign(self, agent_id: str) -> str:
        return f"{self.prefix}.assign.{validate_token_id('agent_id', agent_id)}"

    def jobs(self, runner_id: str) -> str:
        return f"{self.prefix}.jobs.{validate_token_id('runner_id', runner_id)}"

    @property
    def assign_stream(self) -> str:
        return f"{self.prefix.upper()}_ASSIGN"

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    def agent_consumer(self, agent_id: str) -> str:
        return f"agent-{validate_token_id('agent_id', agent_id)}"

    def runner_consumer(self, runner_id: str) -> str:
        return f"runner-{validate_token_id('runner_id', runner_id)}"

    # -- events ----------------------------------------------------------------
    def events(self, execution_id: str) -> str:
        return f"{self.prefix}.events.{validate_token_id('execution_id', execution_id)}"

    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def events_stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    # -- key-value buckets -----------------------------------------------------
    @property
    def executions_bucket(self) -> str:
        return f"{self.prefix}-executions"

    @property
    def tools_bucket(self) -> str:
        return f"{self.prefix}-tools"

    @property
    def runners_bucket(self) -> str:
        return f"{self.prefix}-runners"

    @property
    def leases_bucket(self) -> str:
        """Session leases by execution id, renewed by agents (``agent.renew``)."""
        return f"{self.prefix}-leases"

    @property
    def policy_bucket(self) -> str:
        """The policy in force (key ``active``), written by ``rebuno policy apply``."""
        return f"{self.prefix}-policy"

    @property
    def ratelimit_bucket(self) -> str:
        """Sliding-window rate-limit logs shared by every kernel replica."""
        return f"{self.prefix}-ratelimit"
