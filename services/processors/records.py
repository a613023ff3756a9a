"""Plain values passed between the faust adapter and the stages."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from services.common.topics import DEADLETTER


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    @property
    def timestamp(self) -> datetime:
        """The record's Kafka timestamp (used as receive time for events without ``time``)."""
        return datetime.fromtimestamp((self.timestamp_ms or 0) / 1000, timezone.utc)


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce before the batch's transaction commits."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    timestamp_ms: int | None = None  # None: the producer's clock


def deadletter(record: Record, *, stage: str, kind: str, reason: str,
               errors: list[dict[str, Any]] | None = None) -> Output:
    """The dead-letter record for a consumed record that could not be processed.

    Keeps the raw bytes (base64), the source position and the reason, so it can be re-driven.
    ``kind`` is one of: schema_violation, unknown_type, oversize, undecodable, processing_error.
    """
    body = {
        "stage": stage,
        "kind": kind,
        "reason": reason[:2000],
        "errors": errors or [],
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "value_b64": base64.b64encode(record.value).decode() if record.value is not None else None,
        "headers": [[k, base64.b64encode(v or b"").decode()] for k, v in record.headers],
        "record_time": record.timestamp.isoformat(),
    }
    return Output(DEADLETTER, record.key, orjson.dumps(body), (("content-type", b"application/json"),))
