"""The call-center adapter's pure parts: Twilio's signature, and Twilio / Amazon Connect / generic
callbacks mapped to call.* events the platform accepts."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from events.envelope import validate
from services.ingest.adapters._calls_map import (GenericCall, Refused, connect_events, generic_event,
                                                 twilio_events, twilio_signature, twilio_signature_valid)
from services.ingest.adapters.calls import parse_records

NOW = datetime(2026, 11, 3, 2, 0, tzinfo=timezone.utc)
CUSTOMER = "+8613912345678"


def accepted(events: list[dict]) -> list[dict]:
    """The events, checked by the collector's own validation (data model, identifiers)."""
    for event in events:
        validate(event, received_at=NOW, default_region="CN")
    return events


# --- Twilio's signature ---------------------------------------------------------------------------

# Twilio's published example (TwilioDevEd/api-snippets, security/signature_validation): auth token
# 12345, this URL and these POST parameters are signed GvWf1cFY/Q7PnoempGyD5oXAezc=
EXAMPLE_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
EXAMPLE_PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675310"), ("Digits", "1234"),
                  ("From", "+14158675310"), ("To", "+18005551212")]


def test_the_signature_is_twilios_published_example():
    assert twilio_signature("12345", EXAMPLE_URL, EXAMPLE_PARAMS) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    # the order the form arrives in does not matter: names are sorted
    assert twilio_signature_valid("12345", EXAMPLE_URL, list(reversed(EXAMPLE_PARAMS)), "GvWf1cFY/Q7PnoempGyD5oXAezc=")


def test_a_signature_over_anything_else_is_refused():
    good = "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert not twilio_signature_valid("12346", EXAMPLE_URL, EXAMPLE_PARAMS, good)
    assert not twilio_signature_valid("12345", EXAMPLE_URL.replace("foo=1", "foo=2"), EXAMPLE_PARAMS, good)
    assert not twilio_signature_valid("12345", EXAMPLE_URL, EXAMPLE_PARAMS[:-1] + [("To", "+18005551213")], good)
    assert not twilio_signature_valid("12345", EXAMPLE_URL, EXAMPLE_PARAMS + [("Extra", "")], good)
    assert not twilio_signature_valid("12345", EXAMPLE_URL, EXAMPLE_PARAMS, "")


def test_the_default_port_may_or_may_not_be_in_the_url_twilio_signed():
    signed_with_port = twilio_signature("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", EXAMPLE_PARAMS)
    assert twilio_signature_valid("12345", EXAMPLE_URL, EXAMPLE_PARAMS, signed_with_port)
    assert twilio_signature_valid("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", EXAMPLE_PARAMS,
                                  "GvWf1cFY/Q7PnoempGyD5oXAezc=")
    assert not twilio_signature_valid("12345", "https://mycompany.com:8443/myapp.php?foo=1&bar=2", EXAMPLE_PARAMS,
                                      "GvWf1cFY/Q7PnoempGyD5oXAezc=")


# --- Twilio's callbacks ---------------------------------------------------------------------------

def twilio(status: str | None = None, **params: str) -> dict[str, str]:
    base = {"CallSid": "CAa1", "AccountSid": "ACx", "From": CUSTOMER, "To": "+861088886666", "Called": "+861088886666",
            "Caller": CUSTOMER, "Direction": "inbound", "ApiVersion": "2010-04-01"}
    if status:
        base |= {"CallStatus": status, "CallbackSource": "call-progress-events", "SequenceNumber": "0",
                 "Timestamp": "Tue, 03 Nov 2026 01:00:00 +0000"}
    return base | params


QUEUE = {"queue": "delivery", "agent": "agent-li"}


