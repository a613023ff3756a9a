"""Consent end to end: touchpoints posted to the collector, the processor deciding segments, the
feed on the real broker, the crm-webhooks dispatcher as a process and real HTTP receivers.

A customer without marketing consent enters no marketing segment and no marketing subscription
gets a delivery about them; granting consent for email lets them in (segment.entered, delivered);
withdrawing it takes them out again (segment.exited on the feed, nothing to marketing receivers,
what was still pending for them cancelled), and nothing marketing follows."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from projections.customer_state import consented, load_rules
from services.common.topics import CUSTOMER_CHANGES, CUSTOMER_STATE
from tests import http
from tests.e2e.test_webhooks import FAST, Receiver, deliveries, subscribe
from tests.feed import outbox_empty, read_topic, stored_states
from tests.processes import wait_for

GATED = {s.name: (s.purpose, s.channel) for s in load_rules().segments if s.purpose != "service"}
MARKETING = {name for name, (purpose, _) in GATED.items() if purpose == "marketing"}
MARKETING_RECEIVERS = ("/marketing", "/segment", "/marketing-segment")


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


def at(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Customer:
    """Posts one customer's touchpoints and waits until all of them are applied and published."""

    def __init__(self, collector: str, api: str, dsn: str, unique: str):
        self.collector, self.api, self.dsn, self.u = collector, api, dsn, unique
        self.acct, self.email = f"consent-{unique}", f"consent.{unique}@163.com"
        self.posted = 0
        self.id: str | None = None

    def post(self, *events: dict) -> None:
        batch = []
        for e in events:
            self.posted += 1
            batch.append({"id": f"{self.u}-{self.posted}", "source": "urn:test:consent", **e})
        r = http.post(f"{self.collector}/v1/events", json=batch)
        assert r.status_code == 202, r.text

    def web(self, path: str, when: timedelta) -> dict:
        return {"type": "web.page_viewed", "time": at(when),
                "data": {"anonymous_id": f"ck-{self.acct}", "user_id": self.acct,
                         "url": f"https://shop.example.com/zh{path}"}}

    def consent(self, channel: str, granted: bool, when: timedelta) -> dict:
        return {"type": "consent.changed", "time": at(when),
                "data": {"email": self.email, "purpose": "marketing", "channel": channel, "granted": granted}}

    def settled(self) -> dict:
        """The stored state once every posted event is on the timeline and the feed is published."""
        if self.id is None:
            def found():
                items = http.get(f"{self.api}/v1/customers", params={"email": self.email}).json()["items"]
                return items[0]["customer_id"] if items else None
            self.id = wait_for(found, 60, f"customer {self.email}")

        def ready():
            timeline = http.get(f"{self.api}/v1/customers/{self.id}/timeline", params={"limit": 100}).json()
            if len(timeline["items"]) < self.posted or not outbox_empty(self.dsn):
                return None
            return stored_states(self.dsn, [self.id]).get(self.id)
        return wait_for(ready, 60, f"{self.id}: {self.posted} events applied and published")


