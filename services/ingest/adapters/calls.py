"""The call center: a CTI webhook for Twilio Voice, Amazon Connect and any PBX (docs/adapters/calls.md).

* ``POST /v1/hooks/twilio/voice``: Twilio's status callbacks, ``<Enqueue action>`` and
  ``<Dial><Queue url>`` requests, authenticated by ``X-Twilio-Signature`` (CRM_TWILIO_AUTH_TOKEN).
* ``POST /v1/hooks/amazon-connect``: Amazon Connect contact records (``events:write``).
* ``POST /v1/hooks/calls``: the generic JSON form (``events:write``).

The routes decode, verify and answer; the mapping is pure code in ``_calls_map.py``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from services.common.apikeys import EVENTS_WRITE
from services.common.auth import Caller, require_secret
from services.common.settings import Settings
from services.ingest.adapters._calls_map import (GenericCall, Mapped, Refused, connect_events, generic_event,
                                                 twilio_events, twilio_signature_valid)
from services.ingest.intake import ADAPTER_REQUESTS, Intake, read_body

TWILIO_PATH = "/v1/hooks/twilio/voice"
OPEN_ROUTES = frozenset({f"POST {TWILIO_PATH}"})
"""Twilio cannot send an API key: its requests are authenticated by their signature."""

Writer = Annotated[Caller, Depends(require_secret(EVENTS_WRITE))]  # servers only: 403 for a publishable key
ADAPTER = "calls"
MAX_FORM_BYTES = 64 * 1024  # a Twilio callback is a few hundred bytes
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    """A refusal as plain text: Twilio's debugger shows the body of a failed request as it is."""
    ADAPTER_REQUESTS.labels(ADAPTER, str(status)).inc()
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    if status != 202:  # Intake.accept counts the requests it answers
        ADAPTER_REQUESTS.labels(ADAPTER, str(status)).inc()
    return JSONResponse(body, status_code=status, headers=headers)


def _twiml(query: dict[str, str], note: str | None = None) -> Response:
    """The answer to a Twilio request: empty TwiML (the caller's leg ends normally after the queue),
    or ``<Redirect>`` to the ``next`` URL of the callback URL's query, where the caller's call goes on."""
    following = (query.get("next") or "").strip()
    body = EMPTY_TWIML
    if following and urlsplit(following).scheme in ("http", "https"):
        body = ('<?xml version="1.0" encoding="UTF-8"?><Response><Redirect method="POST">'
                f"{escape(following)}</Redirect></Response>")
    headers = {"X-CRM-Skipped": note.encode("ascii", "replace").decode()[:500]} if note else None
    return Response(body, media_type="application/xml", headers=headers)


def twilio_url(request: Request, public_url: str) -> str:
    """The URL Twilio requested: ``public_url`` + path + query behind a proxy, else the request's."""
    if not public_url:
        return str(request.url)
    query = request.url.query
    return public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")


