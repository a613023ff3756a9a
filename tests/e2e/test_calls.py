"""The call-center adapter end to end: Twilio callbacks signed as Twilio signs them, Amazon Connect
contact records and a PBX's generic form, read back from the customer timeline and the indicators."""
from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import orjson

from tests import http
from tests.processes import wait_for

TOKEN = "twilio-test-auth-token"


def signed(url: str, params: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    """The headers Twilio sends: X-Twilio-Signature = base64(HMAC-SHA1(token, url + sorted name+value))."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()
    return {"X-Twilio-Signature": base64.b64encode(digest).decode()}


def twilio_post(url: str, params: dict[str, str], headers: dict[str, str] | None = None):
    return http.post(url, data=params, headers=signed(url, params) if headers is None else headers, key=None)


def test_calls_from_twilio_amazon_connect_and_a_pbx_reach_the_timeline_and_the_indicators(platform, unique):
    _, collector = platform.collector(CRM_TWILIO_AUTH_TOKEN=TOKEN)
    platform.processor()
    _, api = platform.api()
    now = datetime.now(timezone.utc)
    digits = f"{int(unique, 16) % 10**8:08d}"
    caller, connect_caller, pbx_caller = f"+86139{digits}", f"+86138{digits}", f"+86137{digits}"
    queue, agent_li, agent_zhao = f"delivery-{unique}", f"agent-li-{unique}", f"agent-zhao-{unique}"
    hook = f"{collector}/v1/hooks/twilio/voice"
    # the number's status callback and the <Enqueue action> name the queue; the agent's <Queue url> the agent
    status_url = enqueue_url = f"{hook}?queue={queue}"
    dequeue_url = f"{hook}?queue={queue}&agent={agent_li}"

    # --- Twilio: an inbound call queued, taken by agent-li, completed; then one abandoned in the queue
    def call(sid: str, **params: str) -> dict[str, str]:
        return {"AccountSid": f"AC{unique}", "CallSid": sid, "From": caller, "To": "+861088886666",
                "Called": "+861088886666", "Caller": caller, "Direction": "inbound", "ApiVersion": "2010-04-01",
                "ForwardedFrom": "", "CallerName": "", **params}

    def status(sid: str, call_status: str, seconds_ago: int, sequence: int, **params: str) -> dict[str, str]:
        return call(sid, CallStatus=call_status, CallbackSource="call-progress-events", SequenceNumber=str(sequence),
                    Timestamp=format_datetime(now - timedelta(seconds=seconds_ago), usegmt=True), **params)

    answered, abandoned = f"CA{unique}a", f"CA{unique}b"
    completed = status(answered, "completed", 10, 2, CallDuration="245")
    for url, params in [
        (status_url, status(answered, "ringing", 300, 0)),
        (status_url, status(answered, "in-progress", 299, 1)),  # Twilio answered to play the queue: no agent yet
        (dequeue_url, call(answered, CallStatus="in-progress", QueueSid="QU1", QueueTime="35",
                           DequeingCallSid=f"CA{unique}agent")),
        (enqueue_url, call(answered, CallStatus="in-progress", QueueResult="bridged", QueueSid="QU1",
                           QueueTime="35")),  # after the conversation: same answer, deduplicated
        (status_url, completed),
        (status_url, completed),  # Twilio retrying the callback: deduplicated
        (status_url, status(abandoned, "ringing", 200, 0)),
        (enqueue_url, call(abandoned, CallStatus="in-progress", QueueResult="hangup", QueueSid="QU1",
                           QueueTime="40")),
        (status_url, status(abandoned, "completed", 150, 2, CallDuration="52")),
    ]:
        r = twilio_post(url, params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/xml") and "<Response/>" in r.text
    skipped = twilio_post(status_url, status(answered, "in-progress", 299, 1))
    assert "Enqueue" in skipped.headers["x-crm-skipped"]

    forged = status(f"CA{unique}forged", "ringing", 100, 0)
    assert twilio_post(status_url, forged, headers={}).status_code == 401
    r = twilio_post(status_url, forged, headers={"X-Twilio-Signature": signed(status_url, forged, "wrong")[
        "X-Twilio-Signature"]})
    assert r.status_code == 401 and "CRM_TWILIO_AUTH_TOKEN" in r.text
    r = twilio_post(status_url, status(f"CA{unique}x", "teleported", 100, 0))
    assert r.status_code == 400 and "CallStatus" in r.text

    # --- Amazon Connect: an answered contact, an abandoned one, and a chat (skipped), one a line
    def iso(seconds_ago: int) -> str:
        return (now - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")

    ctr = {"AWSAccountId": "123456789012", "Channel": "VOICE", "InitiationMethod": "INBOUND",
           "CustomerEndpoint": {"Address": connect_caller, "Type": "TELEPHONE_NUMBER"},
           "SystemEndpoint": {"Address": "+861088886666", "Type": "TELEPHONE_NUMBER"}}
    records = [
        ctr | {"ContactId": f"{unique}-c1", "InitiationTimestamp": iso(900), "DisconnectTimestamp": iso(500),
               "DisconnectReason": "AGENT_DISCONNECT",
               "Queue": {"Name": queue, "EnqueueTimestamp": iso(880), "DequeueTimestamp": iso(873), "Duration": 7},
               "Agent": {"Username": agent_zhao, "ConnectedToAgentTimestamp": iso(873), "AgentInteractionDuration": 300,
                         "CustomerHoldDuration": 20, "AfterContactWorkDuration": 32}},
        ctr | {"ContactId": f"{unique}-c2", "InitiationTimestamp": iso(400), "DisconnectTimestamp": iso(325),
               "DisconnectReason": "CUSTOMER_DISCONNECT", "Agent": None,
               "Queue": {"Name": queue, "EnqueueTimestamp": iso(380), "DequeueTimestamp": iso(325), "Duration": 55}},
        ctr | {"ContactId": f"{unique}-chat", "Channel": "CHAT", "InitiationTimestamp": iso(100)},
    ]
    r = http.post(f"{collector}/v1/hooks/amazon-connect", content=b"\n".join(orjson.dumps(c) for c in records),
                  key=platform.keys["events:write"])
    assert r.status_code == 202, r.text
    assert len(r.json()["accepted"]) == 5 and [s["contact_id"] for s in r.json()["skipped"]] == [f"{unique}-chat"]

    # --- a PBX: the generic form
    pbx = {"call_id": f"{unique}-p1", "customer_number": pbx_caller, "queue": queue, "agent": agent_zhao,
           "system": "asterisk"}
    r = http.post(f"{collector}/v1/hooks/calls", key=platform.keys["events:write"], json=[
        pbx | {"status": "started", "at": iso(600)},
        pbx | {"status": "answered", "wait_seconds": 8, "at": iso(592)},
        pbx | {"status": "ended", "talk_seconds": 120, "hold_seconds": 10, "wrap_seconds": 30, "at": iso(450)}])
    assert r.status_code == 202 and len(r.json()["accepted"]) == 3, r.text
    r = http.post(f"{collector}/v1/hooks/calls", json=pbx | {"status": "answered"}, key=platform.keys["events:write"])
    assert r.status_code == 422 and "wait_seconds" in r.json()["error"], r.text

    # --- read back: each customer, found by phone, has their calls on the timeline
    def timeline(phone: str, count: int) -> list[dict]:
        customer = wait_for(lambda: (c := http.get(f"{api}/v1/customers", params={"phone": phone}).json()["items"])
                            and c[0]["event_count"] >= count and c[0], 60, f"{count} calls of {phone} applied")
        return http.get(f"{api}/v1/customers/{customer['customer_id']}/timeline").json()["items"]

    listed = timeline(caller, 6)
    assert len(listed) == 6  # the retried and the twice-reported outcomes are one event each; nothing forged
    items = {i["event_id"]: i for i in listed}  # the answers are timed at receipt: compared as a set
    assert set(items) == {f"twilio:{answered}:started", f"twilio:{answered}:answered", f"twilio:{answered}:ended",
                          f"twilio:{abandoned}:started", f"twilio:{abandoned}:abandoned", f"twilio:{abandoned}:ended"}
    assert items[f"twilio:{answered}:answered"]["summary"] == f"Call answered by {agent_li} after 0m35s"
    assert items[f"twilio:{abandoned}:abandoned"]["data"]["wait_seconds"] == 40
    assert items[f"twilio:{answered}:ended"]["data"]["talk_seconds"] == 245
    assert [i["type"] for i in timeline(connect_caller, 5)] == [
        "call.started", "call.answered", "call.ended", "call.started", "call.abandoned"]
    assert [i["event_id"] for i in timeline(pbx_caller, 3)] == [
        f"asterisk:{unique}-p1:started", f"asterisk:{unique}-p1:answered", f"asterisk:{unique}-p1:ended"]

    # --- the indicators of the queue and of each agent
    def indicators(**params) -> dict:
        r = http.get(f"{api}/v1/indicators", params={"window": "1h", **params})
        assert r.status_code == 200, r.text
        return r.json()

    def measured(indicator: dict) -> tuple:
        return indicator["value"], indicator["count"]

    by_queue = wait_for(lambda: (b := indicators(queue=queue))["items"][0]["indicators"]["average_handle_time"]
                        ["count"] == 4 and b["items"][0]["indicators"], 60, "the queue's calls counted")
    # offered 5: answered by agent-li (35 s), by agent-zhao on Connect (7 s) and the PBX (8 s); abandoned 2
    assert measured(by_queue["abandonment_rate"]) == (40.0, 5)
    assert measured(by_queue["average_wait"]) == (round(50 / 3, 4), 3)
    assert by_queue["average_handle_time"]["value"] == (245 + 52 + (300 + 20 + 32) + (120 + 10 + 30)) / 4
    li = indicators(agent=agent_li)["items"][0]["indicators"]
    assert measured(li["average_wait"]) == (35.0, 1)
    zhao = indicators(agent=agent_zhao)["items"][0]["indicators"]
    assert measured(zhao["average_wait"]) == (7.5, 2)
    assert measured(zhao["average_handle_time"]) == ((352 + 160) / 2, 2)
    assert http.get(f"{api}/v1/customers", params={"phone": caller}).json()["items"][0]["event_count"] == 6


def test_refusals_without_configuration_or_key(platform):
    _, collector = platform.collector()  # no CRM_TWILIO_AUTH_TOKEN
    url = f"{collector}/v1/hooks/twilio/voice"
    params = {"AccountSid": "AC1", "CallSid": "CA1", "From": "+8613912345678", "CallStatus": "ringing"}
    r = twilio_post(url, params)
    assert r.status_code == 404 and "CRM_TWILIO_AUTH_TOKEN" in r.text
    assert http.post(f"{collector}/v1/hooks/calls", json={}, key=None).status_code == 401
    r = http.post(f"{collector}/v1/hooks/amazon-connect", content=b'{"ContactId": "c1"}',
                  key=platform.keys["customers:read"])
    assert r.status_code == 403, r.text
    r = http.post(f"{collector}/v1/hooks/amazon-connect", content=b'{"ContactId": "c1"}',
                  key=platform.keys["events:write"])
    assert r.status_code == 422 and r.json()["rejected"][0]["errors"][0]["field"] == "Channel", r.text
