"""The AsyncAPI 3.0.0 document of every Kafka topic, generated from the declarations (README: Topics, Event types).

Nothing here restates a shape declared elsewhere: the topics come from ``services.common.topics``,
the touchpoints from ``events.touchpoints`` (through ``events.schema``), the resolved events and the
identity markers from ``events.customer_events``, the snapshots and changes from ``events.feed``.
The indicator and dead-letter messages are built in ``services.processors`` (``indicator_stage``,
``records.deadletter``) from plain dicts, so their schemas are declared here, once, and the tests
validate the messages those functions really produce against them.

Payloads are AsyncAPI Schema objects (a superset of JSON Schema draft-07): a generated JSON Schema
loses ``$schema`` and ``$id``, and its ``$defs`` move to ``components/schemas``, where the
document's ``$ref``s resolve.

Operations are written from the side of the systems around the platform: channel systems *send*
touchpoints, downstream systems *receive* the rest.
"""
from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

import yaml

from events.customer_events import MARKER_TYPES, marker_schema, resolution_schema
from events.feed import CHANGE_DESCRIPTIONS, CHANGE_TYPES, CustomerSnapshot, change_schema
from events.kafka_binding import structured_headers
from events.schema import json_schema
from events.touchpoints import EVENT_TYPES
from projections import indicators
from services.common.settings import Settings
from services.common.topics import (CUSTOMER_CHANGES, CUSTOMER_EVENTS, CUSTOMER_STATE, DEADLETTER, INDICATORS,
                                    TOPICS, TOUCHPOINTS, TopicSpec)

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
CLOUDEVENTS_JSON = "application/cloudevents+json"

# -- messages built in services.processors, declared here ----------------------------------------

INDICATOR_DIMENSIONS = (indicators.ALL[0], *indicators.DIMENSIONS)
_SLICE = {
    "indicator": {"enum": list(indicators.INDICATORS)},
    "window": {"enum": list(indicators.WINDOWS)},
    "dimension": {"enum": list(INDICATOR_DIMENSIONS)},
    "member": {"type": "string", "description": "the channel, queue, agent or segment; empty for dimension all"},
    "value": {"type": ["number", "null"], "description": "the indicator's value; null without samples"},
    "count": {"type": "number", "minimum": 0,
              "description": "the indicator's denominator over the window (answers, calls offered, ...)"},
}

INDICATOR_UPDATED: dict[str, Any] = {
    "title": "indicator.updated",
    "description": "the live value of one indicator over one window for one slice, published whenever the "
                   "slice's sums change",
    "type": "object",
    "additionalProperties": False,
    "required": ["type", *_SLICE, "unit", "end"],
    "properties": {
        "type": {"const": "indicator.updated"},
        **_SLICE,
        "unit": {"enum": sorted({i.unit for i in indicators.INDICATORS.values()})},
        "end": {"type": "string", "format": "date-time", "description": "the end of the window (UTC)"},
    },
}
"""The value on ``crm.indicators`` built by ``IndicatorProjection._updates``."""

INDICATOR_ALERT: dict[str, Any] = {
    "title": "indicator.alert",
    "description": "a threshold rule (CRM_INDICATOR_ALERTS) started or stopped firing on a slice",
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "state", "rule", "description", *_SLICE, "threshold", "bound", "since", "id"],
    "properties": {
        "type": {"const": "indicator.alert"},
        "state": {"enum": ["firing", "resolved"]},
        "rule": {"type": "string", "description": "the rule's configured name"},
        "description": {"type": "string", "description": "the rule in words"},
        **_SLICE,
        "threshold": {"type": "number"},
        "bound": {"enum": ["below", "above"], "description": "the rule fires when the value is beyond the threshold"},
        "since": {"type": "string", "format": "date-time", "description": "when the state began (UTC)"},
        "id": {"type": "string", "description": "<rule>:<dimension>=<member>:<since>"},
    },
}
"""The value on ``crm.indicators`` built by ``IndicatorProjection._alerts``."""

DEADLETTER_KINDS = ("schema_violation", "unknown_type", "oversize", "undecodable", "processing_error")