def test_marketing_segments_and_webhooks_honour_consent(platform, receiver, unique):
    _, collector = platform.collector()
    platform.processor()
    _, api = platform.api()
    marketing = subscribe(api, receiver.url("/marketing"), purpose="marketing")
    by_segment = subscribe(api, receiver.url("/segment"), segments=["cart_abandoners", "email_marketing"])
    marketing_segment = subscribe(api, receiver.url("/marketing-segment"), purpose="marketing",
                                  segments=["email_marketing"])
    receiver.answers["/marketing-down"] = [500]  # fails: four quick attempts, then a wait of a minute
    marketing_down = subscribe(api, receiver.url("/marketing-down"), purpose="marketing")
    everything = subscribe(api, receiver.url("/all"))
    assert marketing["purpose"] == "marketing" and everything["purpose"] == "service"
    platform.webhooks(**{**FAST, "CRM_WEBHOOKS_RETRY_SCHEDULE_S": "[0.2, 0.4, 0.8, 60]"})
    c = Customer(collector, api, platform.dsn, unique)

    def delivered(path: str, version: int) -> set[str]:
        return {i for i in receiver.ids(path) if i.startswith(f"{c.id}:{version}:")}

    def logged(subscription: dict) -> set[str]:
        return {d["event_id"] for d in deliveries(api, subscription["id"])}

    # 1. no consent: a cart and two pricing views match cart_abandoners and pricing_interest, but
    # the customer is in no marketing segment, and no marketing subscription hears of them
    c.post({"type": "profile.updated", "time": at(timedelta(minutes=-60)),
            "data": {"account_id": c.acct, "email": c.email, "name": "张伟"}})
    c.settled()
    c.post(c.web("/cart", timedelta(minutes=-50)), c.web("/pricing", timedelta(minutes=-45)),
           c.web("/pricing", timedelta(minutes=-40)))
    first = c.settled()
    assert first["snapshot"]["lifecycle"]["stage"] == "intent"
    assert MARKETING.isdisjoint(first["snapshot"]["segments"]) and first["snapshot"]["profile"]["consent"] == {}
    wait_for(lambda: delivered("/all", first["version"]), 30, "the service subscription's delivery")
    for path in (*MARKETING_RECEIVERS, "/marketing-down"):
        assert receiver.at(path) == [], path
    for sub in (marketing, by_segment, marketing_segment, marketing_down):
        assert logged(sub) == set(), sub["url"]  # nothing queued, either

    # 2. consent to email marketing: in the email segments (pricing_interest needs every channel)
    c.post(c.consent("email", True, timedelta(minutes=-30)))
    granted = c.settled()
    v = granted["version"]
    assert MARKETING & set(granted["snapshot"]["segments"]) == {"cart_abandoners", "email_marketing"}
    entered = {f"{c.id}:{v}:segment.entered:cart_abandoners", f"{c.id}:{v}:segment.entered:email_marketing"}
    wait_for(lambda: entered <= delivered("/marketing", v), 30, "the marketing subscription's deliveries")
    wait_for(lambda: entered <= delivered("/segment", v), 30, "the segment subscription's deliveries")
    wait_for(lambda: f"{c.id}:{v}:segment.entered:email_marketing" in delivered("/marketing-segment", v), 30,
             "the marketing segment subscription's delivery")
    wait_for(lambda: (d := deliveries(api, marketing_down["id"])) and all(x["attempt_count"] == 4 for x in d), 30,
             "the failing endpoint's quick attempts")
    waiting = deliveries(api, marketing_down["id"])
    assert {d["status"] for d in waiting} == {"pending"} and {d["sequence"] for d in waiting} == {v}

    # 3. withdrawn for every channel: out of the segments on the feed; marketing hears nothing of
    # it, and what was still pending for the customer is cancelled
    c.post(c.consent("all", False, timedelta(minutes=-20)))
    withdrawn = c.settled()
    w = withdrawn["version"]
    assert MARKETING.isdisjoint(withdrawn["snapshot"]["segments"])
    assert withdrawn["snapshot"]["profile"]["consent"] == {"marketing:all": False, "marketing:email": False}
    exited = {f"{c.id}:{w}:segment.exited:cart_abandoners", f"{c.id}:{w}:segment.exited:email_marketing"}
    wait_for(lambda: exited <= delivered("/all", w), 30, "the exits at the service subscription")
    cancelled = wait_for(lambda: (d := deliveries(api, marketing_down["id"]))
                         and all(x["status"] == "cancelled" for x in d) and d, 30, "the pending deliveries cancelled")
    assert all("does not consent to marketing" in d["last_error"] for d in cancelled)

    # 4. after that, changes go on (an order), none of them to marketing
    c.post({"type": "order.placed", "time": at(timedelta(minutes=-10)),
            "data": {"order_id": f"o-{unique}", "account_id": c.acct, "email": c.email,
                     "items": [{"sku": "HAIER-BCD-470", "quantity": 1, "unit_price": "3999.00"}]}})
    bought = c.settled()
    assert bought["snapshot"]["lifecycle"]["stage"] == "customer" and bought["version"] > w
    wait_for(lambda: delivered("/all", bought["version"]), 30, "the order's changes at the service subscription")
    for path in (*MARKETING_RECEIVERS, "/marketing-down"):
        sent = receiver.ids(path)
        assert sent and all(i.startswith(f"{c.id}:{v}:") for i in sent), (path, sorted(sent))  # consented only
    for sub in (marketing, by_segment, marketing_segment, marketing_down):
        assert {d["sequence"] for d in deliveries(api, sub["id"])} == {v}, sub["url"]

    # 5. the feed itself: no snapshot or change shows the customer in a segment its consent does not allow
    changes = [json.loads(r.value) for r in read_topic(platform.stack.kafka_bootstrap, platform.topic(CUSTOMER_CHANGES), {c.id})]
    wait_for(lambda: receiver.ids("/all") == {ch["id"] for ch in changes}, 30,
             "every change at the service subscription")
    for ch in changes:
        state = ch["data"]["state"]
        for segment in set(state["segments"]) & set(GATED):
            assert consented(state["profile"]["consent"], *GATED[segment]), ch["id"]
    moves = {(ch["type"], ch["data"]["segment"], ch["sequence"]) for ch in changes
             if ch["type"] in ("segment.entered", "segment.exited") and ch["data"]["segment"] in MARKETING}
    assert moves == {("segment.entered", "cart_abandoners", v), ("segment.entered", "email_marketing", v),
                     ("segment.exited", "cart_abandoners", w), ("segment.exited", "email_marketing", w)}
    snapshots = [json.loads(r.value) for r in read_topic(platform.stack.kafka_bootstrap, platform.topic(CUSTOMER_STATE), {c.id})
                 if r.value is not None]
    assert snapshots and snapshots[-1] == stored_states(platform.dsn, [c.id])[c.id]["snapshot"]
    for snap in snapshots:
        assert all(consented(snap["profile"]["consent"], *GATED[s]) for s in set(snap["segments"]) & set(GATED))


