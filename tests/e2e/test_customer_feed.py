"""Customer state and its feed, end to end: events posted to the collector become lifecycle,
segment, satisfaction, profile, value and merge changes on crm.customer-changes and snapshots on
crm.customer-state; a downstream consumer started at any time rebuilds the exact state."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from examples.downstream_consumer import CustomerMirror
from services.common.topics import CUSTOMER_CHANGES, CUSTOMER_STATE
from tests import http
from tests.feed import outbox_empty, read_topic, stored_states
from tests.processes import wait_for

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def at(delta: timedelta) -> str:
    return (NOW + delta).isoformat().replace("+00:00", "Z")


class Shop:
    """Posts a customer's touchpoints one step at a time and waits for each to be applied."""

    def __init__(self, collector: str, api: str, dsn: str, unique: str):
        self.collector, self.api, self.dsn, self.u = collector, api, dsn, unique
        self.n = 0

    def post(self, *events: dict) -> None:
        batch = []
        for e in events:
            self.n += 1
            batch.append({"id": f"{self.u}-{self.n}", "source": "urn:test:feed", **e})
        r = http.post(f"{self.collector}/v1/events", json=batch)
        assert r.status_code == 202, r.text

    def customer(self, email: str) -> str:
        def found():
            items = http.get(f"{self.api}/v1/customers", params={"email": email}).json()["items"]
            return items[0]["customer_id"] if items else None
        return wait_for(found, 60, f"customer {email}")

    def settled(self, cid: str, version: int) -> dict:  # noqa: D401
        """Wait until the customer's state reached ``version`` and the relay published it."""
        def ready():
            s = stored_states(self.dsn, [cid]).get(cid)
            return s if s and s["version"] >= version and outbox_empty(self.dsn) else None
        return wait_for(ready, 60, f"{cid} at version {version}")


def web(email_or_account: str, path: str, when: timedelta) -> dict:
    return {"type": "web.page_viewed", "time": at(when),
            "data": {"anonymous_id": f"ck-{email_or_account}", "user_id": email_or_account,
                     "url": f"https://shop.example.com/zh{path}"}}


def order(account: str, email: str, n: int, total: str, when: timedelta) -> dict:
    return {"type": "order.placed", "time": at(when),
            "data": {"order_id": f"o-{account}-{n}", "account_id": account, "email": email,
                     "items": [{"sku": "HAIER-BCD-470", "quantity": 1, "unit_price": total}]}}


