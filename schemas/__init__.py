"""Rebuno's wire protocol: every message that crosses NATS, and every broker name.

Depends on nothing else of the project (DESIGN §2). Modules:

- :mod:`schemas.api` — kernel API requests/replies and the ``Error`` reply;
- :mod:`schemas.events` — the event envelope and payloads, ``EventBatch``;
- :mod:`schemas.records` — key-value records and public views;
- :mod:`schemas.work` — assignment notices and jobs;
- :mod:`schemas.subjects` — subject, stream, bucket and header names;
- :mod:`schemas.ids` — ID validation and UUIDv7;
- :mod:`schemas.codec` — encoders/decoders built once;
- :mod:`schemas.export` — JSON Schema export (``python -m schemas.export``).
"""

from .codec import SCHEMA_VERSION
from .subjects import Names

__all__ = ["Names", "SCHEMA_VERSION"]
