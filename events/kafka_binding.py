"""The CloudEvents Kafka protocol binding, both modes, as pure functions over (value, headers).

* structured mode: the value is the whole CloudEvent as JSON
  (``content-type: application/cloudevents+json`` header, or no header and a JSON object with
  ``specversion``);
* binary mode: attributes in ``ce_*`` headers, the value is the ``data`` (JSON), the
  ``content-type`` header is ``datacontenttype``.
"""
from __future__ import annotations

from typing import Any, Iterable

import orjson

from events.envelope import FieldError, InvalidEvent

Headers = Iterable[tuple[str, bytes | None]]


def _header_map(headers: Headers | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers or ():
        try:
            out[name.lower()] = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("undecodable", [FieldError(f"header {name}", "header value is not UTF-8")]) from None
    return out


def decode(value: bytes | None, headers: Headers | None = None) -> dict[str, Any]:
    """Decode a Kafka record into a raw structured CloudEvent dict (not yet validated)."""
    hmap = _header_map(headers)
    if "ce_specversion" in hmap:
        event: dict[str, Any] = {k[3:]: v for k, v in hmap.items() if k.startswith("ce_")}
        if "content-type" in hmap:
            event["datacontenttype"] = hmap["content-type"]
        if value:
            try:
                event["data"] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InvalidEvent("undecodable", [FieldError("data", f"binary-mode data is not JSON: {exc}")]) from None
        return event
    if value is None:
        raise InvalidEvent("undecodable", [FieldError("", "empty record (tombstone) on an event topic")])
    content_type = hmap.get("content-type", "application/cloudevents+json")
    if "json" not in content_type:
        raise InvalidEvent("undecodable", [FieldError("content-type", f"unsupported content type {content_type!r}")])
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("undecodable", [FieldError("", f"value is not JSON: {exc}")]) from None
    if not isinstance(event, dict):
        raise InvalidEvent("undecodable", [FieldError("", "structured-mode value must be a JSON object")])
    return event


def structured_headers() -> list[tuple[str, bytes]]:
    return [("content-type", b"application/cloudevents+json; charset=utf-8")]


def binary_record(event: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode a structured CloudEvent dict in binary mode: (value, headers)."""
    headers = [("content-type", str(event.get("datacontenttype", "application/json")).encode())]
    for name, val in event.items():
        if name in ("data", "datacontenttype"):
            continue
        headers.append((f"ce_{name}", str(val).encode()))
    return orjson.dumps(event.get("data", {})), headers
