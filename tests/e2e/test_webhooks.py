"""Webhooks end to end: subscriptions made through the running API, change events produced to
crm.customer-changes on the real broker, the crm-webhooks dispatcher as a process, and real HTTP
receivers on 127.0.0.1 that verify every signature."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import psycopg2
import pytest
from kafka import KafkaProducer

from events.feed import change_event
from services.common.topics import CUSTOMER_CHANGES, DEADLETTER
from services.webhooks.verify import WebhookVerificationError, new_secret, verify
from tests import http
from tests.feed import read_records
from tests.processes import wait_for

FAST = {"CRM_WEBHOOKS_RETRY_SCHEDULE_S": "[0.2, 0.4, 0.8]", "CRM_WEBHOOKS_POLL_S": "0.1",
        "CRM_WEBHOOKS_TIMEOUT_S": "2", "CRM_WEBHOOKS_LEASE_S": "4"}


# -- a receiver -----------------------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers each path as told: a list
    of statuses (the last one repeats), or "hang" to hold the request until ``release``."""

    answers: dict[str, list[int | str]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.hanging = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.time()))
                    seen = sum(1 for r in receiver.requests if r.path == self.path)
                    plan = receiver.answers.get(self.path, [200])
                    answer = plan[min(seen, len(plan)) - 1]
                if answer == "hang":
                    with receiver.lock:
                        receiver.hanging += 1
                    receiver.released.wait(30)
                    answer = 200
                self.send_response(int(answer))
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def ids(self, path: str) -> set[str]:
        return {r.headers["webhook-id"] for r in self.at(path)}

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def api(platform) -> str:
    return platform.api()[1]


# -- helpers --------------------------------------------------------------------------------------

def snapshot(customer_id: str, version: int, segments: list[str]) -> dict:
    return {"customer_id": customer_id, "version": version, "as_of": "2026-11-01T10:00:00Z",
            "profile": {"display_name": None, "traits": {}, "consent": {}},
            "lifecycle": {"stage": "customer", "since": "2026-11-01T10:00:00Z", "rule": "ordered"},
            "value": {"orders": 1, "refunds": 0, "net_revenue": {"CNY": "10"}, "monetary": "10", "currency": "CNY",
                      "average_order_value": "10", "first_order_at": None, "last_order_at": None, "rfm": None,
                      "tier": "low", "ltv": "10"},
            "segments": segments, "satisfaction": {"index": None, "at_risk": False, "reasons": []}}


def value_changed(customer_id: str, sequence: int, segments: list[str] | None = None) -> dict:
    return change_event(customer_id, sequence, "value.changed", "2026-11-01T10:00:00Z", {"changed": ["orders"]},
                        snapshot(customer_id, sequence, segments or []))


def produce(platform, changes: list[dict]) -> dict[str, bytes]:
    """Publish as the feed relay does; returns each change's exact record value by id."""
    producer = KafkaProducer(bootstrap_servers=platform.stack.kafka_bootstrap, acks="all", linger_ms=5)
    values = {}
    for change in changes:
        values[change["id"]] = orjson.dumps(change)
        producer.send(platform.topic(CUSTOMER_CHANGES), key=change["customerid"].encode(), value=values[change["id"]],
                      headers=[("content-type", b"application/cloudevents+json")])
    producer.flush()
    producer.close()
    return values


