"""The CloudEvents HTTP binding as the collector reads it (events/http_binding.py) and the context
attributes as the CloudEvents spec constrains them (events/envelope.py)."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from events import http_binding
from events.envelope import InvalidEvent, validate

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def call(**over) -> dict:
    event = {"specversion": "1.0", "id": "c-1", "source": "urn:cti", "type": "call.ended",
             "time": "2026-11-20T09:00:00Z", "data": {"call_id": "c-1", "phone_number": "+8613800138000", "talk_seconds": 60}}
    event.update(over)
    return {k: v for k, v in event.items() if v is not None}


def refusal(event: dict, **kwargs) -> list[dict]:
    with pytest.raises(InvalidEvent) as exc:
        validate(event, received_at=NOW, **kwargs)
    return [e.as_dict() for e in exc.value.errors]


# ------------------------------------------------------------------------ the three modes (and plain JSON)

def test_binary_mode_reads_the_attributes_from_ce_headers_and_the_body_as_data():
    headers = {"content-type": "application/json; charset=utf-8", "ce-specversion": "1.0", "ce-id": "c-1",
               "ce-source": "urn:cti", "ce-type": "call.ended", "ce-time": "2026-11-20T09:00:00Z",
               "ce-subject": "%E5%AE%A2%E6%88%B7 42"}  # percent-encoded, as the binding says
    got = http_binding.read(headers, orjson.dumps({"call_id": "c-1", "phone_number": "+8613800138000", "talk_seconds": 60}))
    assert got.mode == "binary" and got.single and got.cloudevents
    [event] = got.items
    assert event["id"] == "c-1" and event["subject"] == "客户 42"
    assert event["datacontenttype"] == "application/json; charset=utf-8"
    tp = validate(event, received_at=NOW, require_specversion=True)
    assert tp.type == "call.ended" and tp.data.call_id == "c-1" and tp.subject == "客户 42"


def test_binary_mode_takes_json_data_only():
    headers = {"content-type": "text/plain", "ce-specversion": "1.0", "ce-id": "x", "ce-source": "s",
               "ce-type": "call.ended"}
    with pytest.raises(http_binding.Refused) as exc:
        http_binding.read(headers, b"hello")
    assert exc.value.status == 415 and "JSON data only" in exc.value.message


def test_structured_mode_is_one_event_and_batched_mode_an_array():
    one = http_binding.read({"content-type": "application/cloudevents+json; charset=utf-8"}, orjson.dumps(call()))
    assert one.mode == "structured" and one.items == [call()] and one.single and one.cloudevents
    many = http_binding.read({"content-type": "application/cloudevents-batch+json"},
                             orjson.dumps([call(), call(id="c-2")]))
    assert many.mode == "batched" and len(many.items) == 2 and not many.single and many.cloudevents
    for content_type, body in (("application/cloudevents+json", [call()]),
                               ("application/cloudevents-batch+json", call())):
        with pytest.raises(http_binding.Refused) as exc:
            http_binding.read({"content-type": content_type}, orjson.dumps(body))
        assert exc.value.status == 400 and content_type in exc.value.message


def test_plain_json_is_an_event_an_array_or_a_batch_object_as_before():
    for body, count in ((call(), 1), ([call(), call(id="c-2")], 2), ({"batch": [call()]}, 1)):
        got = http_binding.read({"content-type": "application/json"}, orjson.dumps(body))
        assert got.mode == "json" and len(got.items) == count and not got.cloudevents
    assert http_binding.read({}, orjson.dumps(call())).items == [call()]  # no Content-Type: the same


def test_other_media_types_answer_415_and_bad_json_400():
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        with pytest.raises(http_binding.Refused) as exc:
            http_binding.read({"content-type": content_type}, orjson.dumps(call()))
        assert exc.value.status == 415 and content_type in exc.value.message
    with pytest.raises(http_binding.Refused) as exc:
        http_binding.read({"content-type": "application/cloudevents+json"}, b"{nope")
    assert exc.value.status == 400 and "malformed JSON" in exc.value.message


# ------------------------------------------------------------------------ context attributes

def test_specversion_is_required_of_cloudevents_modes_and_named_when_missing():
    assert refusal(call(specversion=None), require_specversion=True) == [
        {"field": "specversion", "message": 'Field required: every CloudEvent names its specversion ("1.0")'}]
    validate(call(specversion=None), received_at=NOW)  # the plain form: it defaults to 1.0
    assert refusal(call(specversion="0.3"))[0]["field"] == "specversion"


@pytest.mark.parametrize("bad", ["2026-11-20T09:00Z", "2026-11-20 09:00:00Z", "2026-11-20T09:00:00",
                                 "2026-11-20", 1763629200, "20261120T090000Z"])
def test_time_must_be_rfc_3339_with_seconds_and_an_offset(bad):
    [error] = refusal(call(time=bad))
    assert error["field"] == "time" and "RFC 3339" in error["message"]


@pytest.mark.parametrize("good", ["2026-11-20T09:00:00Z", "2026-11-20T09:00:00.123456+08:00", "2026-11-20t09:00:00z"])
def test_rfc_3339_times_are_taken(good):
    assert validate(call(time=good), received_at=NOW).time.tzinfo is not None


def test_sentat_must_be_rfc_3339_too():
    [error] = refusal(call(sentat="2026-11-20T09:00Z"))
    assert error["field"] == "sentat" and "RFC 3339" in error["message"]


@pytest.mark.parametrize("attribute", ["subject", "dataschema", "datacontenttype"])
def test_optional_attributes_when_present_are_not_empty(attribute):
    [error] = refusal(call(**{attribute: ""}))
    assert error["field"] == attribute


def test_data_base64_is_binary_data_not_a_bad_extension_name():
    [error] = refusal({**call(data=None), "data_base64": "aGVsbG8="})
    assert error["field"] == "data_base64" and "JSON data only" in error["message"]
    assert "extension" not in error["message"]
    [both] = refusal({**call(), "data_base64": "aGVsbG8="})
    assert both["field"] == "data_base64" and "mutually exclusive" in both["message"]
