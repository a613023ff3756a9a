"""The collector's HTTP API: validate touchpoints and make them durable on ``crm.touchpoints``.

2xx means durable: the answer is sent only after Kafka acknowledged (acks=all) every accepted
event; when Kafka cannot be reached the answer is 503 with Retry-After and nothing is confirmed.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.settings import Settings
from services.common.publisher import KafkaPublisher
from events import http_binding
from services.common.apikeys import EVENTS_WRITE
from services.common.auth import Caller, check_routes, document_scopes, require
from services.ingest import adapters
from services.ingest.intake import RETRY_AFTER_S, Intake, read_body
from services.ingest.security import OPEN_ROUTES, CollectorGuard
from services.common.vault import Vault, from_settings as vault_from_settings

log = logging.getLogger(__name__)

REQUESTS = Counter("crm_ingest_requests_total", "requests to POST /v1/events", ["status"])

EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "description": "The CloudEvents HTTP binding: structured (application/cloudevents+json, one event), "
                       "batched (application/cloudevents-batch+json, an array) or binary mode (ce-id, ce-source, "
                       "ce-type, ce-specversion, ... headers; the body is the data, application/json). "
                       "Also plain application/json: one event, an array of them, or {\"batch\": [...]}.",
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/CloudEventIn"},
                {"type": "array", "items": {"$ref": "#/components/schemas/CloudEventIn"}},
                {"type": "object", "properties": {"batch": {"type": "array",
                                                            "items": {"$ref": "#/components/schemas/CloudEventIn"}}}},
            ]}},
            "application/cloudevents+json": {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
            "application/cloudevents-batch+json": {"schema": {"type": "array",
                                                              "items": {"$ref": "#/components/schemas/CloudEvent"}}},
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


# the CloudEvents media types: specversion is REQUIRED there (the plain form lets it default to 1.0)
CLOUDEVENT = {**CLOUDEVENT_IN, "required": ["specversion", *CLOUDEVENT_IN["required"]]}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    REQUESTS.labels(str(status)).inc()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(settings: Settings, publisher: KafkaPublisher, vault: Vault | None = None) -> FastAPI:
    """The collector app, wired with its settings, Kafka publisher and key vault."""
    vault = vault or vault_from_settings(settings)
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        vault.listen(settings.pg_dsn)
        yield
        vault.close()
        publisher.close()
        intake.close()
        guard.close()

    app = FastAPI(title="CRM collector", version="1", lifespan=lifespan,
                  description="Accepts customer touchpoints as CloudEvents and makes them durable on Kafka.")
    app.state.publisher = publisher
    # API keys, rate limits counted in events, publishable keys and CORS (services/ingest/security.py)
    guard = CollectorGuard(app, settings, lambda status: REQUESTS.labels(str(status)).inc())
    intake = Intake(settings, publisher, vault, guard, on_status=lambda status: REQUESTS.labels(str(status)).inc())
    app.state.intake = intake
    open_routes = OPEN_ROUTES | adapters.install_all(app, intake, settings)  # the channel adapters
    app.state.open_routes = open_routes

    @app.post("/v1/events", status_code=202, openapi_extra=EVENTS_BODY, responses={
        202: {"description": "accepted events are durable in Kafka; rejected ones are listed with reasons"},
        400: {"description": "malformed JSON, or no event in the request is valid"},
        413: {"description": "the request or an event is over the size limit"},
        415: {"description": "a media type other than application/json, application/cloudevents+json, application/cloudevents-batch+json (binary mode: JSON data only)"},
        503: {"description": "Kafka unavailable; retry after Retry-After seconds (same ids are deduplicated)"},
    })
    async def post_events(request: Request, caller: Annotated[Caller, Depends(require(EVENTS_WRITE))]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdecimal() and int(length) > settings.max_batch_bytes:
            return _error(413, f"request body is {length} bytes; the limit is {settings.max_batch_bytes} bytes")
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:  # chunked, without a length: stopped reading at the limit
            return _error(413, f"request body is over the limit of {settings.max_batch_bytes} bytes")
        try:  # which CloudEvents HTTP mode (events/http_binding.py)
            got = http_binding.read(request.headers, body)
        except http_binding.Refused as exc:
            return _error(exc.status, exc.message)
        outcome = await intake.accept(caller, got.items, single=got.single, cloudevents=got.cloudevents)
        return outcome.response()

    @app.exception_handler(StarletteHTTPException)  # the routing's 404 and 405: errors are {"error": ...} here too
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        REQUESTS.labels(str(exc.status_code)).inc()
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        reachable, error = await asyncio.to_thread(publisher.health)  # may ask the broker
        return {"status": "ok", "service": "crm-ingest",
                "kafka": "connected" if reachable else "unavailable", "kafka_error": error}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original_openapi()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["CloudEventIn"], schemas["CloudEvent"] = CLOUDEVENT_IN, CLOUDEVENT
        return schema

    app.openapi = openapi
    document_scopes(app)
    check_routes(app, open_routes)  # every route needs a scope unless it is listed as open
    return app
