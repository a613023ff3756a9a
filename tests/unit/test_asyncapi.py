"""The AsyncAPI document: generated from the declarations, valid AsyncAPI 3.0.0, complete, and true of
the messages the production functions build."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft7Validator

from events.asyncapi import DEADLETTER_KINDS, document, to_yaml
from events.customer_events import (IDENTIFIED, MARKER_TYPES, MERGED, UNMERGED, IdentityMarker,
                                    resolved_cloudevent)
from events.customer_events import decode as decode_customer_event
from events.envelope import InvalidEvent, validate
from events.feed import CHANGE_TYPES, CustomerSnapshot, change_event
from events.touchpoints import EVENT_TYPES
from services.common.settings import Settings
from services.common.topics import (CUSTOMER_CHANGES, CUSTOMER_EVENTS, CUSTOMER_STATE, DEADLETTER, TOPICS,
                                    TOUCHPOINTS)
from services.processors.records import Record, deadletter
from services.simulator.journeys import JourneyGenerator

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_SCHEMA = REPO / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
DEFAULT_PARTITIONS = Settings.model_fields["partitions"].default
DEFAULT_REPLICAS = Settings.model_fields["replication_factor"].default
RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


# -- helpers, also used by the end-to-end test ------------------------------------------------------

def payload_validator(doc: dict[str, Any], message_id: str) -> Draft7Validator:
    """A validator of one message's payload; its ``$ref``s resolve inside the document."""
    message = doc["components"]["messages"][message_id]
    return Draft7Validator({"allOf": [message["payload"]], "components": doc["components"]})


def key_validator(doc: dict[str, Any], message_id: str) -> Draft7Validator:
    return Draft7Validator(doc["components"]["messages"][message_id]["bindings"]["kafka"]["key"])


def headers_validator(doc: dict[str, Any], message_id: str) -> Draft7Validator:
    return Draft7Validator(doc["components"]["messages"][message_id].get("headers", {}))


def problems(validator: Draft7Validator, instance: Any) -> list[str]:
    """Every error, down to the innermost ones of a oneOf/anyOf, as 'path: message'."""
    def leaves(errors):
        for e in errors:
            if e.context:
                yield from leaves(e.context)
            else:
                yield f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
    return list(leaves(validator.iter_errors(instance)))