DEAD_LETTER: dict[str, Any] = {
    "title": "dead letter",
    "description": "a consumed record that could not be processed, kept whole (raw bytes, position, reason) so "
                   "that it can be re-driven after a fix",
    "type": "object",
    "additionalProperties": False,
    "required": ["stage", "kind", "reason", "errors", "source", "key", "value_b64", "headers", "record_time"],
    "properties": {
        "stage": {"type": "string", "description": "the processing stage that gave up, e.g. identity, customer_view"},
        "kind": {"enum": list(DEADLETTER_KINDS)},
        "reason": {"type": "string", "maxLength": 2000},
        "errors": {"type": "array", "description": "what is wrong, field by field",
                   "items": {"type": "object", "required": ["field", "message"],
                             "properties": {"field": {"type": "string", "description": "a dotted path, e.g. "
                                                                                        "data.talk_seconds"},
                                            "message": {"type": "string"}}}},
        "source": {"type": "object", "additionalProperties": False, "required": ["topic", "partition", "offset"],
                   "description": "where the record was read",
                   "properties": {"topic": {"type": "string"}, "partition": {"type": "integer", "minimum": 0},
                                  "offset": {"type": "integer", "minimum": 0}}},
        "key": {"type": ["string", "null"], "description": "the record's key as UTF-8"},
        "value_b64": {"type": ["string", "null"], "contentEncoding": "base64",
                      "description": "the record's value, base64; null for an empty record"},
        "headers": {"type": "array", "description": "the record's headers: [name, base64 value]",
                    "items": {"type": "array", "minItems": 2, "maxItems": 2,
                              "items": [{"type": "string"}, {"type": "string", "contentEncoding": "base64"}]}},
        "record_time": {"type": "string", "format": "date-time", "description": "the record's Kafka timestamp"},
    },
}
"""The value on ``crm.deadletter`` built by ``services.processors.records.deadletter``."""

# -- who uses each topic --------------------------------------------------------------------------

_OPERATIONS: dict[str, tuple[str, str]] = {
    TOUCHPOINTS: ("send", "Channel systems (call-center CTI, web tracker, mail gateway, shop, survey tool) publish "
                          "touchpoints straight to Kafka instead of POST /v1/events on the collector, in structured "
                          "mode (value = the CloudEvent) or binary mode (ce_* headers, value = data)."),
    CUSTOMER_EVENTS: ("receive", "The per-customer ordered log of resolved touchpoints and identity markers: what "
                                 "the projections fold; a data warehouse may load it too."),
    CUSTOMER_STATE: ("receive", "Downstream systems (marketing automation, ERP, data warehouse) bootstrap from the "
                                "latest snapshot of every customer, then follow crm.customer-changes."),
    CUSTOMER_CHANGES: ("receive", "Downstream systems react to lifecycle, segment, satisfaction, value, profile "
                                  "and identity changes, in per-customer order."),
    INDICATORS: ("receive", "Live dashboards follow indicator values and threshold alerts."),
    DEADLETTER: ("receive", "Operators inspect and re-drive the records that could not be processed."),
}



def _one_of(names) -> str:
    return "(" + "|".join(re.escape(n) for n in names) + ")"


_INDICATOR_KEY = ("<indicator>|<window>|<dimension>=<member>, e.g. csat|1h|channel=phone",
                  rf"^{_one_of(indicators.INDICATORS)}\|{_one_of(indicators.WINDOWS)}"
                  rf"\|{_one_of(INDICATOR_DIMENSIONS)}=")
_ALERT_KEY = ("alert|<rule>|<dimension>=<member>, e.g. alert|csat-low|channel=phone",
              rf"^alert\|[^|]+\|{_one_of(INDICATOR_DIMENSIONS)}=")


