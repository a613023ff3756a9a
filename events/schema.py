"""JSON Schemas generated from the event declarations in ``events.touchpoints`` (never hand-written)."""
from __future__ import annotations

from typing import Any

from events.touchpoints import EVENT_TYPES, EventType

_ENVELOPE = {
    "specversion": {"const": "1.0"},
    "id": {"type": "string", "minLength": 1, "maxLength": 256, "description": "idempotency key within source"},
    "source": {"type": "string", "minLength": 1, "maxLength": 1024, "format": "uri-reference"},
    "time": {"type": "string", "format": "date-time"},
    "subject": {"type": "string"},
    "datacontenttype": {"const": "application/json"},
    "sentat": {"type": "string", "format": "date-time",
               "description": "sender's clock when sending; used to correct clock skew"},
}


def json_schema(event_type: EventType) -> dict[str, Any]:
    """The JSON Schema of one event type: the CloudEvents envelope with its typed ``data``."""
    data = event_type.data.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = data.pop("$defs", {})
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": event_type.dataschema,
        "title": f"{event_type.name} v{event_type.version}",
        "type": "object",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {**_ENVELOPE, "type": {"const": event_type.name},
                       "dataschema": {"const": event_type.dataschema}, "data": data},
    }
    if defs:
        schema["$defs"] = defs
    return schema


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every declared type."""
    return {f"{t.name}.v{t.version}.json": json_schema(t) for t in EVENT_TYPES.values()}
