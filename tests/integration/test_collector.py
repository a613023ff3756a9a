"""The collector against the real broker: 2xx only after Kafka acknowledged, clear errors otherwise."""
from __future__ import annotations

import orjson

from events.pii import PSEUDONYM

from services.common.topics import TOUCHPOINTS
from tests import http
from tests.feed import read_records
from tests.processes import free_port


def call(unique: str, n: int = 1, **data) -> dict:
    return {"id": f"{unique}-{n}", "source": "urn:test:cti", "type": "call.ended", "time": "2026-11-20T09:00:00Z",
            "data": {"call_id": f"c-{unique}", "phone_number": "+8613800138000", "talk_seconds": 60, **data}}


def records_with_id(platform, event_id: str) -> list:
    """The records of the platform's crm.touchpoints, to its end, with this event id."""
    return [r for r in read_records(platform.stack.kafka_bootstrap, [platform.topic(TOUCHPOINTS)])
            if _id(r.value) == event_id]


def _id(value: bytes | None) -> str | None:
    """The event id of a structured record, None for anything else."""
    try:
        return orjson.loads(value).get("id")
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        return None


def test_accepted_event_is_on_the_topic_keyed_by_its_primary_identifier(platform, unique):
    _, url = platform.collector()
    r = http.post(f"{url}/v1/events", json=call(unique))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": [f"{unique}-1"], "rejected": []}
    found = records_with_id(platform, f"{unique}-1")
    assert len(found) == 1
    # keyed by the phone's pseudonym (personal data is sealed before Kafka: events.pii)
    kind, _, pseudonym = found[0].key.decode().partition(":")
    assert kind == "phone" and PSEUDONYM.match(pseudonym)
    value = orjson.loads(found[0].value)
    assert value["dataschema"] == "urn:crm:schema:call.ended:1" and value["channel"] == "phone"
    assert value["data"]["phone_number"] == pseudonym and b"13800138000" not in found[0].value


def test_a_batch_with_bad_events_delivers_the_good_ones_and_says_what_is_wrong(platform, unique):
    _, url = platform.collector()
    bad_type = {**call(unique, 2), "type": "call.teleported"}
    bad_field = call(unique, 3, talk_seconds=-5)
    r = http.post(f"{url}/v1/events", json=[call(unique, 1), bad_type, bad_field])
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == [f"{unique}-1"]
    assert [(x["index"], x["reason"]) for x in body["rejected"]] == [(1, "unknown_type"), (2, "schema_violation")]
    assert body["rejected"][1]["errors"][0]["field"] == "data.talk_seconds"
    # read to the log's end, which holds the accepted event: the refused ones are not there
    assert len(records_with_id(platform, f"{unique}-1")) == 1 and records_with_id(platform, f"{unique}-3") == []


def test_nothing_valid_is_a_400_and_malformed_json_is_a_400(platform, unique):
    _, url = platform.collector()
    r = http.post(f"{url}/v1/events", json=[{"id": "x"}])
    assert r.status_code == 400 and r.json()["rejected"][0]["errors"]
    r = http.post(f"{url}/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def test_size_limits_answer_413(platform, unique):
    _, url = platform.collector()
    big = call(unique, notes="x" * 40_000)
    r = http.post(f"{url}/v1/events", json=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = http.post(f"{url}/v1/events", json=[call(unique, i, notes="y" * 15_000) for i in range(40)])
    assert r.status_code == 413


def test_unreachable_kafka_answers_503_with_retry_after(platform, unique):
    dead = f"127.0.0.1:{free_port()}"
    _, url = platform.collector(CRM_KAFKA_BOOTSTRAP=dead, CRM_KAFKA_ACK_TIMEOUT_S="2")
    r = http.post(f"{url}/v1/events", json=call(unique), timeout=30)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert "retry" in r.json()["error"]
    assert http.get(f"{url}/healthz").json()["kafka"] == "unavailable"


def test_metrics_are_exposed(platform, unique):
    _, url = platform.collector()
    http.post(f"{url}/v1/events", json=call(unique))
    text = http.get(f"{url}/metrics").text
    assert 'crm_ingest_events_accepted_total{type="call.ended"}' in text


def test_cloudevents_http_binary_structured_and_batched_modes_are_accepted(platform, unique):
    _, url = platform.collector()
    event = {**call(unique, 10), "specversion": "1.0"}
    binary = {"ce-specversion": "1.0", "ce-id": f"{unique}-11", "ce-source": "urn:test:cti",
              "ce-type": "call.ended", "ce-time": "2026-11-20T09:00:00Z", "content-type": "application/json"}
    r = http.post(f"{url}/v1/events", headers=binary, content=orjson.dumps(event["data"]))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == [f"{unique}-11"]
    r = http.post(f"{url}/v1/events", headers={"content-type": "application/cloudevents+json"},
                  content=orjson.dumps(event))
    assert r.status_code == 202 and r.json()["accepted"] == [f"{unique}-10"], r.text
    batch = [{**event, "id": f"{unique}-12"}, {**event, "id": f"{unique}-13"}]
    r = http.post(f"{url}/v1/events", headers={"content-type": "application/cloudevents-batch+json"},
                  content=orjson.dumps(batch))
    assert r.status_code == 202 and r.json()["accepted"] == [f"{unique}-12", f"{unique}-13"], r.text
    for n in (10, 11, 12, 13):
        [record] = records_with_id(platform, f"{unique}-{n}")
        assert orjson.loads(record.value)["type"] == "call.ended"


def test_cloudevents_modes_name_the_attribute_that_is_wrong_and_other_media_types_get_415(platform, unique):
    _, url = platform.collector()
    no_version = call(unique, 20)  # no specversion: a CloudEvents media type requires it
    r = http.post(f"{url}/v1/events", headers={"content-type": "application/cloudevents+json"},
                  content=orjson.dumps(no_version))
    assert r.status_code == 400
    assert r.json()["rejected"][0]["errors"][0]["field"] == "specversion"
    r = http.post(f"{url}/v1/events", json={**call(unique, 21), "time": "2026-11-20T09:00Z"})
    assert r.status_code == 400 and r.json()["rejected"][0]["errors"][0]["field"] == "time"
    r = http.post(f"{url}/v1/events", content=orjson.dumps(call(unique, 22)), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "text/plain" in r.json()["error"]
    assert records_with_id(platform, f"{unique}-22") == []


def test_health_says_kafka_is_connected_while_it_acknowledges(platform, unique):
    _, url = platform.collector()
    # before any event: the answer comes from a metadata request to the broker
    assert http.get(f"{url}/healthz").json()["kafka"] == "connected"
    assert http.post(f"{url}/v1/events", json=call(unique)).status_code == 202
    health = http.get(f"{url}/healthz").json()  # after an acknowledgement
    assert health["kafka"] == "connected" and health["kafka_error"] is None
