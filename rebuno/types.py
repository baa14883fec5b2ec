"""Data types returned by the SDK (msgspec structs from the wire protocol)."""

from schemas.api import HealthReply, ListExecutionsReply
from schemas.events import Event, EventBatch
from schemas.records import (
    Execution, ExecutionStatus, ExecutionSummary, HistoryEntry, StepStatus, ToolEntry, ToolSchema,
)
from schemas.work import Job

__all__ = ["Event", "EventBatch", "Execution", "ExecutionStatus", "ExecutionSummary", "HealthReply", "HistoryEntry",
           "Job", "ListExecutionsReply", "StepStatus", "ToolEntry", "ToolSchema"]
