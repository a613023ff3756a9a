"""The CloudEvents HTTP protocol binding (1.0), the collector's side, as pure functions over a
request's media type, headers and body.

* binary mode: context attributes in ``ce-<name>`` headers (percent-encoded), the body is the
  ``data`` and ``Content-Type`` is ``datacontenttype``;
* structured mode: ``Content-Type: application/cloudevents+json``, the body is one event;
* batched mode: ``Content-Type: application/cloudevents-batch+json``, the body is an array of events.

Besides, the collector's own plain ``application/json`` form: one event, an array of them or
``{"batch": [...]}``. Any other media type is refused with 415 (the browser tracker's ``text/plain``
beacons have a route of their own, services/ingest/adapters/web.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import unquote

import orjson

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PLAIN = "application/json"


class Refused(ValueError):
    """The request as a whole cannot be read: ``status`` (400 or 415) and why."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


@dataclass(frozen=True)
class Request:
    """What a request holds once its mode is known: raw event dicts, not yet validated."""

    mode: str  # binary | structured | batched | json
    items: list[Any]
    single: bool

    @property
    def cloudevents(self) -> bool:
        """A CloudEvents mode: ``specversion`` is required of every event."""
        return self.mode != "json"


def media_type(content_type: str | None) -> str | None:
    """``application/json; charset=utf-8`` → ``application/json`` (None when there is no header)."""
    if content_type is None:
        return None
    return content_type.split(";")[0].strip().lower() or None


def _json_type(mt: str | None) -> bool:
    return mt is not None and (mt == PLAIN or mt.endswith("+json"))


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"malformed JSON: {exc}") from None


def read(headers: Mapping[str, str], body: bytes) -> Request:
    """The events of one ``POST /v1/events``. ``headers``: lower-case names (as Starlette gives
    them). Raises ``Refused`` for a body no mode can read."""
    ce = {name[3:]: unquote(value) for name, value in headers.items() if name.startswith("ce-")}
    content_type = headers.get("content-type")
    mt = media_type(content_type)
    if ce:  # binary mode: only ce- headers say so (the media type is the data's own)
        if content_type is not None and not _json_type(mt):
            raise Refused(415, f"binary-mode data of type {content_type!r} is not accepted: "
                               "the collector takes JSON data only (Content-Type: application/json)")
        event: dict[str, Any] = dict(ce)
        if content_type is not None:
            event["datacontenttype"] = content_type
        if body.strip():
            event["data"] = _loads(body)
        return Request("binary", [event], single=True)
    if mt == STRUCTURED:
        payload = _loads(body)
        if not isinstance(payload, dict):
            raise Refused(400, f"an {STRUCTURED} body is one event (a JSON object); "
                               f"send several as {BATCH} (a JSON array)")
        return Request("structured", [payload], single=True)
    if mt == BATCH:
        payload = _loads(body)
        if not isinstance(payload, list):
            raise Refused(400, f"an {BATCH} body is a JSON array of events")
        return Request("batched", payload, single=False)
    # no Content-Type: read as the plain form, as before (curl -d sends a form type, not none)
    if not (mt is None or mt == PLAIN):
        raise Refused(415, f"unsupported content type {content_type!r}: send {PLAIN} (an event, an array or "
                           f"{{\"batch\": [...]}}), {STRUCTURED}, {BATCH}, or binary mode (ce-* headers)")
    payload = _loads(body)
    if isinstance(payload, dict) and "batch" not in payload:
        return Request("json", [payload], single=True)
    if isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        return Request("json", payload["batch"], single=False)
    if isinstance(payload, list):
        return Request("json", payload, single=False)
    raise Refused(400, "the body must be an event object, an array of events or {\"batch\": [...]}")