def subscribe(api: str, url: str, **fields) -> dict:
    resp = http.post(f"{api}/v1/webhooks", json={"url": url, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def deliveries(api: str, subscription_id: str, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        page = http.get(f"{api}/v1/webhooks/{subscription_id}/deliveries",
                         params={**params, "limit": 100, **({"cursor": cursor} if cursor else {})}).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def delivery(api: str, subscription_id: str, delivery_id: int) -> dict:
    resp = http.get(f"{api}/v1/webhooks/{subscription_id}/deliveries/{delivery_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def only_delivery(api: str, subscription_id: str, status: str | None = None) -> dict | None:
    found = deliveries(api, subscription_id)
    return found[0] if len(found) == 1 and (status is None or found[0]["status"] == status) else None


# -- tests ----------------------------------------------------------------------------------------

def test_a_change_is_delivered_signed_and_logged(platform, api, receiver, unique):
    sub = subscribe(api, receiver.url("/hooks"), description="marketing automation")
    secret = sub.pop("secret")
    assert secret.startswith("whsec_") and sub["event_types"] is None and sub["enabled"] is True
    assert "secret" not in http.get(f"{api}/v1/webhooks/{sub['id']}").json()
    dispatcher = platform.webhooks(**FAST)
    customer = f"c_{unique}"
    changes = [change_event(customer, 1, "lifecycle.changed", "2026-11-01T10:00:00Z",
                            {"from": None, "to": "prospect", "rule": "first contact"}, snapshot(customer, 1, [])),
               value_changed(customer, 2)]
    sent = produce(platform, changes)

    got = wait_for(lambda: len(r := receiver.at("/hooks")) == 2 and r, 30, "two deliveries")
    for request in got:
        event_id = request.headers["webhook-id"]
        assert request.body == sent[event_id]  # the record's bytes, exactly as signed
        assert request.headers["content-type"] == "application/cloudevents+json"
        assert abs(int(request.headers["webhook-timestamp"]) - request.at) < 60
        assert verify(secret, request.headers, request.body)["customerid"] == customer
        with pytest.raises(WebhookVerificationError):
            verify(new_secret(), request.headers, request.body)
    assert {r.headers["webhook-id"] for r in got} == {f"{customer}:1:lifecycle.changed", f"{customer}:2:value.changed"}

    log = wait_for(lambda: (d := deliveries(api, sub["id"])) and all(x["status"] == "delivered" for x in d) and d,
                   10, "the delivery log")
    assert [d["event_id"] for d in log] == [f"{customer}:2:value.changed", f"{customer}:1:lifecycle.changed"]
    assert [(d["event_type"], d["sequence"], d["attempt_count"]) for d in log] == \
        [("value.changed", 2, 1), ("lifecycle.changed", 1, 1)]
    detail = delivery(api, sub["id"], log[0]["id"])
    assert detail["event"] == orjson.loads(sent[detail["event_id"]])
    (attempt,) = detail["attempts"]
    # status and timing; never the receiver's answer (its "ok")
    assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["response"] is None
    assert attempt["duration_ms"] > 0
    page = http.get(f"{api}/v1/webhooks/{sub['id']}/deliveries", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = http.get(f"{api}/v1/webhooks/{sub['id']}/deliveries", params={"cursor": page["next_cursor"]}).json()
    assert [d["id"] for d in rest["items"]] == [log[1]["id"]] and rest["next_cursor"] is None
    assert deliveries(api, sub["id"], status="failed") == []

    health = http.get(dispatcher.health_url).json()
    assert health["database"] == "ok" and health["service"] == "crm-webhooks"
    metrics = http.get(dispatcher.health_url.replace("/healthz", "/metrics")).text
    assert 'crm_webhooks_attempts_total{outcome="delivered"} 2.0' in metrics


def test_subscriptions_filter_by_change_type_and_segment(platform, api, receiver, unique):
    vip = f"vip-{unique}"
    by_type = subscribe(api, receiver.url("/types"), event_types=["segment.entered", "customer.merged"])
    by_segment = subscribe(api, receiver.url("/segment"), segments=[vip])
    both = subscribe(api, receiver.url("/both"), event_types=["value.changed"], segments=[vip, "other"])
    everything = subscribe(api, receiver.url("/all"))
    platform.webhooks(**FAST)
    c, other = f"c_{unique}", f"d_{unique}"
    changes = [
        value_changed(c, 1),                                                       # not in the segment
        change_event(c, 2, "segment.entered", "2026-11-02T10:00:00Z", {"segment": vip},
                     snapshot(c, 2, [vip]), detail=vip),
        value_changed(c, 3, [vip]),                                                # in the segment
        change_event(c, 4, "segment.exited", "2026-11-03T10:00:00Z", {"segment": vip}, snapshot(c, 4, []),
                     detail=vip),                                                  # leaving it
        value_changed(c, 5),
        change_event(other, 1, "segment.entered", "2026-11-02T10:00:00Z", {"segment": "else"},
                     snapshot(other, 1, ["else"]), detail="else"),
        change_event(other, 2, "customer.merged", "2026-11-04T10:00:00Z", {"into": c, "identifiers": []}, None),
    ]
    produce(platform, changes)
    ids = [e["id"] for e in changes]
    wait_for(lambda: receiver.ids("/all") == set(ids), 30, "every change at the unfiltered subscription")

    expected = {by_type["id"]: {ids[1], ids[5], ids[6]},
                by_segment["id"]: {ids[1], ids[2], ids[3]},
                both["id"]: {ids[2]}}
    # everything was enqueued once the unfiltered subscription has it all; now the rest is sent
    for sid, wanted in expected.items():
        assert {d["event_id"] for d in deliveries(api, sid)} == wanted
    for path, sid in (("/types", by_type["id"]), ("/segment", by_segment["id"]), ("/both", both["id"])):
        wait_for(lambda: receiver.ids(path) == expected[sid], 15, f"the deliveries at {path}")
    assert Counter((r.path, r.headers["webhook-id"]) for r in receiver.requests).most_common(1)[0][1] == 1


def test_a_record_that_is_not_a_change_is_dead_lettered_and_the_partition_goes_on(platform, api, receiver, unique):
    subscribe(api, receiver.url("/hooks"))
    platform.webhooks(**FAST)
    key = f"c_{unique}".encode()  # one key: the bad records stand before the good one in its partition
    producer = KafkaProducer(bootstrap_servers=platform.stack.kafka_bootstrap, acks="all")
    producer.send(platform.topic(CUSTOMER_CHANGES), key=key, value=b"\xff\xfe not json")
    producer.send(platform.topic(CUSTOMER_CHANGES), key=key, value=orjson.dumps(
        {"id": f"{unique}-x", "type": "customer.teleported", "customerid": f"c_{unique}", "data": {}}))
    producer.flush()
    producer.close()
    good = value_changed(f"c_{unique}", 1)
    produce(platform, [good])
    wait_for(lambda: receiver.ids("/hooks") == {good["id"]}, 30, "the good change delivered")

    def dead_letters() -> list[dict]:
        return [orjson.loads(r.value) for r in read_records(platform.stack.kafka_bootstrap,
                                                            [platform.topic(DEADLETTER)], {key.decode()})]

    dead = wait_for(lambda: (d := dead_letters()) and len(d) >= 2 and d, 30, "two dead letters")
    changes = platform.topic(CUSTOMER_CHANGES)
    assert [(d["stage"], d["kind"], d["source"]["topic"]) for d in dead] == [
        ("webhooks", "undecodable", changes), ("webhooks", "unknown_type", changes)]
    assert "customer.teleported" in dead[1]["reason"]


def test_a_failing_endpoint_is_retried_with_backoff_until_it_answers(platform, api, receiver, unique):
    receiver.answers["/flaky"] = [500, 503, 200]
    sub = subscribe(api, receiver.url("/flaky"))
    healthy = subscribe(api, receiver.url("/healthy"))
    platform.webhooks(**FAST)
    change = value_changed(f"c_{unique}", 1)
    produce(platform, [change])

    wait_for(lambda: len(receiver.at("/healthy")) == 1, 30, "the healthy endpoint's delivery")
    done = wait_for(lambda: only_delivery(api, sub["id"], "delivered"), 30, "the flaky endpoint's delivery")
    detail = delivery(api, sub["id"], done["id"])
    assert [(a["attempt"], a["status_code"], a["error"]) for a in detail["attempts"]] == [
        (1, 500, "HTTP 500"), (2, 503, "HTTP 503"), (3, 200, None)]
    starts = [datetime.fromisoformat(a["started_at"]).timestamp() for a in detail["attempts"]]
    # waits of 0.2 s and 0.4 s, each spread by at most ±20 %
    assert starts[1] - starts[0] >= 0.2 * 0.8 and starts[2] - starts[1] >= 0.4 * 0.8
    assert detail["attempt_count"] == 3 and detail["last_status_code"] == 200 and detail["delivered_at"]
    requests = receiver.at("/flaky")
    assert [r.headers["webhook-id"] for r in requests] == [change["id"]] * 3  # the same message each time
    assert only_delivery(api, healthy["id"], "delivered")["attempt_count"] == 1


def test_a_delivery_failed_for_good_is_retried_by_hand_timeouts_are_logged_and_410_disables(
        platform, api, receiver, unique):
    receiver.answers["/down"] = [500, 500, 500, 200]
    receiver.answers["/gone"] = [410]
    receiver.answers["/slow"] = ["hang", 200]
    down = subscribe(api, receiver.url("/down"))
    gone = subscribe(api, receiver.url("/gone"))
    slow = subscribe(api, receiver.url("/slow"))
    platform.webhooks(**{**FAST, "CRM_WEBHOOKS_RETRY_SCHEDULE_S": "[0.1, 0.1]", "CRM_WEBHOOKS_TIMEOUT_S": "1",
                         "CRM_WEBHOOKS_LEASE_S": "3"})
    produce(platform, [value_changed(f"c_{unique}", 1)])

    failed = wait_for(lambda: only_delivery(api, down["id"], "failed"), 30, "the delivery to fail for good")
    assert failed["attempt_count"] == 3 and failed["last_error"] == "HTTP 500" and failed["next_attempt_at"] is None
    resp = http.post(f"{api}/v1/webhooks/{down['id']}/deliveries/{failed['id']}/retry")
    assert resp.status_code == 202 and resp.json()["status"] == "pending"
    done = wait_for(lambda: only_delivery(api, down["id"], "delivered"), 30, "the retried delivery")
    assert [a["status_code"] for a in delivery(api, down["id"], done["id"])["attempts"]] == [500, 500, 500, 200]
    again = http.post(f"{api}/v1/webhooks/{down['id']}/deliveries/{done['id']}/retry")
    assert again.status_code == 409 and "only failed or cancelled" in again.json()["error"]

    disabled = wait_for(lambda: not (s := http.get(f"{api}/v1/webhooks/{gone['id']}").json())["enabled"] and s,
                        30, "410 Gone to disable the subscription")
    assert "410 Gone" in disabled["disabled_reason"]
    lost = only_delivery(api, gone["id"], "failed")
    assert lost["attempt_count"] == 1 and lost["last_status_code"] == 410
    refused = http.post(f"{api}/v1/webhooks/{gone['id']}/deliveries/{lost['id']}/retry")
    assert refused.status_code == 409 and "disabled" in refused.json()["error"]

    slow_done = wait_for(lambda: only_delivery(api, slow["id"], "delivered"), 30, "the slow endpoint's delivery")
    attempts = delivery(api, slow["id"], slow_done["id"])["attempts"]
    assert [(a["status_code"], a["error"]) for a in attempts] == [(None, "timeout after 1 s"), (200, None)]


def test_a_hanging_endpoint_does_not_delay_a_healthy_one(platform, api, receiver, unique):
    receiver.answers["/hang"] = ["hang"]
    hanging = subscribe(api, receiver.url("/hang"))
    healthy = subscribe(api, receiver.url("/ok"))
    # few slots in all, and a request timeout far longer than the test: only the limits can help
    platform.webhooks(**{**FAST, "CRM_WEBHOOKS_TIMEOUT_S": "60", "CRM_WEBHOOKS_LEASE_S": "90",
                         "CRM_WEBHOOKS_CONCURRENCY": "4", "CRM_WEBHOOKS_PER_SUBSCRIPTION": "2"})
    changes = [value_changed(f"c_{unique}", n) for n in range(1, 21)]
    produce(platform, changes)

    wait_for(lambda: receiver.hanging == 2, 30, "the hanging endpoint to hold its two slots")
    wait_for(lambda: receiver.ids("/ok") == {c["id"] for c in changes}, 30, "all twenty at the healthy endpoint")
    assert receiver.hanging == len(receiver.at("/hang")) == 2  # its own two slots, no more
    assert sum(d["status"] == "pending" for d in deliveries(api, hanging["id"])) == 20
    receiver.released.set()
    wait_for(lambda: all(d["status"] == "delivered" for d in deliveries(api, hanging["id"])), 30,
             "the hanging endpoint's deliveries once it answers")
    assert receiver.ids("/hang") == {c["id"] for c in changes}
    assert len(deliveries(api, healthy["id"], status="delivered")) == 20


def test_kill_9_and_two_dispatchers_neither_lose_nor_duplicate_deliveries(platform, api, receiver, unique):
    sub = subscribe(api, receiver.url("/mirror"))
    env = {**FAST, "CRM_WEBHOOKS_PER_SUBSCRIPTION": "4"}
    first, second = platform.webhooks(**env), platform.webhooks(**env)
    wait_for(lambda: all(http.get(s.health_url).json()["consumer"]["partitions"] for s in (first, second)), 30,
             "the two dispatchers to share the partitions")
    c = f"c_{unique}"
    before = [value_changed(f"{c}-{n % 8}", n) for n in range(1, 61)]
    produce(platform, before)
    wait_for(lambda: len(receiver.ids("/mirror")) >= 10, 30, "the first deliveries")
    first.kill()
    # the feed publishing some changes again (a relay re-sending after a crash) and new ones
    after = [value_changed(f"{c}-{n % 8}", n) for n in range(61, 121)]
    produce(platform, before[:10] + after)
    platform.webhooks(**env)

    expected = {e["id"] for e in before + after}
    wait_for(lambda: receiver.ids("/mirror") == expected, 60, "every change delivered")
    log = wait_for(lambda: (d := deliveries(api, sub["id"])) and len(d) == 120
                   and all(x["status"] == "delivered" for x in d) and d, 30, "every delivery recorded")
    assert {d["event_id"] for d in log} == expected  # one delivery per change: none lost, none twice
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT event_id) FROM webhook_delivery")
        assert cur.fetchone() == (120, 120)
        cur.execute("SELECT count(*) FROM webhook_attempt WHERE status_code = 200")
        recorded = cur.fetchone()[0]
    # a request in flight when its dispatcher died is sent again once its lease runs out (at least
    # once, like any webhook): only those can reach the receiver twice
    sent = len(receiver.at("/mirror"))
    assert recorded == 120 and sent - 120 <= 4


def test_subscriptions_are_managed_through_the_api_and_bad_input_gets_4xx(api, unique):
    url = f"https://hooks.example.com/crm/{unique}"
    sub = subscribe(api, url, event_types=["value.changed", "lifecycle.changed", "value.changed"],
                    segments=["vip"], description="ERP")
    assert sub["event_types"] == ["lifecycle.changed", "value.changed"] and sub["segments"] == ["vip"]
    sid = sub["id"]
    assert [s["id"] for s in http.get(f"{api}/v1/webhooks").json()["items"]] == [sid]

    patched = http.patch(f"{api}/v1/webhooks/{sid}", json={"segments": None, "enabled": False})
    assert patched.status_code == 200, patched.text
    assert patched.json()["segments"] is None and patched.json()["enabled"] is False
    assert patched.json()["event_types"] == ["lifecycle.changed", "value.changed"] and patched.json()["url"] == url

    rotated = http.post(f"{api}/v1/webhooks/{sid}/rotate-secret")
    assert rotated.status_code == 200 and rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != sub["secret"]
    assert http.post(f"{api}/v1/webhooks/{sid}/rotate-secret", json={"previous_valid_s": 0}).status_code == 200

    def refused(method: str, path: str, status: int, needle: str, **kwargs) -> None:
        resp = http.request(method, f"{api}{path}", **kwargs)
        assert resp.status_code == status, (path, kwargs, resp.text)
        assert needle in resp.text, (needle, resp.text)
        assert "error" in resp.json()

    refused("POST", "/v1/webhooks", 422, "http:// or https://", json={"url": "ftp://example.com/x"})
    refused("POST", "/v1/webhooks", 422, "http:// or https://", json={"url": "not a url"})
    refused("POST", "/v1/webhooks", 422, "http:// or https://", json={"url": "https://"})
    refused("POST", "/v1/webhooks", 422, "invalid port", json={"url": "https://example.com:99999/x"})
    refused("POST", "/v1/webhooks", 422, "url", json={"event_types": ["value.changed"]})
    refused("POST", "/v1/webhooks", 422, "unknown change types customer.teleported",
            json={"url": url, "event_types": ["customer.teleported"]})
    refused("POST", "/v1/webhooks", 422, "event_types", json={"url": url, "event_types": []})
    refused("POST", "/v1/webhooks", 422, "segment names", json={"url": url, "segments": [" "]})
    refused("POST", "/v1/webhooks", 422, "secret", json={"url": url, "secret": "mine"})
    refused("PATCH", f"/v1/webhooks/{sid}", 400, "nothing to change", json={})
    refused("PATCH", f"/v1/webhooks/{sid}", 422, "must not be null", json={"url": None})
    refused("PATCH", f"/v1/webhooks/{sid}", 422, "http:// or https://", json={"url": "mailto:x@example.com"})
    refused("POST", f"/v1/webhooks/{sid}/rotate-secret", 422, "previous_valid_s", json={"previous_valid_s": -1})
    refused("GET", "/v1/webhooks/wh_nope", 404, "no webhook subscription 'wh_nope'")
    refused("GET", "/v1/webhooks/wh_nope/deliveries", 404, "no webhook subscription")
    refused("GET", f"/v1/webhooks/{sid}/deliveries", 400, "invalid cursor", params={"cursor": "abc"})
    refused("GET", f"/v1/webhooks/{sid}/deliveries", 422, "status", params={"status": "lost"})
    refused("GET", f"/v1/webhooks/{sid}/deliveries/12345", 404, "no delivery 12345")
    refused("POST", f"/v1/webhooks/{sid}/deliveries/12345/retry", 404, "no delivery 12345")

    assert http.delete(f"{api}/v1/webhooks/{sid}").status_code == 204
    refused("DELETE", f"/v1/webhooks/{sid}", 404, "no webhook subscription")
    assert http.get(f"{api}/v1/webhooks").json()["items"] == []