class _Document:
    """Collects components while the channels are built; names every schema once."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def schema(self, name: str, schema: dict[str, Any]) -> dict[str, str]:
        """Add a (generated) JSON Schema under ``name``; its ``$defs`` become components too."""
        schema = dict(schema)
        schema.pop("$schema", None)
        schema.pop("$id", None)
        for def_name, definition in schema.pop("$defs", {}).items():
            self.schema(def_name, definition)
        schema = _point_to_components(schema)
        if self.schemas.get(name, schema) != schema:
            raise ValueError(f"two different schemas are both named {name!r}; rename one of the models")
        self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, message_id: str, spec: TopicSpec, *, name: str, title: str, summary: str,
                payload: dict[str, Any], content_type: str, description: str | None = None,
                headers: dict[str, Any] | None = None, key: tuple[str, str] | None = None,
                key_may_be_null: bool = False) -> str:
        """Add a message of ``spec``'s topic; ``key``: (the key's format, its pattern) when more precise
        than the topic's description."""
        key_schema: dict[str, Any] = {"type": ["string", "null"] if key_may_be_null else "string",
                                      "description": spec.key}
        if key:
            key_format, key_schema["pattern"] = key
            key_schema["description"] += f": {key_format}"
        message: dict[str, Any] = {"name": name, "title": title, "summary": summary}
        if description:
            message["description"] = description
        message["contentType"] = content_type
        if headers:
            message["headers"] = headers
        message["payload"] = payload
        message["bindings"] = {"kafka": {"key": key_schema, "bindingVersion": KAFKA_BINDING_VERSION}}
        self.messages[message_id] = message
        return message_id