class Contract:
    """The document's messages as validators: which messages of a topic accept a Kafka record."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.payloads = {m: payload_validator(doc, m) for m in doc["components"]["messages"]}
        self.keys = {m: key_validator(doc, m) for m in doc["components"]["messages"]}
        self.headers = {m: headers_validator(doc, m) for m in doc["components"]["messages"]}

    def messages(self, topic: str, key: str | None, value: Any, headers: dict[str, str] | None = None) -> list[str]:
        """The ids of the topic's messages whose key, payload (and headers, when given) schemas accept this
        record."""
        ids = [ref["$ref"].rsplit("/", 1)[1] for ref in self.doc["channels"][topic]["messages"].values()]
        return [m for m in ids if self.keys[m].is_valid(key) and self.payloads[m].is_valid(value)
                and (headers is None or self.headers[m].is_valid(headers))]


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads(json.dumps(document(DEFAULT_PARTITIONS, DEFAULT_REPLICAS)))


@pytest.fixture(scope="module")
def contract(doc) -> Contract:
    return Contract(doc)


@pytest.fixture(scope="module")
def official() -> Draft7Validator:
    schema = json.loads(OFFICIAL_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


# -- the document -----------------------------------------------------------------------------------

def test_the_committed_document_is_generated_from_the_declarations(doc):
    committed = yaml.safe_load((REPO / "docs" / "asyncapi.yaml").read_text())
    assert committed == doc, "docs/asyncapi.yaml is stale: run `make schemas` to regenerate it"


def test_the_yaml_reads_back_as_the_document(doc):
    assert yaml.safe_load(to_yaml(document(DEFAULT_PARTITIONS))) == doc


def test_the_document_is_valid_asyncapi_3(doc, official):
    assert doc["asyncapi"] == "3.0.0"
    assert problems(official, doc) == []
    # the official schema does check what it should: a cleanup policy that is not a list is refused
    broken = copy.deepcopy(doc)
    broken["channels"][CUSTOMER_STATE]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] = "compact"
    assert any("cleanup.policy" in p for p in problems(official, broken))


def test_every_reference_resolves(doc):
    refs = set(_refs(doc))
    assert any(r.startswith("#/channels/") for r in refs) and any(r.startswith("#/components/schemas/") for r in refs)
    for ref in refs:
        assert ref.startswith("#/"), ref
        _resolve(doc, ref)  # raises KeyError for a dangling reference


def test_every_topic_has_a_channel_with_its_kafka_settings(doc):
    assert list(doc["channels"]) == [spec.name for spec in TOPICS]
    for spec in TOPICS:
        channel = doc["channels"][spec.name]
        kafka = channel["bindings"]["kafka"]
        assert (channel["address"], kafka["topic"]) == (spec.name, spec.name)
        assert (kafka["partitions"], kafka["replicas"]) == (DEFAULT_PARTITIONS, DEFAULT_REPLICAS)
        assert kafka["bindingVersion"] == "0.5.0"
        for name, value in spec.config.items():
            expected = value.split(",") if name == "cleanup.policy" else int(value)
            assert kafka["topicConfiguration"][name] == expected
        assert channel["messages"], spec.name
        for message in channel["messages"].values():
            assert _resolve(doc, message["$ref"])["bindings"]["kafka"]["key"]["description"].startswith(spec.key)
    assert doc["channels"][CUSTOMER_STATE]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]
    assert doc["channels"][TOUCHPOINTS]["bindings"]["kafka"]["topicConfiguration"] == {
        "cleanup.policy": ["delete"], "retention.ms": -1}
    bigger = document(12, 3)
    assert {(c["bindings"]["kafka"]["partitions"], c["bindings"]["kafka"]["replicas"])
            for c in bigger["channels"].values()} == {(12, 3)}


def test_channel_systems_send_touchpoints_and_downstream_systems_receive_the_rest(doc):
    by_channel = {op["channel"]["$ref"].removeprefix("#/channels/"): op["action"] for op in doc["operations"].values()}
    assert by_channel == {spec.name: "send" if spec.name == TOUCHPOINTS else "receive" for spec in TOPICS}
    for op in doc["operations"].values():
        channel = op["channel"]["$ref"]
        assert {m["$ref"] for m in op["messages"]} == {f"{channel}/messages/{m}"
                                                       for m in _resolve(doc, channel)["messages"]}


def test_every_declared_type_has_a_message(doc):
    def names(topic: str) -> list[str]:
        return [_resolve(doc, m["$ref"])["name"] for m in doc["channels"][topic]["messages"].values()]

    assert names(TOUCHPOINTS) == list(EVENT_TYPES)
    assert names(CUSTOMER_CHANGES) == list(CHANGE_TYPES)
    assert set(MARKER_TYPES) < set(names(CUSTOMER_EVENTS))
    assert {"customer-snapshot", "customer-tombstone"} == set(names(CUSTOMER_STATE))
    assert names(DEADLETTER) == ["deadletter"]
    for spec in TOPICS:
        assert names(spec.name), spec.name


# -- real messages against the document -------------------------------------------------------------

def _more_touchpoints() -> list[dict]:
    """Types the simulator does not send."""
    base = {"specversion": "1.0", "source": "urn:crm:test", "time": "2026-11-20T08:00:00Z"}
    refs = [{"kind": "email", "value": "li.na@163.com"}, {"kind": "phone", "value": "+8613912345678"}]
    return [
        {**base, "id": "l-1", "type": "identity.linked", "data": {"identifiers": refs}},
        {**base, "id": "u-1", "type": "identity.unlinked", "data": {"identifiers": refs, "operator": "ops-1"}},
        {**base, "id": "e-1", "type": "customer.erasure_requested", "data": {"email": "li.na@163.com"}},
        *({**base, "id": f"o-{status}", "type": f"order.{status}",
           "data": {"order_id": "E1", "phone": "+8613912345678", **extra}} for status, extra in (
              ("delivered", {"carrier": "SF Express", "promised_at": "2026-11-19T18:00:00+08:00"}),
              ("cancelled", {"reason": "ordered twice"}), ("return_requested", {"reason": "broken"}),
              ("returned", {"tracking_number": "SF2"}),
              ("installation_scheduled", {"scheduled_for": "2026-11-21T09:00:00+08:00"}),
              ("installation_completed", {}))),
        {**base, "id": "f-1", "type": "fax.received",
         "data": {"fax_id": "FX-1", "from_number": "+86 21 6666 8888", "pages": 2,
                  "document": {"filename": "po.pdf", "content_type": "application/pdf", "size": 4000}}},
    ]


def test_touchpoints_as_sent_and_as_resolved_match_their_messages(doc, contract):
    per_type: dict[str, list[dict]] = {}
    for event in JourneyGenerator(seed=7, start=RECEIVED).stream(40):
        per_type.setdefault(event["type"], []).append(event)
    raw = [e for events in per_type.values() for e in events[:5]] + _more_touchpoints()
    assert {e["type"] for e in raw} == set(EVENT_TYPES), "give a sample of every touchpoint type"
    resolved = contract.payloads["customer-event.resolved"]
    validators = {t: contract.payloads[f"touchpoint.{t}"] for t in EVENT_TYPES}
    for event in raw:
        tp = validate(event, received_at=RECEIVED)
        assert problems(validators[tp.type], event) == [], event
        assert problems(validators[tp.type], tp.to_cloudevent()) == [], event
        ce = resolved_cloudevent(tp, "cust-1", tuple(i.key for i in tp.identifiers[1:]), 3)
        assert problems(resolved, ce) == [], ce
        assert contract.messages(CUSTOMER_EVENTS, "cust-1", ce) == ["customer-event.resolved"]
        assert contract.messages(TOUCHPOINTS, tp.primary_identifier.key, event) == [f"touchpoint.{tp.type}"]
    # and the schemas refuse what the platform refuses
    wrong = {**raw[0], "type": "call.ended", "data": {"call_id": "c", "phone_number": "+8613912345678"}}
    assert problems(validators["call.ended"], wrong)
    with pytest.raises(InvalidEvent):
        validate(wrong, received_at=RECEIVED)
    assert problems(resolved, validate(raw[0], received_at=RECEIVED).to_cloudevent())  # no customerid


def test_identity_markers_match_their_messages(doc, contract):
    at = datetime(2026, 11, 1, tzinfo=timezone.utc)
    markers = [
        IdentityMarker(MERGED, "cust-1", ("email:li.na@163.com",), 4, "cust-2", 17, "k1", "e1", "email:li.na@163.com",
                       "shared identifiers", at),
        IdentityMarker(UNMERGED, "cust-3", ("phone:+8613912345678",), 5, "cust-1", 18, "k2", "e2",
                       "phone:+8613912345678", "explicit unlink", at),
        IdentityMarker(IDENTIFIED, "cust-1", ("anonymous_id:ck-1",), 5, time=None),
    ]
    for marker in markers:
        ce = orjson.loads(orjson.dumps(marker.to_cloudevent()))
        assert decode_customer_event(orjson.dumps(ce)) == marker
        assert contract.messages(CUSTOMER_EVENTS, marker.customer_id, ce) == [f"identity-marker.{marker.type}"]
    extra = {**markers[0].to_cloudevent(), "surprise": 1}
    assert problems(contract.payloads[f"identity-marker.{MERGED}"], orjson.loads(orjson.dumps(extra)))


def _snapshot() -> dict:
    return CustomerSnapshot.model_validate({
        "customer_id": "cust-1", "version": 3, "as_of": "2026-11-20T08:00:00Z",
        "profile": {"display_name": "李娜", "traits": {"email": "li.na@163.com"},
                    "consent": {"marketing:email": True}},
        "lifecycle": {"stage": "customer", "since": "2026-11-20T08:00:00Z", "rule": "first order"},
        "value": {"orders": 1, "refunds": 0, "net_revenue": {"CNY": "3999.00"}, "monetary": "3999.00",
                  "currency": "CNY", "average_order_value": "3999.00", "first_order_at": "2026-11-20T08:00:00Z",
                  "last_order_at": "2026-11-20T08:00:00Z",
                  "rfm": {"recency": 5, "frequency": 1, "monetary": 4, "score": "514"}, "tier": "high", "ltv": "8000"},
        "segments": ["new"],
        "satisfaction": {"index": 80.0, "at_risk": False, "reasons": []},
    }).model_dump(mode="json", by_alias=True)


CHANGE_SAMPLES = {
    "lifecycle.changed": {"from": None, "to": "customer", "rule": "first order"},
    "segment.entered": {"segment": "new"},
    "segment.exited": {"segment": "prospects"},
    "satisfaction.at_risk": {"index": 20.0, "reasons": ["low_csat"]},
    "satisfaction.recovered": {"index": 80.0, "reasons": []},
    "satisfaction.changed": {"index": 70.0, "reasons": []},
    "value.changed": {"changed": ["orders", "ltv"]},
    "profile.changed": {"changed": {"name": {"from": None, "to": "李娜"}}},
    "customer.merged": {"into": "cust-0", "identifiers": ["email:li.na@163.com"]},
    "customer.unmerged": {"from": "cust-0", "identifiers": ["phone:+8613912345678"]},
    "customer.erased": {"erased_at": "2026-11-20T08:00:00Z", "event_id": "e-1", "subjects": 3},
}


def test_snapshots_tombstones_and_changes_match_their_messages(doc, contract):
    snapshot = _snapshot()
    assert contract.messages(CUSTOMER_STATE, "cust-1", snapshot) == ["customer-state.snapshot"]
    assert contract.messages(CUSTOMER_STATE, "cust-1", None) == ["customer-state.tombstone"]
    assert set(CHANGE_SAMPLES) == set(CHANGE_TYPES), "give a sample of every change type"
    for change_type, sample in CHANGE_SAMPLES.items():
        data = CHANGE_TYPES[change_type].model_validate(sample).model_dump(mode="json", by_alias=True)
        state = None if change_type in ("customer.merged", "customer.erased") else snapshot
        ce = change_event("cust-1", 3, change_type, "2026-11-20T08:00:00Z", data, state)
        assert contract.messages(CUSTOMER_CHANGES, "cust-1", ce) == [f"change.{change_type}"], change_type
    ce = change_event("cust-1", 3, "segment.entered", "2026-11-20T08:00:00Z", {"segment": "new"},
                      {**snapshot, "version": 0})
    assert problems(contract.payloads["change.segment.entered"], ce)  # the nested snapshot is checked


def test_dead_letters_match_their_message(doc, contract):
    record = Record("crm.touchpoints", 2, 41, b"email:li.na@163.com", b'{"type": "call.ended"}',
                    (("content-type", b"application/cloudevents+json"), ("trace", b"\xff")), 1_700_000_000_000)
    with pytest.raises(InvalidEvent) as refused:
        validate(orjson.loads(record.value), received_at=RECEIVED)
    exc = refused.value
    letters = [deadletter(record, stage="identity", kind=exc.kind, reason=str(exc),
                          errors=[e.as_dict() for e in exc.errors]),
               deadletter(Record("crm.customer-events", 0, 0, None, None), stage="customer_view",
                          kind="undecodable", reason="not a customer event" * 200),
               deadletter(record, stage="identity", kind="processing_error", reason="boom")]
    kinds = set()
    for letter in letters:
        assert letter.topic == DEADLETTER
        body = orjson.loads(letter.value)
        kinds.add(body["kind"])
        key = letter.key.decode() if letter.key is not None else None
        headers = {name: value.decode() for name, value in letter.headers}
        assert contract.messages(DEADLETTER, key, body, headers) == ["deadletter"], body
    assert kinds <= set(DEADLETTER_KINDS) and len(kinds) == 3
    body = orjson.loads(letters[0].value)
    assert problems(contract.payloads["deadletter"], {**body, "kind": "gremlins"})
