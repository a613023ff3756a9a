"""End to end, as the shops do it: signed Shopify and WooCommerce webhooks and the generic order form
posted to the collector, then the customer's orders read from the query API."""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from pathlib import Path

import httpx
import pytest

from tests import http
from tests.processes import wait_for

DATA = Path(__file__).parents[1] / "data" / "orders"
SHOPIFY_SECRET, WOO_SECRET = "shpss_e2e_0f1e2d3c4b5a", "wc e2e secret"


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@pytest.fixture
def shop(platform):
    """(collector URL, query API URL) with both webhook secrets configured, and a processor."""
    _, collector = platform.collector(CRM_SHOPIFY_WEBHOOK_SECRET=SHOPIFY_SECRET,
                                      CRM_WOOCOMMERCE_WEBHOOK_SECRET=WOO_SECRET)
    platform.processor()
    _, api = platform.api()
    return collector, api


def customer_by_email(api: str, email: str, events: int) -> dict:
    """The customer's view once ``events`` touchpoints are applied to it."""
    def found():
        items = http.get(f"{api}/v1/customers", params={"email": email}).json()["items"]
        return items and items[0]["event_count"] >= events and items[0]
    customer = wait_for(found, 60, f"{events} events applied to {email}")
    assert customer["event_count"] == events, customer
    return http.get(f"{api}/v1/customers/{customer['customer_id']}").json()


def timeline(api: str, customer_id: str) -> list[dict]:
    return http.get(f"{api}/v1/customers/{customer_id}/timeline").json()["items"]


def test_shopify_webhooks_make_the_customers_orders(shop, unique):
    collector, api = shop
    domain, email = f"shop-{unique}.myshopify.com", f"buyer.{unique}@example.com"
    order = json.loads((DATA / "shopify_orders_create.json").read_text())
    order.update(id=int(unique, 16), email=email, contact_email=email, name=f"#{unique}", test=False,
                 cancelled_at=None, cancel_reason=None)  # Shopify's sample is a cancelled order: this one is not
    order["customer"].update(id=int(unique, 16) + 1, email=email)
    refund = json.loads((DATA / "shopify_refunds_create.json").read_text())
    refund["order_id"] = order["id"]
    fulfilled = {**order, "fulfillments": [{"id": 255858046, "status": "success", "created_at": "2022-01-03T09:00:00Z",
                                            "tracking_company": "UPS", "tracking_number": "1Z2345"}]}
    updated = {**order, "refunds": [refund], "financial_status": "partially_refunded"}

    def deliver(topic: str, payload: dict, secret: str = SHOPIFY_SECRET) -> httpx.Response:
        body = json.dumps(payload, indent=2).encode()  # signed as sent: these exact bytes
        return http.post(f"{collector}/v1/hooks/shopify", content=body, key=None, headers={
            "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": domain,
            "X-Shopify-Hmac-Sha256": sign(secret, body), "X-Shopify-API-Version": "2025-07",
            "X-Shopify-Webhook-Id": f"wh-{topic}-{unique}", "X-Shopify-Triggered-At": "2022-01-03T14:00:00Z"})

    answers = {topic: deliver(topic, payload) for topic, payload in [
        ("orders/create", order), ("orders/paid", order), ("orders/fulfilled", fulfilled),
        ("refunds/create", refund), ("orders/updated", updated)]}
    assert {t: r.status_code for t, r in answers.items()} == dict.fromkeys(answers, 200), \
        {t: r.text for t, r in answers.items()}
    assert answers["refunds/create"].json()["accepted"] == []  # no customer in it: taken from orders/updated
    prefix = f"shopify:{domain}:{order['id']}"
    assert answers["orders/updated"].json()["accepted"] == [f"{prefix}:refunded:890088186047892319"]
    # Shopify retries a delivery it got no 2xx for: the same event ids, recorded once
    again = deliver("orders/create", order)
    assert again.status_code == 200 and again.json()["accepted"] == [f"{prefix}:placed"]
    # a forged delivery: refused, and its buyer never appears
    forged = {**order, "id": order["id"] + 7, "email": f"forged.{unique}@example.com", "customer": None}
    assert deliver("orders/create", forged, secret="not the secret").status_code == 401

    view = customer_by_email(api, email, 4)
    orders = view["orders"]
    assert orders["count"] == 1 and orders["revenue"] == {"USD": "359.97"} and orders["refunds"] == 1
    assert orders["refunded"] == {"USD": "89.99"} and orders["net_revenue"] == {"USD": "269.98"}
    assert f"shopify:{order['customer']['id']}" in view["identities"]["account_id"]
    items = timeline(api, view["customer_id"])
    assert sorted(i["type"] for i in items) == ["order.paid", "order.placed", "order.refunded", "order.shipped"]
    placed = next(i for i in items if i["type"] == "order.placed")
    assert [line["sku"] for line in placed["data"]["items"]] == ["SKU2006-001", "SKU2006-020", "SKU2006-035"]
    assert placed["summary"] == f"Order {order['id']} placed: 359.97 USD"
    shipped = next(i for i in items if i["type"] == "order.shipped")
    assert shipped["data"]["carrier"] == "UPS" and shipped["data"]["tracking_number"] == "1Z2345"
    assert http.get(f"{api}/v1/customers", params={"email": f"forged.{unique}@example.com"}).json()["items"] == []


