"""Building CloudEvents (structured JSON, spec 1.0) the way the collector expects them."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any


def event(type: str, data: dict[str, Any], *, source: str, id: str | None = None,
          time: datetime | str | None = None, subject: str | None = None) -> dict[str, Any]:
    """A CloudEvent. Give ``id`` when the same occurrence may be sent twice (a retry, a re-delivered
    webhook): the platform keeps one event per ``source`` + ``id``. ``time`` is when it happened
    (default: now, UTC)."""
    if time is None:
        time = datetime.now(timezone.utc)
    if isinstance(time, datetime):
        if time.tzinfo is None:
            raise ValueError("time needs a time zone (datetime.now(timezone.utc), or an offset)")
        time = time.isoformat()
    out: dict[str, Any] = {"specversion": "1.0", "id": id or str(uuid.uuid4()), "source": source, "type": type,
                           "time": time, "data": data}
    if subject is not None:
        out["subject"] = subject
    return out