def test_lifecycle_segments_and_merges_reach_a_mirror_started_at_any_time(platform, unique):
    _, collector = platform.collector()
    platform.processor(CRM_STATE_TICK_S="1")
    _, api = platform.api()
    bootstrap = platform.stack.kafka_bootstrap
    early = CustomerMirror(bootstrap, platform.topic_prefix)
    early.bootstrap_from_snapshots()
    shop = Shop(collector, api, platform.dsn, unique)

    # Wang Fang: prospect -> intent -> customer -> loyal -> at risk (complaint) -> loyal again
    acct, email = f"acct-{unique}", f"wf.{unique}@163.com"
    shop.post({"type": "profile.updated", "time": at(timedelta(days=-10)),
               "data": {"account_id": acct, "email": email, "name": "王芳"}})
    wf = shop.customer(email)
    shop.settled(wf, 1)
    shop.post(web(acct, "/products/fridge", timedelta(days=-9)), web(acct, "/pricing", timedelta(days=-9)),
              web(acct, "/products/washer", timedelta(days=-8)))
    shop.settled(wf, 2)
    shop.post(order(acct, email, 1, "12000.00", timedelta(days=-7)))
    shop.settled(wf, 3)
    shop.post(order(acct, email, 2, "9000.00", timedelta(days=-3)))
    shop.settled(wf, 4)
    shop.post({"type": "ticket.opened", "time": at(timedelta(days=-2)),
               "data": {"ticket_id": f"t-{unique}", "email": email, "kind": "complaint",
                        "subject": "冰箱坏了", "body_text": "刚买的冰箱不制冷，非常失望"}})
    shop.settled(wf, 5)
    shop.post({"type": "ticket.resolved", "time": at(timedelta(days=-1)),
               "data": {"ticket_id": f"t-{unique}", "email": email}},
              {"type": "survey.answered", "time": at(timedelta(hours=-20)),
               "data": {"survey_id": f"s-{unique}", "email": email, "csat": 5, "nps": 10,
                        "comment": "换了新冰箱，非常满意，谢谢！"}})
    final = wait_for(lambda: (s := stored_states(platform.dsn, [wf])[wf]["snapshot"])["lifecycle"]["stage"] == "loyal"
                     and outbox_empty(platform.dsn) and s, 60, "Wang Fang loyal again")
    assert final["lifecycle"]["stage"] == "loyal"
    assert final["value"]["tier"] == "high" and {"high_value", "repeat_buyers"} <= set(final["segments"])

    # a buyer silent for 200 days churns on the clock tick, with no event of its own
    old_acct, old_email = f"old-{unique}", f"old.{unique}@qq.com"
    shop.post(order(old_acct, old_email, 1, "300.00", timedelta(days=-200)))
    old = shop.customer(old_email)
    churned = wait_for(lambda: (s := stored_states(platform.dsn, [old]).get(old)) and
                       s["snapshot"]["lifecycle"]["stage"] == "churned" and outbox_empty(platform.dsn) and s,
                       60, "the silent customer to churn")
    assert churned["snapshot"]["lifecycle"]["rule"].startswith("no order and no contact")

    # two customers linked by one event: one merges into the other, its snapshot is tombstoned
    a_email, b_phone = f"a.{unique}@qq.com", f"+86 137 {int(unique, 16) % 10**8:08d}"
    shop.post({"type": "email.received", "time": at(timedelta(hours=-5)),
               "data": {"message_id": f"<a-{unique}>", "from": a_email, "to": ["service@shop.example.com"],
                        "subject": "价格", "body_text": "请问会员价格是多少？"}},
              {"type": "call.started", "time": at(timedelta(hours=-4)),
               "data": {"call_id": f"c-{unique}", "phone_number": b_phone, "queue": "sales"}})
    a = shop.customer(a_email)
    shop.settled(a, 1)
    b = wait_for(lambda: http.get(f"{api}/v1/customers", params={"phone": b_phone}).json()["items"], 60,
                 "the caller")[0]["customer_id"]
    assert a != b
    shop.post({"type": "profile.updated", "time": at(timedelta(hours=-3)),
               "data": {"email": a_email, "phone": b_phone, "name": "Li Lei"}})
    gone = wait_for(lambda: [c for c, s in stored_states(platform.dsn, [a, b]).items() if not s["live"]]
                    and outbox_empty(platform.dsn), 60, "the merge")
    states = stored_states(platform.dsn, [a, b])
    alias = next(c for c, s in states.items() if not s["live"])
    survivor = ({a, b} - {alias}).pop()

    ours = {wf, old, a, b}
    live = {c: s["snapshot"] for c, s in stored_states(platform.dsn, sorted(ours)).items() if s["live"]}
    assert set(live) == {wf, old, survivor}

    # a mirror that started before everything, and one that starts now, both hold exactly that
    late = CustomerMirror(bootstrap, platform.topic_prefix)
    late.bootstrap_from_snapshots()
    for mirror in (early, late):
        mirror.follow(until=lambda m: {c: m.customers.get(c) for c in ours if c in m.customers} == live, timeout_s=30)
        assert {c: mirror.customers[c] for c in ours if c in mirror.customers} == live
        mirror.close()

    # the change topic: each change once, in per-customer order, the expected story
    changes = [json.loads(r.value) for r in read_topic(bootstrap, platform.topic(CUSTOMER_CHANGES), ours)]
    ids = [c["id"] for c in changes]
    assert len(ids) == len(set(ids)), "a change was published twice"
    story: dict[str, list] = {}
    for c in changes:
        story.setdefault(c["subject"], []).append(c)
    for cid, items in story.items():
        assert [c["sequence"] for c in items] == sorted(c["sequence"] for c in items), cid
    stages = [(c["data"]["from"], c["data"]["to"]) for c in story[wf] if c["type"] == "lifecycle.changed"]
    assert stages == [(None, "prospect"), ("prospect", "intent"), ("intent", "customer"), ("customer", "loyal"),
                      ("loyal", "at_risk"), ("at_risk", "loyal")]
    kinds = {(c["type"], c["data"].get("segment")) for c in story[wf]}
    assert {("segment.entered", "high_value"), ("segment.entered", "open_complaint"),
            ("segment.exited", "open_complaint"), ("satisfaction.at_risk", None), ("satisfaction.recovered", None),
            ("profile.changed", None), ("value.changed", None)} <= kinds
    assert [c["data"]["to"] for c in story[old] if c["type"] == "lifecycle.changed"][-1] == "churned"
    merged = [c for c in story[alias] if c["type"] == "customer.merged"]
    assert len(merged) == 1 and merged[0]["data"]["into"] == survivor and merged[0]["data"]["state"] is None
    assert merged[0] is story[alias][-1]

    # the snapshot topic: the latest record of each key is the stored snapshot, a tombstone for the alias
    latest = {}
    for r in read_topic(bootstrap, platform.topic(CUSTOMER_STATE), ours):
        latest[r.key.decode()] = (json.loads(r.value) if r.value is not None else None, dict(r.headers)["crm-version"])
    assert latest[alias][0] is None and int(latest[alias][1]) == states[alias]["version"]
    assert {c: v for c, (v, _) in latest.items() if v is not None} == live


def test_customer_state_is_served_by_the_api(platform, unique):
    _, collector = platform.collector()
    platform.processor()
    _, api = platform.api()
    shop = Shop(collector, api, platform.dsn, unique)
    acct, email = f"api-{unique}", f"api.{unique}@163.com"
    shop.post(order(acct, email, 1, "25000.00", timedelta(days=-1)),
              {"type": "consent.changed", "time": at(timedelta(hours=-1)),
               "data": {"email": email, "purpose": "marketing", "channel": "email", "granted": True}})
    cid = shop.customer(email)
    wait_for(lambda: stored_states(platform.dsn, [cid]).get(cid, {}).get("snapshot", {}).get("segments")
             == ["email_marketing", "high_value"], 60, "both segments")
    state = http.get(f"{api}/v1/customers/{cid}/state")
    assert state.status_code == 200, state.text
    body = state.json()
    assert body["lifecycle"]["stage"] == "customer" and body["value"]["tier"] == "high"
    listed = http.get(f"{api}/v1/customers", params={"segment": "high_value", "lifecycle": "customer"}).json()
    assert cid in [c["customer_id"] for c in listed["items"]]
    assert http.get(f"{api}/v1/customers", params={"segment": "no_such"}).status_code == 400
    assert http.get(f"{api}/v1/customers", params={"lifecycle": "vip"}).status_code == 400
    segments = http.get(f"{api}/v1/segments").json()
    high = next(s for s in segments["items"] if s["name"] == "high_value")
    assert high["label"]["zh"] == "优质客户" and high["customers"] >= 1
    assert http.get(f"{api}/v1/customers/nobody-{unique}/state").status_code == 404