async def _publish(intake: Intake, caller: Caller | None, events: list[dict[str, Any]],
                   skipped: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> JSONResponse:
    """Hand the events to the intake; the answer lists what was accepted, rejected and skipped."""
    if not events:
        if rejected:
            return _json(422, {"error": "no valid record in the request", "rejected": rejected, "skipped": skipped})
        return _json(200, {"accepted": [], "rejected": [], "skipped": skipped})
    outcome = await intake.accept(caller, events, single=len(events) == 1, adapter=ADAPTER)
    body = outcome.body()
    body["rejected"] = rejected + body.get("rejected", [])
    body["skipped"] = skipped
    return JSONResponse(body, status_code=outcome.status, headers=outcome.headers or None)


def parse_records(body: bytes) -> list[Any]:
    """Contact records as a forwarder sends them: one JSON object, a JSON array, or one object a line."""
    text = body.strip()
    if not text:
        raise Refused("", "the body is empty: send a contact record, an array of them or one a line")
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise Refused("", f"line {number} is not JSON: {exc}") from None
        return records
    return payload if isinstance(payload, list) else [payload]


def install(app: FastAPI, intake: Intake, settings: Settings) -> None:
    """Add the call-center routes."""

    @app.post(TWILIO_PATH, tags=["channel adapters"], response_class=Response, responses={
        200: {"description": "accepted (durable) or deliberately skipped (header X-CRM-Skipped says why): "
                             "empty TwiML, or <Redirect> to the callback URL's `next`",
              "content": {"application/xml": {}}},
        400: {"description": "not a Twilio Voice callback, or a value the platform refuses (text says which)"},
        401: {"description": "X-Twilio-Signature missing or not Twilio's"},
        404: {"description": "the adapter is not configured: set CRM_TWILIO_AUTH_TOKEN"},
        503: {"description": "event log unavailable; Twilio may retry (same ids are deduplicated)"}})
    async def twilio_voice(request: Request) -> Response:
        """Twilio Voice status callbacks, ``<Enqueue action>`` and ``<Dial><Queue url>`` requests
        (form-encoded, signed). ``?queue=...&agent=...`` on the URL name the queue and the agent."""
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        if not token:
            return _text(404, "the Twilio adapter is not configured: set CRM_TWILIO_AUTH_TOKEN to the auth token "
                              "of the Twilio account (Twilio Console, Account Info)")
        body = await read_body(request, MAX_FORM_BYTES)
        if body is None:
            return _text(413, f"a Twilio callback is at most {MAX_FORM_BYTES} bytes")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _text(415, "Twilio Voice callbacks are application/x-www-form-urlencoded; "
                              f"got {content_type or 'no Content-Type'}")
        try:
            params = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return _text(400, "the form body is not UTF-8")
        signature = request.headers.get("x-twilio-signature", "")
        url = twilio_url(request, settings.public_url)
        if not signature:
            return _text(401, "X-Twilio-Signature header missing: only Twilio may call this URL")
        if not twilio_signature_valid(token, url, params, signature):
            return _text(401, f"X-Twilio-Signature is not Twilio's signature of {url} with CRM_TWILIO_AUTH_TOKEN: "
                              "check the token, and behind a proxy set CRM_PUBLIC_URL to the URL Twilio calls")
        first: dict[str, str] = {}
        for name, value in params:
            first.setdefault(name, value)
        query = dict(request.query_params)
        try:
            mapped = twilio_events(first, query, datetime.now(timezone.utc), settings.default_region)
        except Refused as exc:
            return _text(400, f"{exc}")
        if not mapped.events:
            ADAPTER_REQUESTS.labels(ADAPTER, "200").inc()
            return _twiml(query, mapped.skipped)
        outcome = await intake.accept(None, mapped.events, single=len(mapped.events) == 1, adapter=ADAPTER)
        if outcome.durable:
            return _twiml(query)
        message = f"{outcome.error}: {outcome.reasons()}" if outcome.rejected else f"{outcome.error}"
        return PlainTextResponse(message + "\n", status_code=outcome.status, headers=outcome.headers or None)

    @app.post("/v1/hooks/amazon-connect", tags=["channel adapters"], status_code=202, responses={
        200: {"description": "nothing to record: every record skipped (e.g. CHAT contacts), reasons in `skipped`"},
        400: {"description": "the body is not JSON, or no event is valid"},
        422: {"description": "no record is a valid contact record; `rejected` says which field of which record"},
        503: {"description": "event log unavailable; retry (same ids are deduplicated)"}})
    async def amazon_connect(request: Request, caller: Writer) -> Response:
        """Amazon Connect contact records (CTR) as its Kinesis stream carries them: one JSON object, a
        JSON array of them, or one a line. Non-voice contacts are skipped with a reason."""
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:
            return _json(413, {"error": f"request body is over the limit of {settings.max_batch_bytes} bytes"})
        try:
            records = parse_records(body)
        except Refused as exc:
            return _json(400, {"error": exc.message})
        events: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            contact = record.get("ContactId") if isinstance(record, dict) else None
            try:
                mapped: Mapped = connect_events(record, settings.default_region)
            except Refused as exc:
                rejected.append({"index": index, "contact_id": contact, "reason": "invalid_record",
                                 "errors": [{"field": exc.field, "message": exc.message}]})
                continue
            if mapped.skipped:
                skipped.append({"index": index, "contact_id": contact, "reason": mapped.skipped})
            events += mapped.events
        return await _publish(intake, caller, events, skipped, rejected)

    @app.post("/v1/hooks/calls", tags=["channel adapters"], status_code=202, responses={
        400: {"description": "the body is not JSON, or the platform refuses an event (e.g. not a phone number)"},
        422: {"description": "a call is invalid: `errors` lists each index, field and problem; nothing accepted"},
        503: {"description": "event log unavailable; retry (same ids are deduplicated)"}})
    async def generic_calls(request: Request, caller: Writer) -> Response:
        """One call status, or a JSON array of them, in the generic form (docs/adapters/calls.md):
        ``call_id``, ``status`` (started|answered|ended|abandoned), ``customer_number``, ..."""
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:
            return _json(413, {"error": f"request body is over the limit of {settings.max_batch_bytes} bytes"})
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _json(400, {"error": f"malformed JSON: {exc}"})
        items = payload if isinstance(payload, list) else [payload]
        if not items:
            return _json(400, {"error": "the array is empty"})
        calls, errors = [], []
        for index, item in enumerate(items):
            try:
                calls.append(GenericCall.model_validate(item))
            except ValidationError as exc:
                errors += [{"index": index, "field": ".".join(str(p) for p in e["loc"]),
                            "message": e["msg"].removeprefix("Value error, ")} for e in exc.errors()]
        if errors:
            first = errors[0]
            where = f"call {first['index']}: " if len(items) > 1 else ""
            return _json(422, {"error": f"{where}{first['field'] or 'the call'}: {first['message']}", "errors": errors})
        now = datetime.now(timezone.utc)
        return await _publish(intake, caller, [generic_event(call, now) for call in calls], [], [])