def test_an_inbound_call_queued_answered_and_completed():
    ringing = accepted(twilio_events(twilio("ringing"), QUEUE, NOW).events)
    assert [(e["id"], e["type"], e["source"]) for e in ringing] == [
        ("twilio:CAa1:started", "call.started", "urn:crm:cti:twilio:ACx")]
    assert ringing[0]["time"] == "2026-11-03T01:00:00+00:00"
    assert ringing[0]["data"] == {"call_id": "CAa1", "phone_number": CUSTOMER, "direction": "inbound", "queue": "delivery",
                                  "agent": "agent-li", "properties": {"platform": "twilio", "native_status": "ringing"}}
    # Twilio answers the call to run the TwiML; the agent's answer comes from the queue
    answered_by_twilio = twilio_events(twilio("in-progress"), QUEUE, NOW)
    assert answered_by_twilio.events == [] and "Enqueue" in answered_by_twilio.skipped
    bridged = accepted(twilio_events(twilio(QueueResult="bridged", QueueSid="QU1", QueueTime="35"), QUEUE, NOW).events)
    assert [(e["id"], e["type"], e["data"]["wait_seconds"], e["time"]) for e in bridged] == [
        ("twilio:CAa1:answered", "call.answered", 35.0, NOW.isoformat())]
    completed = accepted(twilio_events(twilio("completed", CallDuration="245"), QUEUE, NOW).events)
    # the start again (deduplicated by its id), but no answer: the queue reported it
    assert [e["id"] for e in completed] == ["twilio:CAa1:started", "twilio:CAa1:ended"]
    ended = completed[1]
    assert (ended["data"]["talk_seconds"], ended["data"]["disposition"], ended["time"]) == (
        245.0, "completed", "2026-11-03T01:00:00+00:00")


def test_a_number_reporting_only_completed_calls_still_gives_the_whole_call():
    events = accepted(twilio_events(twilio("completed", CallDuration="245"), {"agent": "agent-li"}, NOW).events)
    assert [(e["id"], e["time"], e["data"].get("wait_seconds")) for e in events] == [
        ("twilio:CAa1:started", "2026-11-03T00:55:55+00:00", None),
        ("twilio:CAa1:answered", "2026-11-03T00:55:55+00:00", 0.0),
        ("twilio:CAa1:ended", "2026-11-03T01:00:00+00:00", None)]


def test_initiated_and_ringing_are_one_start():
    ids = {twilio_events(twilio(s, Direction="outbound-api"), {}, NOW).events[0]["id"]
           for s in ("queued", "initiated", "ringing")}
    assert ids == {"twilio:CAa1:started"}


def test_the_dequeue_request_answers_with_the_agent_of_its_url_and_the_same_id_as_the_enqueue_action():
    dequeued = accepted(twilio_events(twilio(QueueSid="QU1", QueueTime="12", DequeingCallSid="CAagent"),
                                      {"queue": "delivery", "agent": "agent-wang"}, NOW).events)
    assert [(e["id"], e["data"]["wait_seconds"], e["data"]["agent"]) for e in dequeued] == [
        ("twilio:CAa1:answered", 12.0, "agent-wang")]


def test_a_caller_hanging_up_in_the_queue_abandons():
    events = accepted(twilio_events(twilio(QueueResult="hangup", QueueSid="QU1", QueueTime="40"), {}, NOW).events)
    assert [(e["id"], e["type"], e["data"]["wait_seconds"], e["data"]["queue"]) for e in events] == [
        ("twilio:CAa1:abandoned", "call.abandoned", 40.0, "QU1")]  # no queue in the URL: the queue's sid
    left = twilio_events(twilio(QueueResult="leave", QueueTime="40"), {}, NOW)
    assert left.events == [] and "leave" in left.skipped


def test_an_unanswered_call_abandons_inbound_and_ends_outbound():
    inbound = accepted(twilio_events(twilio("canceled", CallDuration="0"), {}, NOW).events)
    assert [(e["type"], e["data"].get("wait_seconds")) for e in inbound] == [("call.started", None),
                                                                            ("call.abandoned", 0.0)]
    outbound = accepted(twilio_events(twilio("busy", Direction="outbound-api", From="+861088886666",
                                             To=CUSTOMER), {}, NOW).events)
    assert [(e["type"], e["data"]["phone_number"], e["data"]["direction"], e["data"].get("talk_seconds"),
             e["data"].get("disposition")) for e in outbound] == [("call.started", CUSTOMER, "outbound", None, None),
                                                                  ("call.ended", CUSTOMER, "outbound", 0.0, "busy")]