def test_the_subscription_purpose_is_managed_through_the_api(platform, unique):
    _, api = platform.api()
    url = f"https://hooks.example.com/crm/{unique}"
    sub = subscribe(api, url)
    assert sub["purpose"] == "service"
    patched = http.patch(f"{api}/v1/webhooks/{sub['id']}", json={"purpose": "marketing"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["purpose"] == "marketing"
    assert http.get(f"{api}/v1/webhooks/{sub['id']}").json()["purpose"] == "marketing"
    assert [s["purpose"] for s in http.get(f"{api}/v1/webhooks").json()["items"]] == ["marketing"]
    assert subscribe(api, url, purpose="analytics")["purpose"] == "analytics"

    for method, path, body in (("POST", "/v1/webhooks", {"url": url, "purpose": "advertising"}),
                               ("PATCH", f"/v1/webhooks/{sub['id']}", {"purpose": "advertising"}),
                               ("PATCH", f"/v1/webhooks/{sub['id']}", {"purpose": None})):
        resp = http.request(method, f"{api}{path}", json=body)
        assert resp.status_code == 422, resp.text
        assert "purpose" in resp.text and ("unknown purpose 'advertising'" in resp.text
                                           or "must not be null" in resp.text), resp.text

    segments = {s["name"]: s for s in http.get(f"{api}/v1/segments").json()["items"]}
    assert (segments["email_marketing"]["purpose"], segments["email_marketing"]["channel"]) == ("marketing", "email")
    assert (segments["high_value"]["purpose"], segments["high_value"]["channel"]) == ("service", None)
