"""Export the JSON Schema of every wire struct into ``schemas/json/``.

Run ``python -m schemas.export`` (or ``make schemas``) after changing a struct;
``tests/unit/test_schemas.py`` fails while the checked-in export is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from . import api, events, records, work

OUT_DIR = Path(__file__).parent / "json"


def all_structs() -> dict[str, object]:
    """Name → type of every exported message: requests, replies, events, records, work."""
    types: dict[str, object] = {}
    for op, t in api.REQUEST_TYPES.items():
        types[f"api.{op}.request"] = t
    for op, t in api.REPLY_TYPES.items():
        types[f"api.{op}.reply"] = t
    types["api.Error"] = api.Error
    types["events.EventBatch"] = events.EventBatch
    types["events.Event"] = events.Event
    for name in ("ExecutionRecord", "ToolEntry", "RunnerRecord", "Execution", "ExecutionSummary"):
        types[f"records.{name}"] = getattr(records, name)
    types["work.AssignmentNotice"] = work.AssignmentNotice
    types["work.Job"] = work.Job
    return types


def render() -> dict[str, str]:
    """File name → JSON text of the export."""
    return {f"{name}.json": json.dumps(msgspec.json.schema(t), indent=2, sort_keys=True) + "\n"
            for name, t in all_structs().items()}


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    wanted = render()
    for old in OUT_DIR.glob("*.json"):
        if old.name not in wanted:
            old.unlink()
    for name, text in wanted.items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(wanted)} schemas to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