def test_an_outbound_call_is_answered_when_the_customer_picks_up_even_with_a_queue():
    events = accepted(twilio_events(twilio("in-progress", Direction="outbound-dial", From="+861088886666",
                                           To=CUSTOMER), QUEUE, NOW).events)
    assert [(e["type"], e["data"]["phone_number"], e["data"]["wait_seconds"]) for e in events] == [
        ("call.answered", CUSTOMER, 0.0)]


def test_an_unqueued_inbound_answer_waits_zero():
    events = accepted(twilio_events(twilio("in-progress"), {"agent": "agent-li"}, NOW).events)
    assert [(e["type"], e["data"]["wait_seconds"], e["data"]["agent"]) for e in events] == [
        ("call.answered", 0.0, "agent-li")]


@pytest.mark.parametrize("caller", ["anonymous", "+266696687", "client:agent-li", "sip:alice@example.com", ""])
def test_a_withheld_caller_is_skipped_with_the_reason(caller):
    mapped = twilio_events(twilio("ringing", From=caller), {}, NOW)
    assert mapped.events == [] and "customer" in mapped.skipped


@pytest.mark.parametrize("params, field", [
    (twilio("ringing", CallSid=""), "CallSid"),
    (twilio("ringing", AccountSid=""), "AccountSid"),
    (twilio(), "CallStatus"),
    (twilio("ringing", Direction="sideways"), "Direction"),
    (twilio("exploded"), "CallStatus"),
    (twilio("ringing", Timestamp="yesterday"), "Timestamp"),
    (twilio("completed", CallDuration="long"), "CallDuration"),
    (twilio("completed", CallDuration="-3"), "CallDuration"),
    (twilio(QueueResult="teleported"), "QueueResult"),
    (twilio(QueueResult="bridged", QueueTime="x"), "QueueTime"),
])
def test_bad_twilio_input_is_refused_naming_the_parameter(params, field):
    with pytest.raises(Refused) as exc:
        twilio_events(params, {}, NOW)
    assert exc.value.field == field and field in str(exc.value)


# --- Amazon Connect ---------------------------------------------------------------------------------

def ctr(**changes) -> dict:
    """A contact record as Amazon Connect streams it (fields not used here trimmed)."""
    record = {
        "AWSAccountId": "123456789012", "AWSContactTraceRecordFormatVersion": "2017-03-10",
        "Agent": {"ARN": "arn:aws:connect:us-east-1:123456789012:instance/i-1/agent/a-1",
                  "AfterContactWorkDuration": 32, "AfterContactWorkStartTimestamp": "2026-11-03T01:06:22Z",
                  "AgentInteractionDuration": 300, "ConnectedToAgentTimestamp": "2026-11-03T01:00:49Z",
                  "CustomerHoldDuration": 20, "NumberOfHolds": 1, "Username": "agent-zhao"},
        "Channel": "VOICE", "ConnectedToSystemTimestamp": "2026-11-03T00:59:38Z",
        "ContactId": "15a5cf14-3212-45a1-9f86-a8e97db8afaf",
        "CustomerEndpoint": {"Address": CUSTOMER, "Type": "TELEPHONE_NUMBER"},
        "DisconnectReason": "CUSTOMER_DISCONNECT", "DisconnectTimestamp": "2026-11-03T01:06:09Z",
        "InitialContactId": None, "InitiationMethod": "INBOUND", "InitiationTimestamp": "2026-11-03T00:59:38Z",
        "Queue": {"ARN": "arn:aws:connect:us-east-1:123456789012:instance/i-1/queue/q-1",
                  "DequeueTimestamp": "2026-11-03T01:00:49Z", "Duration": 7,
                  "EnqueueTimestamp": "2026-11-03T01:00:42Z", "Name": "aftersales"},
        "SystemEndpoint": {"Address": "+861088886666", "Type": "TELEPHONE_NUMBER"},
    }
    return record | changes


