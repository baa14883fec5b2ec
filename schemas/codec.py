"""Encoders and decoders, built once (DESIGN §3.5): JSON via msgspec, typed headers."""

from __future__ import annotations

from typing import Any

import msgspec

from . import api
from .events import Event, EventBatch
from .records import ExecutionRecord, RunnerRecord, ToolEntry
from .subjects import HEADER_SCHEMA, HEADER_TYPE
from .work import AssignmentNotice, Job

__all__ = [
    "SCHEMA_VERSION", "encode", "decode_event", "decode_batch", "type_headers", "DecodeError",
    "REQUEST_DECODERS", "REPLY_DECODERS", "ERROR_DECODER", "RECORD_DECODER", "TOOL_DECODER",
    "RUNNER_DECODER", "NOTICE_DECODER", "JOB_DECODER",
]

SCHEMA_VERSION = 1

DecodeError = msgspec.DecodeError

_encoder = msgspec.json.Encoder()
encode = _encoder.encode
"""Encode any wire struct (or plain JSON value) to compact JSON bytes."""

_event_decoder = msgspec.json.Decoder(Event)
_batch_decoder = msgspec.json.Decoder(EventBatch)
decode_event = _event_decoder.decode
decode_batch = _batch_decoder.decode

REQUEST_DECODERS = {op: msgspec.json.Decoder(t) for op, t in api.REQUEST_TYPES.items()}
REPLY_DECODERS = {op: msgspec.json.Decoder(t) for op, t in api.REPLY_TYPES.items()}
ERROR_DECODER = msgspec.json.Decoder(api.Error)
RECORD_DECODER = msgspec.json.Decoder(ExecutionRecord)
TOOL_DECODER = msgspec.json.Decoder(ToolEntry)
RUNNER_DECODER = msgspec.json.Decoder(RunnerRecord)
NOTICE_DECODER = msgspec.json.Decoder(AssignmentNotice)
JOB_DECODER = msgspec.json.Decoder(Job)

_header_cache: dict[str, dict[str, str]] = {}


def type_headers(obj: Any) -> dict[str, str]:
    """Headers naming ``obj``'s struct and the schema version (shared dicts; do not mutate)."""
    name = type(obj).__name__
    headers = _header_cache.get(name)
    if headers is None:
        headers = _header_cache[name] = {HEADER_TYPE: name, HEADER_SCHEMA: str(SCHEMA_VERSION)}
    return headers
