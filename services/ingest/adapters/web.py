"""The web channel: the tracker script web pages load, and the intake of the events it sends.

* ``GET /v1/tracker.js`` (open): ``static/tracker.js`` with this collector's ``tracker_cookie_days``
  written in; browsers may cache it 5 minutes, then revalidate it by its ETag (304).
* ``POST /v1/tracker/events?key=crm_pk_...`` (open: it checks the key itself): web.* CloudEvents as
  ``{"batch": [...]}`` or an array, sent as ``text/plain`` (what ``navigator.sendBeacon`` sends, and
  a type browsers send cross-origin without a preflight) or ``application/json``. Beacons cannot
  set headers, so the publishable key travels in the URL; it is accepted only from the origins it
  allows (the answer then carries ``Access-Control-Allow-Origin``). A secret key is refused here
  whatever it could do: it must never be in a web page.
* ``OPTIONS /v1/tracker/events``: the CORS preflight of callers that send ``application/json``.
"""
from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from services.common import apikeys
from services.common.apikeys import EVENTS_WRITE, PUBLISHABLE, SECRET
from services.common.auth import AuthProblem, Authenticator, Caller, client_ip, presented_key
from services.common.settings import Settings
from services.ingest.intake import ADAPTER_REQUESTS, Intake, read_body
from services.ingest.security import preflight

SCRIPT_PATH = "/v1/tracker.js"
EVENTS_PATH = "/v1/tracker/events"
OPEN_ROUTES = frozenset({f"GET {SCRIPT_PATH}", f"POST {EVENTS_PATH}", f"OPTIONS {EVENTS_PATH}"})

SCRIPT_FILE = Path(__file__).resolve().parent.parent / "static" / "tracker.js"
_COOKIE_DAYS = re.compile(r"const COOKIE_DAYS = \d+;")
BODY_TYPES = ("text/plain", "application/json")

MISSING_KEY = ("missing publishable key: load the tracker with data-key=\"crm_pk_...\", or send "
               f"POST {EVENTS_PATH}?key=crm_pk_...")
SECRET_IN_PAGE = ("a secret key (crm_sk_...) must never be in a web page or a URL, where anyone can read it: "
                  "use a publishable key (crm keys create --publishable --origin https://your.shop), and revoke "
                  "this secret key if it was ever published")


class BadBatch(ValueError):
    """A tracker request body that holds no batch of events (the message says what is wrong)."""


def render_script(source: str, cookie_days: int) -> bytes:
    """The tracker as served: ``source`` with the anonymous-id cookie's lifetime written in."""
    rendered, count = _COOKIE_DAYS.subn(f"const COOKIE_DAYS = {int(cookie_days)};", source)
    if count != 1:
        raise RuntimeError(f"{SCRIPT_FILE} must declare `const COOKIE_DAYS = <days>;` once (found {count})")
    return rendered.encode()


def etag_of(content: bytes) -> str:
    return '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names this ETag (weak comparison, as RFC 9110 wants for it)."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def parse_batch(body: bytes) -> tuple[list[Any], bool]:
    """(events, single) of a tracker body: ``{"batch": [...]}``, an array, or one event object."""
    if not body.strip():
        raise BadBatch("the body is empty: send {\"batch\": [<CloudEvent>, ...]}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBatch(f"malformed JSON: {exc}") from None
    if isinstance(payload, list):
        return payload, False
    if isinstance(payload, dict) and "batch" in payload:
        if not isinstance(payload["batch"], list):
            raise BadBatch("\"batch\" must be an array of CloudEvents")
        return payload["batch"], False
    if isinstance(payload, dict):
        return [payload], True
    raise BadBatch("the body must be {\"batch\": [...]}, an array of CloudEvents or one CloudEvent")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _presenting(request: Request, presented: str) -> Request:
    """The request as if it presented ``presented`` as its bearer key (the same scope and state, so
    the caller the authentication sets is the original request's, which the CORS middleware reads)."""
    request.scope.setdefault("state", {})
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"authorization", b"x-api-key")]
    headers.append((b"authorization", b"Bearer " + presented.encode()))
    return Request({**request.scope, "headers": headers}, request.receive)