def test_an_answered_contact_record_is_started_answered_and_ended():
    events = accepted(connect_events(ctr()).events)
    assert [(e["id"], e["type"], e["time"]) for e in events] == [
        ("connect:15a5cf14-3212-45a1-9f86-a8e97db8afaf:started", "call.started", "2026-11-03T00:59:38+00:00"),
        ("connect:15a5cf14-3212-45a1-9f86-a8e97db8afaf:answered", "call.answered", "2026-11-03T01:00:49+00:00"),
        ("connect:15a5cf14-3212-45a1-9f86-a8e97db8afaf:ended", "call.ended", "2026-11-03T01:06:09+00:00")]
    answered, ended = events[1]["data"], events[2]["data"]
    assert (answered["queue"], answered["agent"], answered["wait_seconds"]) == ("aftersales", "agent-zhao", 7.0)
    assert {k: ended[k] for k in ("talk_seconds", "hold_seconds", "wrap_seconds", "disposition")} == {
        "talk_seconds": 300.0, "hold_seconds": 20.0, "wrap_seconds": 32.0, "disposition": "CUSTOMER_DISCONNECT"}
    assert all(e["data"]["phone_number"] == CUSTOMER and e["data"]["direction"] == "inbound" for e in events)


def test_the_wait_is_connected_minus_enqueued_without_a_duration():
    queue = ctr()["Queue"] | {"Duration": None, "DequeueTimestamp": None}
    events = connect_events(ctr(Queue=queue)).events
    assert events[1]["data"]["wait_seconds"] == 7.0


def test_a_queued_contact_no_agent_took_is_abandoned():
    queue = {"Name": "aftersales", "EnqueueTimestamp": "2026-11-03T01:00:42Z",
             "DequeueTimestamp": "2026-11-03T01:01:37Z", "Duration": 55}
    events = accepted(connect_events(ctr(Agent=None, Queue=queue, DisconnectTimestamp="2026-11-03T01:01:37Z")).events)
    assert [(e["type"], e["data"].get("wait_seconds"), e["data"]["queue"]) for e in events] == [
        ("call.started", None, "aftersales"), ("call.abandoned", 55.0, "aftersales")]


def test_a_call_that_ended_in_the_ivr_only_started():
    events = connect_events(ctr(Agent=None, Queue=None)).events
    assert [e["type"] for e in events] == ["call.started"]


def test_outbound_and_transfers():
    outbound = connect_events(ctr(InitiationMethod="OUTBOUND", Queue=None)).events
    assert {e["data"]["direction"] for e in outbound} == {"outbound"}
    assert outbound[1]["data"]["wait_seconds"] == 0.0
    transfer = connect_events(ctr(InitiationMethod="TRANSFER", InitialContactId="c-0")).events
    assert [e["type"] for e in transfer] == ["call.answered", "call.ended"]  # the call started under c-0
    assert transfer[0]["data"]["properties"]["initial_contact_id"] == "c-0"


@pytest.mark.parametrize("changes, reason", [
    ({"Channel": "CHAT"}, "Channel CHAT"), ({"Channel": "TASK"}, "Channel TASK"),
    ({"InitiationMethod": "MONITOR"}, "MONITOR"),
    ({"CustomerEndpoint": None}, "CustomerEndpoint"),
    ({"CustomerEndpoint": {"Address": "anonymous", "Type": "TELEPHONE_NUMBER"}}, "withheld"),
])
def test_records_that_are_no_customer_call_are_skipped_with_a_reason(changes, reason):
    mapped = connect_events(ctr(**changes))
    assert mapped.events == [] and reason in mapped.skipped


@pytest.mark.parametrize("record, field", [
    ("not a record", ""), (ctr(ContactId=None), "ContactId"), (ctr(Channel=None), "Channel"),
    (ctr(InitiationTimestamp=None), "InitiationTimestamp"), (ctr(InitiationTimestamp="soon"), "InitiationTimestamp"),
    (ctr(Agent="agent-zhao"), "Agent"),
    (ctr(Agent=ctr()["Agent"] | {"AgentInteractionDuration": "long"}), "Agent.AgentInteractionDuration"),
])
def test_bad_contact_records_are_refused_naming_the_field(record, field):
    with pytest.raises(Refused) as exc:
        connect_events(record)
    assert exc.value.field == field