def test_woocommerce_state_and_the_generic_form(shop, platform, unique):
    collector, api = shop
    email = f"wc.{unique}@example.com"
    hook = f"{collector}/v1/hooks/woocommerce"
    ping = http.post(hook, content=b"webhook_id=17", key=None,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ping.status_code == 200, ping.text

    order = json.loads((DATA / "woocommerce_order_727.json").read_text())
    order.update(id=int(unique, 16) % 10**9, customer_id=int(unique, 16) % 10**6 + 1, status="pending",
                 date_paid_gmt=None)
    order["billing"]["email"] = email
    done = copy.deepcopy(order)
    done.update(status="completed", date_paid_gmt="2017-03-22T19:30:00", date_completed_gmt="2017-03-23T10:00:00",
                refunds=[{"id": 901, "reason": "one item broken", "total": "-3.00"}])

    def deliver(topic: str, payload: dict) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return http.post(hook, content=body, key=None, headers={
            "Content-Type": "application/json", "X-WC-Webhook-Topic": topic, "X-WC-Webhook-Resource": "order",
            "X-WC-Webhook-Event": topic.split(".")[1], "X-WC-Webhook-Source": f"https://wc-{unique}.example.com/",
            "X-WC-Webhook-ID": "17", "X-WC-Webhook-Delivery-ID": unique,
            "X-WC-Webhook-Signature": sign(WOO_SECRET, body)})

    created, updated, resent = deliver("order.created", order), deliver("order.updated", done), \
        deliver("order.updated", done)
    assert (created.status_code, updated.status_code, resent.status_code) == (200, 200, 200), resent.text
    assert len(created.json()["accepted"]) == 1 and len(updated.json()["accepted"]) == 4

    generic = {"order_id": f"YZ-{unique}", "status": "placed", "source": "youzan", "currency": "CNY",
               "items": [{"sku": "HAIER-BCD-470", "name": "海尔冰箱", "quantity": 1, "unit_price": "3999.00"}],
               "customer": {"email": email}, "at": "2026-11-11T00:05:00+08:00"}
    assert http.post(f"{collector}/v1/hooks/orders", json=generic, key=None).status_code == 401
    bad = http.post(f"{collector}/v1/hooks/orders", json={**generic, "items": []}, key=platform.keys["events:write"])
    assert bad.status_code == 422 and "items" in bad.json()["error"]
    ok = http.post(f"{collector}/v1/hooks/orders", json=[generic, {**generic, "status": "paid", "amount": "3999.00"}],
                   key=platform.keys["events:write"])
    assert ok.status_code == 202 and ok.json()["accepted"] == [f"youzan:YZ-{unique}:placed", f"youzan:YZ-{unique}:paid"]

    view = customer_by_email(api, email, 6)  # woo: placed, paid, shipped, refunded; generic: placed, paid
    orders = view["orders"]
    assert orders["count"] == 2 and orders["revenue"] == {"USD": "29.35", "CNY": "3999"}
    assert orders["refunded"] == {"USD": "3"} and orders["net_revenue"] == {"USD": "26.35", "CNY": "3999"}
    assert f"woo:{order['customer_id']}" in view["identities"]["account_id"]
    types = sorted(i["type"] for i in timeline(api, view["customer_id"]))
    assert types == ["order.paid", "order.paid", "order.placed", "order.placed", "order.refunded", "order.shipped"]


def test_the_order_chain_through_the_generic_form(shop, platform, unique):
    """Every status of an appliance order, sent out of order and twice, read back as one order with
    its history; a second order under another identifier follows the customer when they merge."""
    collector, api = shop
    email, phone = f"chain.{unique}@example.com", f"+86139{int(unique, 16) % 10**8:08d}"
    oid, other = f"HA-{unique}", f"HB-{unique}"
    base = {"order_id": oid, "source": "haier-mall", "currency": "CNY", "customer": {"email": email}}
    chain = [
        {"status": "placed", "at": "2026-11-11T00:05:00+08:00",
         "items": [{"sku": "HAIER-BCD-470", "name": "海尔冰箱", "quantity": 1, "unit_price": "3999.00"}]},
        {"status": "paid", "amount": "3999.00", "at": "2026-11-11T00:06:00+08:00"},
        {"status": "shipped", "carrier": "SF Express", "tracking_number": "SF1234567890",
         "promised_at": "2026-11-13T18:00:00+08:00", "at": "2026-11-12T09:00:00+08:00"},
        {"status": "delivered", "at": "2026-11-14T10:00:00+08:00"},
        {"status": "installation_scheduled", "scheduled_for": "2026-11-15T09:00:00+08:00",
         "at": "2026-11-14T11:00:00+08:00"},
        {"status": "installation_completed", "at": "2026-11-15T10:30:00+08:00"},
        {"status": "return_requested", "reason": "the door does not close", "at": "2026-11-20T10:00:00+08:00"},
        {"status": "returned", "at": "2026-11-22T10:00:00+08:00"},
        {"status": "refunded", "amount": "3999.00", "at": "2026-11-23T10:00:00+08:00"},
    ]
    key = platform.keys["events:write"]
    shuffled = [chain[i] for i in (5, 2, 8, 0, 7, 3, 1, 6, 4)]
    for part in (shuffled[:5], shuffled[3:]):  # two overlap: sent twice, recorded once
        sent = http.post(f"{collector}/v1/hooks/orders", json=[{**base, **f} for f in part], key=key)
        assert sent.status_code == 202, sent.text
    cancelled = {"order_id": other, "source": "haier-mall", "customer": {"phone": phone}}
    sent = http.post(f"{collector}/v1/hooks/orders", key=key, json=[
        {**cancelled, "status": "placed", "at": "2026-11-12T08:00:00+08:00",
         "items": [{"sku": "HAIER-EG100", "quantity": 1, "unit_price": "2599.00"}]},
        {**cancelled, "status": "cancelled", "reason": "ordered twice", "at": "2026-11-12T08:30:00+08:00"}])
    assert sent.status_code == 202, sent.text

    def order(order_id: str, events: int):
        got = http.get(f"{api}/v1/orders/{order_id}")
        return got.status_code == 200 and len(got.json()["history"]) == events and got.json()
    got = wait_for(lambda: order(oid, 9), 60, "the whole chain applied")
    assert [h["status"] for h in got["history"]] == [f["status"] for f in chain]
    assert got["status"] == "refunded" and got["paid"] == got["refunded"] == "3999.00" and got["total"] == "3999.00"
    assert got["carrier"] == "SF Express" and got["tracking_number"] == "SF1234567890"
    assert got["late"] is True  # promised by the 13th 18:00, delivered on the 14th
    assert got["installation"]["completed_at"].startswith("2026-11-15T02:30:00")
    assert "door" not in json.dumps(got)  # reasons stay sealed on the timeline
    assert wait_for(lambda: order(other, 2), 60, "the cancelled order")["status"] == "cancelled"
    assert http.get(f"{api}/v1/orders/nope-{unique}").status_code == 404

    customer = customer_by_email(api, email, 9)
    listed = http.get(f"{api}/v1/customers/{customer['customer_id']}/orders").json()
    assert [o["order_id"] for o in listed["items"]] == [oid]
    # the phone turns out to be the same customer: the cancelled order moves to them
    sent = http.post(f"{collector}/v1/hooks/orders", key=key, json={
        **base, "status": "paid", "amount": "0", "event_id": "link", "customer": {"email": email, "phone": phone},
        "at": "2026-11-24T10:00:00+08:00"})
    assert sent.status_code == 202, sent.text

    def merged():
        cid = http.get(f"{api}/v1/customers", params={"email": email}).json()["items"][0]["customer_id"]
        items = http.get(f"{api}/v1/customers/{cid}/orders").json()["items"]
        return sorted(o["order_id"] for o in items) == sorted([oid, other]) and items
    items = wait_for(merged, 60, "both orders under the merged customer")
    assert {o["customer_id"] for o in items} == {items[0]["customer_id"]}
