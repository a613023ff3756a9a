"""The collector's HTTP API: validate touchpoints and make them durable on ``crm.touchpoints``.

2xx means durable: the answer is sent only after Kafka acknowledged (acks=all) every accepted
event; when Kafka cannot be reached the answer is 503 with Retry-After and nothing is confirmed.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
import psycopg2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from events.envelope import InvalidEvent, validate
from events.kafka_binding import structured_headers
from services.common.settings import Settings
from services.common.topics import TOUCHPOINTS
from services.common.publisher import KafkaPublisher, KafkaUnavailable
from services.common.db import TransactionPool
from services.common.apikeys import EVENTS_WRITE
from services.common.auth import Caller, check_routes, document_scopes, require
from services.ingest.security import OPEN_ROUTES, CollectorGuard
from services.common.vault import Vault, from_settings as vault_from_settings

log = logging.getLogger(__name__)

ACCEPTED = Counter("crm_ingest_events_accepted_total", "events acknowledged by Kafka", ["type"])
REJECTED = Counter("crm_ingest_events_rejected_total", "events refused", ["reason"])
REQUESTS = Counter("crm_ingest_requests_total", "requests to POST /v1/events", ["status"])
ACK_SECONDS = Histogram("crm_ingest_kafka_ack_seconds", "time from send to Kafka acknowledgement",
                        buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

RETRY_AFTER_S = 5
HEADERS = structured_headers()

EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "description": "One CloudEvent (structured JSON), a JSON array of them, or {\"batch\": [...]}.",
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/CloudEventIn"},
                {"type": "array", "items": {"$ref": "#/components/schemas/CloudEventIn"}},
                {"type": "object", "properties": {"batch": {"type": "array",
                                                            "items": {"$ref": "#/components/schemas/CloudEventIn"}}}},
            ]}},
            "application/cloudevents+json": {"schema": {"$ref": "#/components/schemas/CloudEventIn"}},
            "application/cloudevents-batch+json": {"schema": {"type": "array",
                                                              "items": {"$ref": "#/components/schemas/CloudEventIn"}}},
        },
    },
}

CLOUDEVENT_IN = {
    "type": "object",
    "required": ["id", "source", "type", "data"],
    "properties": {
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "description": "idempotency key within source"},
        "source": {"type": "string"},
        "type": {"type": "string", "description": "one of the declared touchpoint types"},
        "time": {"type": "string", "format": "date-time"},
        "sentat": {"type": "string", "format": "date-time", "description": "sender's clock at sending"},
        "subject": {"type": "string"},
        "dataschema": {"type": "string"},
        "data": {"type": "object"},
    },
}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    REQUESTS.labels(str(status)).inc()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows over ``limit`` bytes (a chunked body has no
    Content-Length to refuse it by, and must not be read whole into memory)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings, publisher: KafkaPublisher, vault: Vault | None = None) -> FastAPI:
    """The collector app, wired with its settings, Kafka publisher and key vault."""
    vault = vault or vault_from_settings(settings)
    vault_pool = TransactionPool(settings.pg_dsn, maxconn=4, application_name="crm-ingest-vault")

    def seal_all(tps: list) -> list[tuple[bytes, bytes]]:
        with vault_pool.transaction() as cur:
            vault.subjects(cur, [i for tp in tps for i in tp.identifiers])  # one round trip for the request
            return [vault.seal(cur, tp) for tp in tps]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        vault.listen(settings.pg_dsn)
        yield
        vault.close()
        publisher.close()
        vault_pool.close()
        guard.close()

    app = FastAPI(title="CRM collector", version="1", lifespan=lifespan,
                  description="Accepts customer touchpoints as CloudEvents and makes them durable on Kafka.")
    app.state.publisher = publisher
    # API keys, rate limits counted in events, publishable keys and CORS (services/ingest/security.py)
    guard = CollectorGuard(app, settings, lambda status: REQUESTS.labels(str(status)).inc())

    @app.post("/v1/events", status_code=202, openapi_extra=EVENTS_BODY, responses={
        202: {"description": "accepted events are durable in Kafka; rejected ones are listed with reasons"},
        400: {"description": "malformed JSON, or no event in the request is valid"},
        413: {"description": "the request or an event is over the size limit"},
        503: {"description": "Kafka unavailable; retry after Retry-After seconds (same ids are deduplicated)"},
    })
    async def post_events(request: Request, caller: Annotated[Caller, Depends(require(EVENTS_WRITE))]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdecimal() and int(length) > settings.max_batch_bytes:
            return _error(413, f"request body is {length} bytes; the limit is {settings.max_batch_bytes} bytes")
        body = await _read_body(request, settings.max_batch_bytes)
        if body is None:  # chunked, without a length: stopped reading at the limit
            return _error(413, f"request body is over the limit of {settings.max_batch_bytes} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"malformed JSON: {exc}")
        single = isinstance(payload, dict) and "batch" not in payload
        if single:
            items = [payload]
        elif isinstance(payload, dict) and isinstance(payload.get("batch"), list):
            items = payload["batch"]
        elif isinstance(payload, list):
            items = payload
        else:
            return _error(400, "the body must be an event object, an array of events or {\"batch\": [...]}")
        if not items:
            return _error(400, "the batch is empty")
        limited = guard.limit_events(caller, items)  # counted in events, per key and per source
        if limited is not None:
            REQUESTS.labels("429").inc()
            return limited

        received_at = datetime.now(timezone.utc)
        accepted, rejected, records = [], [], []
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(items):
            item_id = item.get("id") if isinstance(item, dict) else None
            forbidden = guard.forbidden(caller, item)
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
                tp = validate(item, received_at=received_at, default_region=settings.default_region)
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
                return _error(413, rejected[0]["errors"][0]["message"], rejected=rejected)
            return _error(400, "no valid event in the request", rejected=rejected)
        try:  # personal data is sealed before it is written anywhere (services/common/vault.py)
            sealed = await asyncio.to_thread(seal_all, records)
        except psycopg2.Error as exc:
            log.warning("key vault unavailable, answering 503", extra={"error": type(exc).__name__,
                                                                       "events": len(records)})
            return _error(503, "key vault unavailable; nothing was accepted, retry later")
        records = [(TOUCHPOINTS, key, value, HEADERS, tp.type) for tp, (key, value) in zip(records, sealed)]
        started = datetime.now(timezone.utc)
        try:
            await publisher.send_all([r[:4] for r in records])
        except KafkaUnavailable as exc:
            log.warning("kafka unavailable, answering 503", extra={"error": str(exc), "events": len(records)})
            return _error(503, "event log unavailable; nothing was accepted, retry later", detail=str(exc))
        ACK_SECONDS.observe((datetime.now(timezone.utc) - started).total_seconds())
        for r in records:
            ACCEPTED.labels(r[4]).inc()
        REQUESTS.labels("202").inc()
        return JSONResponse({"accepted": accepted, "rejected": rejected}, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": "crm-ingest",
                "kafka": "connected" if publisher.connected else "unavailable",
                "kafka_error": publisher.last_error}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {})["CloudEventIn"] = CLOUDEVENT_IN
        return schema

    app.openapi = openapi
    document_scopes(app)
    check_routes(app, OPEN_ROUTES)  # every route needs a scope unless it is listed as open
    return app