def test_records_come_as_an_object_an_array_or_one_a_line():
    assert parse_records(b'{"ContactId": "a"}') == [{"ContactId": "a"}]
    assert parse_records(b'[{"ContactId": "a"}, {"ContactId": "b"}]') == [{"ContactId": "a"}, {"ContactId": "b"}]
    assert parse_records(b'{"ContactId": "a"}\n\n{"ContactId": "b"}\n') == [{"ContactId": "a"}, {"ContactId": "b"}]
    with pytest.raises(Refused, match="line 2"):
        parse_records(b'{"ContactId": "a"}\n{oops\n')
    with pytest.raises(Refused, match="empty"):
        parse_records(b"  ")


# --- the generic form ------------------------------------------------------------------------------

def test_a_generic_call_becomes_its_event():
    call = GenericCall.model_validate({
        "call_id": "1699999999.42", "status": "ended", "customer_number": "139 1234 5678", "queue": "delivery",
        "agent": "agent-li", "wait_seconds": 12, "talk_seconds": 185, "hold_seconds": 5, "wrap_seconds": 30,
        "disposition": "resolved", "at": "2026-11-03T09:00:00+08:00", "system": "asterisk"})
    event = accepted([generic_event(call, NOW)])[0]
    assert (event["id"], event["source"], event["type"], event["time"]) == (
        "asterisk:1699999999.42:ended", "urn:crm:cti:asterisk", "call.ended", "2026-11-03T01:00:00+00:00")
    assert event["data"] == {"call_id": "1699999999.42", "phone_number": "139 1234 5678", "direction": "inbound",
                             "queue": "delivery", "agent": "agent-li", "wait_seconds": 12.0, "talk_seconds": 185.0,
                             "hold_seconds": 5.0, "wrap_seconds": 30.0, "disposition": "resolved"}


def test_fields_that_do_not_apply_to_the_status_are_left_out():
    call = GenericCall.model_validate({"call_id": "c1", "status": "started", "customer_number": CUSTOMER,
                                       "talk_seconds": 0, "wait_seconds": 0})
    event = accepted([generic_event(call, NOW)])[0]
    assert event["time"] == NOW.isoformat() and "talk_seconds" not in event["data"] and event["id"] == "pbx:c1:started"


@pytest.mark.parametrize("item, field", [
    ({"call_id": "c1", "status": "answered", "customer_number": CUSTOMER}, "wait_seconds"),
    ({"call_id": "c1", "status": "ended", "customer_number": CUSTOMER}, "talk_seconds"),
    ({"call_id": "c1", "status": "ringing", "customer_number": CUSTOMER}, "status"),
    ({"call_id": "c1", "status": "started"}, "customer_number"),
    ({"call_id": "c1", "status": "abandoned", "customer_number": CUSTOMER, "wait_seconds": -1}, "wait_seconds"),
    ({"call_id": "c1", "status": "started", "customer_number": CUSTOMER, "at": "2026-11-03T09:00:00"}, "at"),
    ({"call_id": "c1", "status": "started", "customer_number": CUSTOMER, "caller": "x"}, "caller"),
])
def test_a_bad_generic_call_names_the_field(item, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        GenericCall.model_validate(item)
    assert field in str(exc.value)


def test_the_signed_url_is_the_public_one_behind_a_proxy():
    from starlette.requests import Request

    from services.ingest.adapters.calls import twilio_url

    request = Request({"type": "http", "method": "POST", "scheme": "http", "server": ("10.0.0.5", 8080),
                       "path": "/v1/hooks/twilio/voice", "query_string": b"queue=%E5%94%AE%E5%90%8E&agent=agent-li",
                       "headers": [(b"host", b"10.0.0.5:8080")]})
    query = "?queue=%E5%94%AE%E5%90%8E&agent=agent-li"  # kept encoded, as Twilio signed it
    assert twilio_url(request, "") == f"http://10.0.0.5:8080/v1/hooks/twilio/voice{query}"
    assert twilio_url(request, "https://crm.example.com/") == f"https://crm.example.com/v1/hooks/twilio/voice{query}"
