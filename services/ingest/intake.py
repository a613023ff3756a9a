"""The one way into the log: validate touchpoints, seal their personal data and make them durable on
``crm.touchpoints``. ``POST /v1/events`` and every channel adapter (services/ingest/adapters) hand
their CloudEvents to ``Intake.accept``, so all of them share the same validation, size limits, rate
limits, deduplication within a request, sealing and "2xx means durable" answer.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import orjson
import psycopg2
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge, Histogram

from events.envelope import InvalidEvent, validate
from events.kafka_binding import structured_headers
from services.common.auth import Caller
from services.common.db import TransactionPool
from services.common.publisher import KafkaPublisher, KafkaUnavailable
from services.common.settings import Settings
from services.common.topics import TOUCHPOINTS
from services.common.vault import Vault

log = logging.getLogger(__name__)

ACCEPTED = Counter("crm_ingest_events_accepted_total", "events acknowledged by Kafka", ["type"])
REJECTED = Counter("crm_ingest_events_rejected_total", "events refused", ["reason"])
ADAPTER_REQUESTS = Counter("crm_ingest_adapter_requests_total", "requests to a channel adapter",
                           ["adapter", "status"])
ACK_SECONDS = Histogram("crm_ingest_kafka_ack_seconds", "time from send to Kafka acknowledgement",
                        buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
WAITING = Gauge("crm_ingest_requests_waiting_for_kafka", "requests whose events were sent and not yet acknowledged")

RETRY_AFTER_S = 5
HEADERS = structured_headers()


@dataclass
class Outcome:
    """What became of the events of one request: ``status`` is the HTTP answer the collector gives
    (202 durable, 400 none valid, 413 one event too big, 429 over a rate limit, 503 Kafka or the key
    vault unavailable: nothing confirmed, retry after ``headers['Retry-After']``)."""

    status: int
    accepted: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    detail: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def durable(self) -> bool:
        return self.status == 202

    def body(self) -> dict[str, Any]:
        if self.durable:
            return {"accepted": self.accepted, "rejected": self.rejected}
        out: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            out["detail"] = self.detail
        if self.rejected:
            out["rejected"] = self.rejected
        return out

    def response(self, **extra: Any) -> JSONResponse:
        return JSONResponse({**self.body(), **extra}, status_code=self.status, headers=self.headers or None)

    def reasons(self) -> str:
        """The rejections in one line (``email.received: data.to: field required; ...``), for answers
        that are not JSON (an SMTP reply, a log line)."""
        parts = []
        for r in self.rejected:
            errs = "; ".join(f"{e.get('field') or '(event)'}: {e.get('message')}" for e in r.get("errors", []))
            parts.append(f"{r.get('reason')}: {errs}" if errs else str(r.get("reason")))
        return " | ".join(parts) or (self.error or "")


async def read_body(request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes: refused by its Content-Length, or
    as soon as a chunked body grows past it (it must not be read whole into memory)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdecimal() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def unavailable(message: str, detail: Any = None) -> Outcome:
    return Outcome(503, error=message, detail=detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class Intake:
    """Validates, limits, seals and publishes CloudEvents (dicts, as posted) for every entry point."""

    def __init__(self, settings: Settings, publisher: KafkaPublisher, vault: Vault, guard,
                 on_status: Callable[[int], None] = lambda status: None):
        self.settings, self.publisher, self.vault, self.guard = settings, publisher, vault, guard
        self.on_status = on_status
        self.blocked = settings.blocked  # CRM_IDENTITY_BLOCKED, read once
        self.vault_pool = TransactionPool(settings.pg_dsn, maxconn=4, application_name="crm-ingest-vault")

    def _seal_all(self, tps: list) -> list[tuple[bytes, bytes]]:
        with self.vault_pool.transaction() as cur:
            self.vault.subjects(cur, [i for tp in tps for i in tp.identifiers])  # one round trip for the request
            return [self.vault.seal(cur, tp) for tp in tps]

    async def accept(self, caller: Caller | None, items: list[Any], *, single: bool = False,
                     adapter: str | None = None, cloudevents: bool = True) -> Outcome:
        """Validate and publish ``items`` (raw CloudEvent dicts). ``caller`` is the API key's caller,
        charged per event; None for a request authenticated otherwise (a platform's signature), whose
        events are charged to their sources' buckets only. ``single``: the request held one event (an
        oversize one answers 413 rather than 400). ``adapter`` labels the metrics. ``cloudevents``: the
        events came in a CloudEvents mode, so each must name its ``specversion`` (False: the plain
        ``application/json`` form of ``POST /v1/events``, where it defaults to 1.0)."""
        outcome = await self._accept(caller, items, single, cloudevents)
        if adapter is None:
            self.on_status(outcome.status)
        else:
            ADAPTER_REQUESTS.labels(adapter, str(outcome.status)).inc()
        return outcome

    async def _accept(self, caller: Caller | None, items: list[Any], single: bool, cloudevents: bool) -> Outcome:
        settings, guard = self.settings, self.guard
        if not items:
            return Outcome(400, error="the batch is empty")
        limited = guard.limit_events(caller, items)  # counted in events, per key and per source
        if limited is not None:
            return limited
        received_at = datetime.now(timezone.utc)
        accepted, rejected, records = [], [], []
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(items):
            item_id = item.get("id") if isinstance(item, dict) else None
            forbidden = guard.forbidden(caller, item) if caller is not None else None
            if forbidden is not None:  # a publishable key sends web.* events only
                rejected.append({"index": index, "id": item_id, **forbidden})
                REJECTED.labels("forbidden").inc()
                continue
            try:
                size = len(orjson.dumps(item))
            except orjson.JSONEncodeError:  # nested too deeply to encode again: validate() says where
                size = 0
            if size > settings.max_event_bytes:
                rejected.append({"index": index, "id": item_id, "reason": "oversize", "errors": [
                    {"field": "", "message": f"event is {size} bytes; the limit is {settings.max_event_bytes}"}]})
                REJECTED.labels("oversize").inc()
                continue
            try:
                tp = validate(item, received_at=received_at, default_region=settings.default_region,
                              require_specversion=cloudevents, blocked=self.blocked)
            except InvalidEvent as exc:
                rejected.append({"index": index, "id": item_id, "reason": exc.kind,
                                 "errors": [e.as_dict() for e in exc.errors]})
                REJECTED.labels(exc.kind).inc()
                continue
            if (tp.source, tp.id) in seen:  # the same event twice in one request is one event
                accepted.append(tp.id)
                continue
            seen.add((tp.source, tp.id))
            accepted.append(tp.id)
            records.append(tp)

        if not records:
            if single and rejected[0]["reason"] == "oversize":
                return Outcome(413, error=rejected[0]["errors"][0]["message"], rejected=rejected)
            return Outcome(400, error="no valid event in the request", rejected=rejected)
        try:  # personal data is sealed before it is written anywhere (services/common/vault.py)
            sealed = await asyncio.to_thread(self._seal_all, records)
        except psycopg2.Error as exc:
            log.warning("key vault unavailable, answering 503", extra={"error": type(exc).__name__,
                                                                       "events": len(records)})
            return unavailable("key vault unavailable; nothing was accepted, retry later")
        out = [(TOUCHPOINTS, key, value, HEADERS, tp.type) for tp, (key, value) in zip(records, sealed)]
        started = datetime.now(timezone.utc)
        try:
            with WAITING.track_inprogress():
                await self.publisher.send_all([r[:4] for r in out])
        except KafkaUnavailable as exc:
            log.warning("kafka unavailable, answering 503", extra={"error": str(exc), "events": len(out)})
            return unavailable("event log unavailable; nothing was accepted, retry later", str(exc))
        ACK_SECONDS.observe((datetime.now(timezone.utc) - started).total_seconds())
        for r in out:
            ACCEPTED.labels(r[4]).inc()
        return Outcome(202, accepted=accepted, rejected=rejected)

    def close(self) -> None:
        self.vault_pool.close()
