"""JetStream and key-value I/O of the kernel: streams, buckets, event appends, records.

The only kernel module that talks to the broker's storage. Resources (DESIGN §3.2–§3.4):

- stream ``<PREFIX>_EVENTS`` on ``<prefix>.events.>``: one message per transition
  (an :class:`~schemas.events.EventBatch`), appended with
  ``Nats-Expected-Last-Subject-Sequence`` so two replicas can never fork a log;
- streams ``<PREFIX>_ASSIGN`` / ``<PREFIX>_JOBS``: work queues of notices and jobs;
- buckets ``<prefix>-executions`` (records, compare-and-set on revision),
  ``<prefix>-tools`` and ``<prefix>-runners``.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy, KeyValueConfig, RePublish, RetentionPolicy, StorageType, StreamConfig,
)
from nats.js.kv import KeyValue

from schemas import codec
from schemas.events import EventBatch
from schemas.records import ExecutionRecord
from schemas.subjects import HEADER_EXPECTED_LAST_SUBJECT_SEQ, HEADER_MSG_ID, HEADER_SCHEMA, HEADER_TYPE, Names
from schemas.work import AssignmentNotice, Job

from .config import KernelConfig

__all__ = ["Store", "SequenceConflict", "ensure_resources"]

_WRONG_LAST_SEQUENCE = (10071, 10164)
_BATCH_HEADERS = {HEADER_TYPE: "EventBatch", HEADER_SCHEMA: str(codec.SCHEMA_VERSION)}


class SequenceConflict(Exception):
    """The append guard failed: the log moved on since the record we decided on."""


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


async def ensure_resources(js: JetStreamContext, names: Names, config: KernelConfig) -> dict[str, KeyValue]:
    """Create (or update) every stream and bucket; idempotent, safe from several replicas at once.

    Returns:
        the key-value handles by role: ``executions``, ``tools``, ``runners``, ``leases``,
        ``policy`` and ``ratelimit``.
    """
    r = config.replicas
    await _ensure_stream(js, StreamConfig(
        name=names.events_stream, subjects=[names.events_wildcard], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=r, allow_direct=True, duplicate_window=120.0,
        max_age=config.events_max_age.total_seconds() or None, discard=DiscardPolicy.OLD,
        republish=RePublish(src=names.events_wildcard, dest=names.feed_wildcard),
        description="Rebuno execution events: one message per transition, per-execution subjects"))
    for name, wildcard, what in ((names.assign_stream, f"{names.prefix}.assign.>", "assignment notices"),
                                 (names.jobs_stream, f"{names.prefix}.jobs.>", "remote tool jobs")):
        await _ensure_stream(js, StreamConfig(
            name=name, subjects=[wildcard], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
            num_replicas=r, duplicate_window=120.0, description=f"Rebuno {what} (work queue)"))
    buckets = {}
    for role, bucket in (("executions", names.executions_bucket), ("tools", names.tools_bucket),
                         ("runners", names.runners_bucket), ("leases", names.leases_bucket),
                         ("policy", names.policy_bucket), ("ratelimit", names.ratelimit_bucket)):
        try:
            buckets[role] = await js.key_value(bucket)
            info = await js.stream_info(f"KV_{bucket}")
            if (info.config.num_replicas or 1) != r:  # e.g. moved from one server to a cluster
                info.config.num_replicas = r
                await js.update_stream(info.config)
        except nats.js.errors.BucketNotFoundError:
            buckets[role] = await js.create_key_value(KeyValueConfig(
                bucket=bucket, history=10 if role == "policy" else 1, replicas=r, storage=StorageType.FILE, direct=r == 1,
                description=f"Rebuno {role}"))
    return buckets


class Store:
    """Reads and writes of execution logs and records for one replica."""

    def __init__(self, nc: NATS, names: Names, config: KernelConfig) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.names = names
        self.config = config
        self.kv: dict[str, KeyValue] = {}
        # Direct gets may be served by any replica, which can lag the leader: read-your-writes
        # needs the leader as soon as there is more than one.
        self.direct = config.replicas == 1

    async def start(self) -> None:
        self.kv = await ensure_resources(self.js, self.names, self.config)

    # -- event log ---------------------------------------------------------------
    async def append(self, execution_id: str, batch: bytes, expected_stream_seq: int) -> int:
        """Append one batch to ``<prefix>.events.<execution_id>`` if the subject's last
        message is still ``expected_stream_seq`` (0: the subject must be empty).

        Returns:
            the stream sequence of the stored batch.

        Raises:
            SequenceConflict: another append got there first.
        """
        headers = {**_BATCH_HEADERS, HEADER_EXPECTED_LAST_SUBJECT_SEQ: str(expected_stream_seq)}
        try:
            ack = await self.js.publish(self.names.events(execution_id), batch, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise SequenceConflict(str(exc)) from exc
            raise
        return ack.seq

    async def batches(self, execution_id: str, after_stream_seq: int = 0) -> AsyncIterator[tuple[int, EventBatch]]:
        """The execution's batches stored after ``after_stream_seq``, oldest first."""
        subject = self.names.events(execution_id)
        seq = after_stream_seq + 1
        while True:
            try:
                msg = await self.js.get_msg(self.names.events_stream, seq=seq, subject=subject, next=True,
                                            direct=self.direct)
            except nats.js.errors.NotFoundError:
                return
            yield msg.seq, codec.decode_batch(msg.data)
            seq = msg.seq + 1

    # -- records -----------------------------------------------------------------
    async def get_record(self, execution_id: str) -> tuple[bytes, int] | None:
        """The stored record bytes and revision, or None."""
        try:
            entry = await self.kv["executions"].get(execution_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value, entry.revision

    async def put_record(self, execution_id: str, data: bytes, revision: int) -> int:
        """Compare-and-set the record at ``revision`` (0: create). Returns the new revision.

        Raises:
            nats.js.errors.KeyWrongLastSequenceError: the stored revision differs.
        """
        kv = self.kv["executions"]
        if revision == 0:
            return await kv.create(execution_id, data)
        return await kv.update(execution_id, data, last=revision)

    async def all_records(self) -> list[ExecutionRecord]:
        """Every execution record (a snapshot read of the bucket's latest values).

        The read ends at the entry with nothing pending after it, not at the watcher's
        "initial values done" marker: under load nats-py can deliver that marker before the
        values, which made a busy bucket look empty.
        """
        kv = self.kv["executions"]
        info = await self.js.stream_info(f"KV_{self.names.executions_bucket}")
        if not info.state.messages:
            return []
        # a one-shot read: the server drops the watch's consumer 10 s after it goes idle,
        # instead of the default 5 minutes (frequent listings would pile consumers up)
        watcher = await kv.watchall(inactive_threshold=10.0)
        out: dict[str, ExecutionRecord] = {}
        try:
            while True:
                entry = await watcher.updates(timeout=5.0)
                if entry is None:
                    continue  # the marker; the values come (or came) on their own
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    out.pop(entry.key, None)
                else:
                    try:
                        out[entry.key] = codec.RECORD_DECODER.decode(entry.value)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        pass  # rebuilt from the stream when the execution is next touched
                if not entry.delta:
                    break
        finally:
            await watcher.stop()
        return list(out.values())

    # -- work queues ---------------------------------------------------------------
    async def publish_notice(self, notice: AssignmentNotice, msg_id: str) -> None:
        """Enqueue an assignment notice (deduplicated by ``msg_id`` within 2 minutes)."""
        await self.js.publish(self.names.assign(notice.agent_id), codec.encode(notice),
                              headers={**codec.type_headers(notice), HEADER_MSG_ID: msg_id})

    async def publish_job(self, job: Job) -> None:
        """Enqueue a job for its runner (deduplicated by job id)."""
        await self.js.publish(self.names.jobs(job.runner_id), codec.encode(job),
                              headers={**codec.type_headers(job), HEADER_MSG_ID: job.id})

    async def publish_all(self, notices: list[AssignmentNotice], jobs: list[Job], notice_msg_id: str = "") -> None:
        await asyncio.gather(*(self.publish_notice(n, notice_msg_id or n.execution_id) for n in notices),
                             *(self.publish_job(j) for j in jobs))
