"""Satisfaction indicators end to end: touchpoints posted to the collector, values read from the API,
the live stream and the crm.indicators topic. Every test uses its own queue and agent names: the
broker's log is shared by the whole session, so the overall slices hold other tests' traffic."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from services.common.topics import INDICATORS
from tests import http
from tests.feed import read_records
from tests.processes import wait_for
from tests.sse import SseReader


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _calls(u: str, now: datetime) -> list[dict]:
    q, agent, phone = f"q-{u}", f"agent-{u}", f"+86138{int(u[:6], 16) % 10**8:08d}"
    base = {"phone_number": phone, "queue": q}
    ev = []
    for n, wait in enumerate([10, 30, 15]):
        ev.append({"id": f"{u}-ans{n}", "source": "urn:cti", "type": "call.answered", "time": _iso(now - timedelta(seconds=60 - n)),
                   "data": {**base, "call_id": f"{u}-c{n}", "agent": agent, "wait_seconds": wait}})
    ev.append({"id": f"{u}-ab", "source": "urn:cti", "type": "call.abandoned", "time": _iso(now - timedelta(seconds=30)),
               "data": {**base, "call_id": f"{u}-c9", "wait_seconds": 80}})
    ev.append({"id": f"{u}-end", "source": "urn:cti", "type": "call.ended", "time": _iso(now - timedelta(seconds=20)),
               "data": {**base, "call_id": f"{u}-c0", "agent": agent, "talk_seconds": 100, "hold_seconds": 20,
                        "wrap_seconds": 30}})
    for n, csat in enumerate([5, 2]):
        survey = {"phone": phone, "survey_id": f"{u}-s{n}", "rated_channel": "phone", "agent": agent, "queue": q}
        ev.append({"id": f"{u}-sent{n}", "source": "urn:survey", "type": "survey.sent",
                   "time": _iso(now - timedelta(seconds=15)), "data": survey})
        ev.append({"id": f"{u}-answer{n}", "source": "urn:survey", "type": "survey.answered",
                   "time": _iso(now - timedelta(seconds=10)), "data": {**survey, "csat": csat}})
    return ev


def _ticket(u: str, now: datetime) -> list[dict]:
    t = {"email": f"t-{u}@example.com", "ticket_id": f"T-{u}", "queue": f"q-{u}", "channel": "email"}
    at = lambda minutes: _iso(now - timedelta(minutes=minutes))  # noqa: E731
    return [
        {"id": f"{u}-t1", "source": "urn:desk", "type": "ticket.opened", "time": at(50),
         "data": {**t, "kind": "complaint", "body_text": "The parcel is broken and nobody answers. Very disappointed."}},
        {"id": f"{u}-t2", "source": "urn:desk", "type": "ticket.replied", "time": at(40),
         "data": {**t, "author": "agent", "agent": f"agent-{u}", "body_text": "Sorry, we send a new one."}},
        {"id": f"{u}-t3", "source": "urn:desk", "type": "ticket.resolved", "time": at(30),
         "data": {**t, "agent": f"agent-{u}"}},
        {"id": f"{u}-t4", "source": "urn:desk", "type": "ticket.reopened", "time": at(20), "data": t},
        {"id": f"{u}-t5", "source": "urn:desk", "type": "ticket.resolved", "time": at(10),
         "data": {**t, "agent": f"agent-{u}"}},
    ]


def _get(api: str, **params) -> dict:
    response = http.get(f"{api}/v1/indicators", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _value(body: dict, window: str, name: str) -> float | None:
    item = next(i for i in body["items"] if i["window"] == window)
    return item["indicators"][name]["value"]


def test_indicators_by_queue_and_agent_through_the_api_and_the_live_stream(running, unique):
    collector, api = running
    now = datetime.now(timezone.utc)
    q, agent = f"q-{unique}", f"agent-{unique}"
    with SseReader(f"{api}/v1/stream/indicators", {"queue": q}) as stream:
        http.post(f"{collector}/v1/events", json=_calls(unique, now) + _ticket(unique, now)).raise_for_status()
        _, _, update = stream.wait_for(lambda ev, d: ev == "indicator" and d["indicator"] == "abandonment_rate"
                                       and d["window"] == "1h" and d["count"] == 4, 60, "the queue's abandonment")
        assert update["value"] == 25.0 and update["member"] == q
    expected = {
        "abandonment_rate": 25.0,                     # 1 of 4 offered
        "service_level": 50.0,                        # 10 s and 15 s within 20 s, of 4 offered
        "average_wait": pytest.approx(55 / 3, abs=1e-3),
        "average_handle_time": 150.0,                 # talk 100 + hold 20 + wrap 30
        "csat": 50.0, "survey_response_rate": 100.0,  # 5 and 2, both surveys answered
        "resolution_time": 30 * 60,                   # 20 min before the reopen + 10 min after
        "first_response_time": 10 * 60,
        "complaint_rate": 100.0,                      # the ticket is the queue's one inbound contact
    }

    def values() -> dict:
        return {n: x["value"] for n, x in _get(api, queue=q, window="1h")["items"][0]["indicators"].items()}

    # every asserted value is waited for: the touchpoints reach the sums batch by batch
    v = wait_for(lambda: (v := values()) and all(v[n] == want for n, want in expected.items())
                 and v["sentiment"] is not None and v, 60, "every touchpoint counted")
    assert {n: v[n] for n in expected} == expected
    assert v["sentiment"] < 0
    by_agent = _get(api, agent=agent, window="1h", indicator="csat,average_handle_time")
    assert set(by_agent["items"][0]["indicators"]) == {"csat", "average_handle_time"}
    assert by_agent["items"][0]["indicators"]["csat"] == {"value": 50.0, "count": 2.0, "unit": "%"}
    # a breakdown by queue lists this queue among the others
    members = {i["member"] for i in _get(api, dimension="queue", window="5m")["items"]}
    assert q in members
    # the per-minute series for charts: every minute present, this one's samples counted
    series = http.get(f"{api}/v1/indicators/series", params={"queue": q, "indicator": "abandonment_rate"}).json()
    assert len(series["points"]) == 60
    assert sum(p["counts"]["abandonment_rate"] for p in series["points"]) == 4


def test_bad_requests_say_what_is_wrong(running):
    _, api = running
    for params, message in (({"indicator": "happiness"}, "unknown indicator happiness"),
                            ({"window": "2h"}, "unknown window 2h"),
                            ({"channel": "phone", "agent": "x"}, "one dimension at a time"),
                            ({"dimension": "queue", "agent": "x"}, "contradicts")):
        response = http.get(f"{api}/v1/indicators", params=params)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    response = http.get(f"{api}/v1/indicators/series", params={"start": "2026-01-01T00:00:00Z",
                                                                "end": "2026-02-01T00:00:00Z"})
    assert response.status_code == 400 and "7 days" in response.json()["error"]
    assert http.get(f"{api}/v1/indicators", params={"dimension": "planet"}).status_code == 422


def test_the_dashboard_page_follows_the_live_stream_in_both_languages(running):
    _, api = running
    page = http.get(f"{api}/", follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/stream/indicators" in page.text and "CRM 运营看板" in page.text and "/v1/ops/pipeline" in page.text
    names = {d["name"]: d for d in http.get(f"{api}/v1/indicators/definitions").json()}
    assert names["csat"]["zh"] == "客户满意度" and names["average_wait"]["better"] == "lower"


def test_a_late_event_lands_in_the_longer_windows_and_the_history(running, unique):
    collector, api = running
    now = datetime.now(timezone.utc)
    q = f"q-{unique}"
    two_hours_ago = now - timedelta(hours=2)
    http.post(f"{collector}/v1/events", json={
        "id": f"{unique}-late", "source": "urn:cti", "type": "call.abandoned", "time": _iso(two_hours_ago),
        "data": {"phone_number": "+8613900000001", "call_id": f"{unique}-late", "queue": q, "wait_seconds": 40}}
    ).raise_for_status()
    body = wait_for(lambda: (b := _get(api, queue=q, indicator="abandonment_rate"))["items"] and
                    _value(b, "24h", "abandonment_rate") is not None and b, 60, "the late call")
    assert _value(body, "5m", "abandonment_rate") is None and _value(body, "1h", "abandonment_rate") is None
    assert _value(body, "24h", "abandonment_rate") == 100.0 and _value(body, "7d", "abandonment_rate") == 100.0
    series = http.get(f"{api}/v1/indicators/series", params={
        "queue": q, "indicator": "abandonment_rate", "start": _iso(two_hours_ago - timedelta(minutes=5)),
        "end": _iso(now)}).json()
    point = next(p for p in series["points"] if p["counts"]["abandonment_rate"])
    assert point["minute"].startswith(_iso(two_hours_ago)[:16]) and point["late"] == {}


def test_with_a_short_lateness_a_late_event_is_history_only(platform, unique):
    _, collector = platform.collector()
    platform.processor(CRM_INDICATOR_MAX_LATENESS_S="3600")
    _, api = platform.api()
    now = datetime.now(timezone.utc)
    q = f"q-{unique}"
    events = [{"id": f"{unique}-{n}", "source": "urn:cti", "type": "call.abandoned", "time": _iso(at),
               "data": {"phone_number": "+8613900000002", "call_id": f"{unique}-{n}", "queue": q, "wait_seconds": 5}}
              for n, at in enumerate([now - timedelta(hours=3), now - timedelta(seconds=5)])]
    http.post(f"{collector}/v1/events", json=events).raise_for_status()
    body = wait_for(lambda: (b := _get(api, queue=q, indicator="abandonment_rate"))["items"] and
                    b["items"][0]["indicators"]["abandonment_rate"]["count"] == 1 and b, 60, "the on-time call")
    assert all(i["indicators"]["abandonment_rate"]["count"] == 1 for i in body["items"])  # 3 h late: not in 24h/7d
    series = wait_for(lambda: (s := http.get(f"{api}/v1/indicators/series", params={
        "queue": q, "indicator": "abandonment_rate", "start": _iso(now - timedelta(hours=4)), "end": _iso(now)}
    ).json()) and any(p["late"] for p in s["points"]) and s, 30, "the late call in the history")
    late = [p for p in series["points"] if p["late"]]
    assert [p["late"] for p in late] == [{"abandonment_rate": 1.0}]


def test_a_threshold_alert_is_published_and_streamed(platform, stack, unique):
    q = f"q-{unique}"
    rule = {"name": f"abandon-{unique}", "indicator": "abandonment_rate", "window": "5m", "dimension": "queue",
            "member": q, "above": 50, "min_count": 2}
    _, collector = platform.collector()
    platform.processor(CRM_INDICATOR_ALERTS=orjson.dumps([rule]).decode())
    _, api = platform.api()
    now = datetime.now(timezone.utc)
    with SseReader(f"{api}/v1/stream/indicators", {"queue": q}) as stream:
        http.post(f"{collector}/v1/events", json=[
            {"id": f"{unique}-{n}", "source": "urn:cti", "type": "call.abandoned", "time": _iso(now),
             "data": {"phone_number": "+8613900000003", "call_id": f"{unique}-{n}", "queue": q, "wait_seconds": 50}}
            for n in range(2)]).raise_for_status()
        _, _, alert = stream.wait_for(lambda ev, d: ev == "alert" and d["rule"] == rule["name"], 60, "the alert")
    assert (alert["state"], alert["member"], alert["value"], alert["count"]) == ("firing", q, 100.0, 2.0)
    # the alert reached the stream through Kafka: it is on the topic, once
    keys = [m.key.decode() for m in read_records(platform.stack.kafka_bootstrap, [platform.topic(INDICATORS)])
            if m.key and m.key.decode().startswith(f"alert|{rule['name']}|")]
    assert keys == [f"alert|{rule['name']}|queue={q}"]


def test_a_slipping_customer_is_flagged_at_risk_with_the_reason(running, unique):
    collector, api = running
    email = f"risk-{unique}@example.com"
    now = datetime.now(timezone.utc)
    http.post(f"{collector}/v1/events", json=[
        {"id": f"{unique}-1", "source": "urn:survey", "type": "survey.answered", "time": _iso(now),
         "data": {"email": email, "survey_id": f"s-{unique}", "csat": 1, "nps": 2, "comment": "太差了，非常失望"}},
    ]).raise_for_status()
    found = wait_for(lambda: http.get(f"{api}/v1/customers", params={"email": email}).json()["items"], 60, "the view")
    sat = found[0]["satisfaction"]
    assert sat["at_risk"] is True
    assert {r["code"] for r in sat["reasons"]} == {"low_csat", "detractor", "negative_sentiment"}
    assert sat["index"] < 20
    listed = http.get(f"{api}/v1/customers", params={"at_risk": "true", "limit": 100}).json()["items"]
    assert found[0]["customer_id"] in [c["customer_id"] for c in listed]


def test_a_30_day_window_holds_what_the_7_day_one_no_longer_does(running, unique):
    collector, api = running  # the default lateness (30 d) lets a 10-day-old event count live
    now = datetime.now(timezone.utc)
    q = f"q-{unique}"
    http.post(f"{collector}/v1/events", json={
        "id": f"{unique}-old", "source": "urn:cti", "type": "call.abandoned", "time": _iso(now - timedelta(days=10)),
        "data": {"phone_number": "+8613900000003", "call_id": f"{unique}-old", "queue": q, "wait_seconds": 30}}
    ).raise_for_status()
    body = wait_for(lambda: (b := _get(api, queue=q, indicator="abandonment_rate"))["items"] and
                    _value(b, "30d", "abandonment_rate") is not None and b, 60, "the call in the 30-day window")
    assert _value(body, "30d", "abandonment_rate") == 100.0 and _value(body, "7d", "abandonment_rate") is None
    only = http.get(f"{api}/v1/indicators", params={"queue": q, "window": "30d"})
    assert only.status_code == 200 and {i["window"] for i in only.json()["items"]} == {"30d"}
    assert http.get(f"{api}/v1/indicators", params={"window": "90d"}).status_code == 400