def _point_to_components(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                    else _point_to_components(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_point_to_components(v) for v in node]
    return node


def _headers(content_type: str | None, versioned: bool = False) -> dict[str, Any]:
    """The Kafka record headers the platform sets: the content type and, on crm.customer-state, the version."""
    headers: dict[str, Any] = {"type": "object", "properties": {}}
    if content_type:
        headers["properties"]["content-type"] = {"type": "string", "examples": [content_type]}
    if versioned:
        headers["required"] = ["crm-version"]
        headers["properties"]["crm-version"] = {
            "type": "string", "pattern": "^[0-9]+$",
            "description": "the snapshot's version, so a consumer can tell a stale record"}
    return headers


def _messages(doc: _Document) -> dict[str, list[str]]:
    """Topic -> the ids of the messages it carries (every topic of TOPICS, or a KeyError)."""
    spec = {s.name: s for s in TOPICS}
    (_, structured), = structured_headers()
    headers = _headers(structured.decode())
    touchpoints = []
    for t in EVENT_TYPES.values():
        touchpoints.append(doc.message(
            f"touchpoint.{t.name}", spec[TOUCHPOINTS], name=t.name, title=f"{t.name} v{t.version}",
            summary=f"a touchpoint of the {t.channel} channel, data schema {t.dataschema}",
            description=" ".join((t.data.__doc__ or "").split()) or None,
            payload=doc.schema(f"touchpoint.{t.name}", json_schema(t)), content_type=CLOUDEVENTS_JSON))
    any_touchpoint = {"oneOf": [{"$ref": f"#/components/schemas/touchpoint.{t}"} for t in EVENT_TYPES]}
    resolved = doc.message(
        "customer-event.resolved", spec[CUSTOMER_EVENTS], name="resolved-touchpoint", title="resolved touchpoint",
        summary="a touchpoint of any type resolved to its customer: the CloudEvent plus the customerid, "
                "identifiers, refused and identityversion extensions",
        payload=doc.schema("customer-event.resolved",
                           {"allOf": [any_touchpoint, resolution_schema()]}),
        content_type=CLOUDEVENTS_JSON, headers=headers)
    markers = [doc.message(f"identity-marker.{m}", spec[CUSTOMER_EVENTS], name=m, title=f"{m} (identity marker)",
                           summary=marker_schema(m)["description"],
                           payload=doc.schema(f"identity-marker.{m}", marker_schema(m)),
                           content_type=CLOUDEVENTS_JSON, headers=headers)
               for m in MARKER_TYPES]
    snapshot = doc.message(
        "customer-state.snapshot", spec[CUSTOMER_STATE], name="customer-snapshot", title="customer snapshot",
        summary="the latest state of one customer (profile, lifecycle, value, segments, satisfaction)",
        payload=doc.schema(CustomerSnapshot.__name__, CustomerSnapshot.model_json_schema(
            by_alias=True, ref_template="#/$defs/{model}")), content_type="application/json",
        headers=_headers("application/json", versioned=True))
    tombstone = doc.message(
        "customer-state.tombstone", spec[CUSTOMER_STATE], name="customer-tombstone", title="tombstone",
        summary="a null value: the customer was merged away or erased; compaction removes the key",
        payload={"type": "null"}, content_type="application/json", headers=_headers(None, versioned=True))
    changes = [doc.message(f"change.{t}", spec[CUSTOMER_CHANGES], name=t, title=t, summary=CHANGE_DESCRIPTIONS[t],
                           payload=doc.schema(f"change.{t}", change_schema(t)), content_type=CLOUDEVENTS_JSON,
                           headers=headers)
               for t in CHANGE_TYPES]
    updated = doc.message("indicator.updated", spec[INDICATORS], name="indicator.updated", title="indicator.updated",
                          summary=INDICATOR_UPDATED["description"], payload=doc.schema("indicator.updated",
                                                                                        INDICATOR_UPDATED),
                          content_type="application/json", headers=_headers("application/json"), key=_INDICATOR_KEY)
    alert = doc.message("indicator.alert", spec[INDICATORS], name="indicator.alert", title="indicator.alert",
                        summary=INDICATOR_ALERT["description"], payload=doc.schema("indicator.alert", INDICATOR_ALERT),
                        content_type="application/json", headers=_headers("application/json"), key=_ALERT_KEY)
    dead = doc.message("deadletter", spec[DEADLETTER], name="deadletter", title="dead letter",
                       summary=DEAD_LETTER["description"], payload=doc.schema("deadletter", DEAD_LETTER),
                       content_type="application/json", headers=_headers("application/json"), key_may_be_null=True)
    return {TOUCHPOINTS: touchpoints, CUSTOMER_EVENTS: [resolved, *markers], CUSTOMER_STATE: [snapshot, tombstone],
            CUSTOMER_CHANGES: changes, INDICATORS: [updated, alert], DEADLETTER: [dead]}


def _topic_configuration(spec: TopicSpec) -> dict[str, Any]:
    """The spec's topic config in the Kafka binding's types (cleanup.policy defaults to Kafka's delete)."""
    config: dict[str, Any] = {"cleanup.policy": spec.config.get("cleanup.policy", "delete").split(",")}
    for name, value in spec.config.items():
        if name != "cleanup.policy":
            config[name] = int(value) if value.lstrip("-").isdigit() else value
    return config


def document(partitions: int, replication_factor: int = 1) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every topic, for topics of ``partitions`` partitions."""
    doc = _Document()
    messages = _messages(doc)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in TOPICS:
        ids = messages[spec.name]
        channels[spec.name] = {
            "address": spec.name,
            "title": spec.name,
            "description": f"Key: {spec.key}. Value: {spec.value}.",
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in ids},
            "bindings": {"kafka": {
                "topic": spec.name, "partitions": partitions, "replicas": replication_factor,
                "topicConfiguration": _topic_configuration(spec), "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        action, description = _OPERATIONS[spec.name]
        operations[f"{action}.{spec.name}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{spec.name}"},
            "title": f"{action} {spec.name}",
            "description": description,
            "messages": [{"$ref": f"#/channels/{spec.name}/messages/{m}"} for m in ids],
        }
    default_bootstrap = Settings.model_fields["kafka_bootstrap"].default
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "CRM platform: Kafka topics",
            "version": version("crm-platform"),
            "description": (
                "Every customer touchpoint (email, call, web, order, survey, ticket, profile, identity, consent) "
                "is a CloudEvents 1.0 event on crm.touchpoints. The platform resolves each to one customer "
                "(crm.customer-events, keyed by customer id), folds the log into read models, and publishes the "
                "latest state of every customer (crm.customer-state, compacted), the changes of that state "
                "(crm.customer-changes), live satisfaction indicators and alerts (crm.indicators) and the records "
                "it could not process (crm.deadletter). Only the per-customer order is relied on.\n\n"
                "This document is generated from the code (`crm asyncapi export`, `make schemas`); the query API "
                "serves it at /v1/asyncapi.json and /v1/asyncapi.yaml with the running partition count. The "
                "operations dashboard (/dashboard on the query API) shows the live indicators in English and "
                "Simplified Chinese (中文)."),
        },
        "servers": {
            "kafka": {
                "host": default_bootstrap,
                "protocol": "kafka",
                "title": "local default",
                "description": "The project's single-node Kafka broker started by `make up` (deploy/kafka.sh); "
                               "set CRM_KAFKA_BOOTSTRAP to use another.",
            },
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": doc.schemas, "messages": doc.messages},
    }


def to_yaml(doc: dict[str, Any]) -> str:
    """The document as YAML, in its own key order."""
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