async def authenticate(request: Request) -> Caller:
    """The publishable key's caller (``?key=``, else a header), or an ``AuthProblem``: 401 no or an
    unknown key, 403 a secret key or an origin the key does not allow, 429, 503."""
    auth: Authenticator = request.app.state.auth
    presented = request.query_params.get("key", "").strip() or presented_key(request)
    if not presented:
        auth.limit([auth.ip_want(client_ip(request))])
        raise AuthProblem(401, MISSING_KEY)
    parsed = apikeys.parse(presented)
    if parsed is not None and parsed.kind == SECRET:
        auth.limit([auth.ip_want(client_ip(request))])
        raise AuthProblem(403, SECRET_IN_PAGE)
    # the collector's own checks (cache, key store, failed attempts per IP, the key's origins)
    caller = await auth.authenticate(_presenting(request, presented))
    if caller.key.kind != PUBLISHABLE or not caller.allows(EVENTS_WRITE):
        request.state.caller = None
        raise AuthProblem(403, SECRET_IN_PAGE)
    return caller


def install(app: FastAPI, intake: Intake, settings: Settings) -> None:
    script = render_script(SCRIPT_FILE.read_text(encoding="utf-8"), settings.tracker_cookie_days)
    compressed = gzip.compress(script, compresslevel=9, mtime=0)
    etag = etag_of(script)
    script_headers = {"Cache-Control": "public, max-age=300", "ETag": etag, "Vary": "Accept-Encoding",
                      "Access-Control-Allow-Origin": "*", "X-Content-Type-Options": "nosniff"}

    def refused(status: int, message: str) -> JSONResponse:
        ADAPTER_REQUESTS.labels("web", str(status)).inc()
        return JSONResponse({"error": message}, status_code=status)

    @app.get(SCRIPT_PATH, tags=["web tracker"], response_class=Response, responses={
        200: {"content": {"application/javascript": {}}, "description": "the tracker script"},
        304: {"description": "the script is unchanged (If-None-Match)"}})
    async def tracker_script(request: Request) -> Response:
        """The web tracker: load it with `<script async src=".../v1/tracker.js" data-key="crm_pk_...">`."""
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=script_headers)
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            return Response(compressed, media_type="application/javascript; charset=utf-8",
                            headers={**script_headers, "Content-Encoding": "gzip"})
        return Response(script, media_type="application/javascript; charset=utf-8", headers=script_headers)

    @app.post(EVENTS_PATH, tags=["web tracker"], status_code=202, responses={
        202: {"description": "accepted events are durable; rejected ones are listed with reasons"},
        400: {"description": "not a batch of CloudEvents, or none of them valid"},
        401: {"description": "no publishable key, or an unknown or revoked one"},
        403: {"description": "a secret key, or an origin the key does not allow"},
        413: {"description": "the body is over the batch limit"},
        415: {"description": "a body type other than text/plain or application/json"},
        429: {"description": "a rate limit; retry after Retry-After seconds"},
        503: {"description": "the event log or the key store is unavailable; retry after Retry-After"},
    })
    async def tracker_events(request: Request, key: Annotated[str | None, Query(
            description="the publishable key, crm_pk_... (beacons cannot send headers)")] = None) -> Response:
        """Web events from the tracker (`{"batch": [...]}` as text/plain, e.g. from sendBeacon), with
        the publishable key in the URL: `?key=crm_pk_...`."""
        caller = await authenticate(request)
        kind = media_type(request)
        if kind and kind not in BODY_TYPES:
            return refused(415, f"the body must be text/plain or application/json (JSON), not {kind}")
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:
            return refused(413, f"request body is over the limit of {settings.max_batch_bytes} bytes")
        try:
            items, single = parse_batch(body)
        except BadBatch as exc:
            return refused(400, str(exc))
        outcome = await intake.accept(caller, items, single=single, adapter="web")
        return outcome.response()

    @app.options(EVENTS_PATH, include_in_schema=False)
    async def tracker_preflight(request: Request) -> Response:
        return await preflight(request, request.app.state.auth.store)
