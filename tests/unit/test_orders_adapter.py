"""The orders adapter: Shopify and WooCommerce webhooks and the generic form mapped to order.* events.

The payloads are the platforms' published samples (tests/data/orders, README there says where from);
every event the mapping makes is put through the platform's own validation (events.envelope).
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from events.envelope import validate
from services.common.settings import Settings
from services.ingest.adapters import _orders_map as m
from services.ingest.adapters import orders as routes
from services.ingest.intake import Outcome

DATA = Path(__file__).parents[1] / "data" / "orders"
SHOP = "jsmith.myshopify.com"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def sample(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def valid(events: list[dict[str, Any]]) -> list:
    """The touchpoints the platform makes of them (raises when an event is invalid)."""
    return [validate(e, received_at=NOW, default_region="CN") for e in events]


def shopify_sign(secret: str, body: bytes) -> str:
    """As Shopify documents it: base64 of the HMAC-SHA256 digest of the raw body, keyed by the
    app's client secret."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode()


def woo_sign(secret: str, body: bytes) -> str:
    """As WC_Webhook::generate_signature does: base64_encode(hash_hmac('sha256', $body, $secret, true))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# --- signatures ---------------------------------------------------------------------------------

def test_the_signature_is_checked_on_the_raw_bytes():
    body = (DATA / "shopify_orders_create.json").read_bytes()
    secret = "shpss_0123456789abcdef"
    assert m.signature_ok(secret, body, shopify_sign(secret, body))
    assert m.signature_ok(secret, body, woo_sign(secret, body))
    # the same JSON re-serialised is other bytes: the signature no longer matches
    assert not m.signature_ok(secret, orjson.dumps(json.loads(body)), shopify_sign(secret, body))
    assert not m.signature_ok("another secret", body, shopify_sign(secret, body))
    assert not m.signature_ok(secret, body, None)
    assert not m.signature_ok(secret, body, "")
    assert not m.signature_ok(secret, body, hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())
    assert not m.signature_ok(secret, body, "ünïcode")


# --- Shopify ------------------------------------------------------------------------------------

def test_shopify_orders_create_sample_is_one_order_placed_with_its_line_items():
    out = m.shopify_events("orders/create", SHOP, sample("shopify_orders_create.json"))
    assert out.skipped == []
    [event] = out.events
    assert event["id"] == f"shopify:{SHOP}:820982911946154508:placed"  # every digit of an id past 2^53
    assert event["source"] == f"urn:shopify:{SHOP}" and event["type"] == "order.placed"
    assert event["time"] == "2021-12-31T19:00:00-05:00"
    data = event["data"]
    assert data["order_id"] == "820982911946154508" and data["currency"] == "USD" and data["total"] == "359.97"
    assert data["items"] == [
        {"sku": "SKU2006-001", "name": "Aviator sunglasses", "quantity": 1, "unit_price": "89.99"},
        {"sku": "SKU2006-020", "name": "Mid-century lounger", "quantity": 1, "unit_price": "159.99"},
        {"sku": "SKU2006-035", "name": "Coffee table", "quantity": 1, "unit_price": "119.99"},
    ]
    assert data["email"] == "jon@example.com"  # the order's email before the customer record's
    assert data["account_id"] == "shopify:115310627314723954"
    assert "phone" not in data  # "555-555-SHIP" is no US number: left out rather than misread
    assert data["properties"] == {"platform": "shopify", "shop": SHOP, "order_name": "#9999", "order_number": 1234,
                                  "test": True}
    [tp] = valid(out.events)
    assert [i.key for i in tp.identifiers] == ["account_id:shopify:115310627314723954", "email:jon@example.com"]
    assert tp.data.total == Decimal("359.97")


def test_shopify_line_without_sku_falls_back_to_variant_then_product():
    order = sample("shopify_orders_create.json")
    order["line_items"][0].update(sku="", variant_id=40812345, variant_title="Gold / Large")
    order["line_items"][1].update(sku=None, variant_id=None)
    order["line_items"][2]["quantity"] = 0  # removed by an order edit: nothing to record
    [event] = m.shopify_events("orders/create", SHOP, order).events
    items = event["data"]["items"]
    assert [i["sku"] for i in items] == ["variant:40812345", "product:788032119674292923"]
    assert items[0]["name"] == "Aviator sunglasses - Gold / Large"
    valid([event])


def test_shopify_paid_fulfilled_and_partially_fulfilled():
    order = sample("shopify_orders_create.json")
    order["updated_at"] = "2022-01-02T10:00:00-05:00"
    [paid] = m.shopify_events("orders/paid", SHOP, order).events
    assert paid["id"] == f"shopify:{SHOP}:820982911946154508:paid" and paid["type"] == "order.paid"
    assert paid["data"]["amount"] == "359.97" and paid["data"]["method"] == "visa, bogus"
    assert paid["time"] == "2022-01-02T10:00:00-05:00"

    # Shopify's sample lists no fulfillment: one shipment for the order
    [shipped] = m.shopify_events("orders/fulfilled", SHOP, order).events
    assert shipped["id"] == f"shopify:{SHOP}:820982911946154508:shipped" and shipped["type"] == "order.shipped"

    order["fulfillments"] = [
        {"id": 255858046, "order_id": 820982911946154508, "status": "success",
         "created_at": "2022-01-03T09:00:00-05:00", "tracking_company": "UPS", "tracking_number": "1Z2345",
         "tracking_numbers": ["1Z2345"]},
        {"id": 255858047, "status": "cancelled", "tracking_company": "UPS", "tracking_number": "1Z9999"},
    ]
    partial = m.shopify_events("orders/partially_fulfilled", SHOP, order).events
    order["fulfillments"].append({"id": 255858048, "status": "success", "created_at": "2022-01-04T09:00:00-05:00",
                                  "tracking_company": "SF Express", "tracking_number": None,
                                  "tracking_numbers": ["SF1234567890"]})
    full = m.shopify_events("orders/fulfilled", SHOP, order).events
    assert [e["id"] for e in partial] == [f"shopify:{SHOP}:820982911946154508:shipped:255858046"]
    assert [e["id"] for e in full] == [f"shopify:{SHOP}:820982911946154508:shipped:255858046",
                                       f"shopify:{SHOP}:820982911946154508:shipped:255858048"]
    assert full[0] == partial[0]  # the shipment already recorded is the same event again
    assert (full[1]["data"]["carrier"], full[1]["data"]["tracking_number"]) == ("SF Express", "SF1234567890")
    assert full[0]["time"] == "2022-01-03T09:00:00-05:00"
    valid([paid, shipped, *full])


def test_a_shopify_refund_is_recorded_from_the_order_that_names_the_customer():
    refund = sample("shopify_refunds_create.json")
    alone = m.shopify_events("refunds/create", SHOP, refund)
    # Shopify's refund body names the order only: no customer to put the refund on
    assert alone.events == [] and "names no customer" in alone.skipped[0]

    order = sample("shopify_orders_create.json")
    order["refunds"] = [refund]
    [was_cancelled, updated] = m.shopify_events("orders/updated", SHOP, order).events  # the sample is cancelled
    assert m.shopify_events("orders/cancelled", SHOP, order).events == [was_cancelled, updated]  # either topic:
    # the same events, recorded once
    assert updated["id"] == f"shopify:{SHOP}:820982911946154508:refunded:890088186047892319"
    assert updated["type"] == "order.refunded" and updated["time"] == "2021-12-31T19:00:00-05:00"
    assert updated["data"]["amount"] == "89.99" and updated["data"]["currency"] == "USD"
    assert updated["data"]["reason"] == "Things were damaged"
    assert updated["data"]["email"] == "jon@example.com"

    # a refund body that does name the customer (a custom app adding it) is recorded directly
    [direct] = m.shopify_events("refunds/create", SHOP, {**refund, "email": "jon@example.com"}).events
    assert direct["id"] == updated["id"]
    valid([updated, direct])


def test_shopify_refund_amount_from_successful_refund_transactions_else_line_subtotals():
    refund = sample("shopify_refunds_create.json")
    base = refund["transactions"][0]
    refund["transactions"] = [{**base, "amount": "50.00"}, {**base, "amount": "20.50"},
                              {**base, "amount": "99.00", "status": "failure"},
                              {**base, "amount": "10.00", "kind": "sale"}]
    who = {"email": "jon@example.com"}
    [event] = m.shopify_refund(SHOP, refund, "USD", who).events
    assert event["data"]["amount"] == "70.50"

    refund["transactions"] = []  # no money moved through a gateway: the refunded lines' subtotals
    [event] = m.shopify_refund(SHOP, refund, None, who).events
    assert event["data"]["amount"] == "89.99" and event["data"]["currency"] == "USD"

    refund["refund_line_items"] = []
    nothing = m.shopify_refund(SHOP, refund, "USD", who)
    assert nothing.events == [] and "no money" in nothing.skipped[0]


def test_shopify_cancellation_without_a_refund_is_recorded_and_unmapped_topics_are_skipped_with_a_reason():
    order = sample("shopify_orders_create.json")
    [cancelled] = m.shopify_events("orders/cancelled", SHOP, order).events
    assert cancelled["type"] == "order.cancelled" and cancelled["id"] == f"shopify:{SHOP}:820982911946154508:cancelled"
    assert cancelled["time"] == "2021-12-31T19:00:00-05:00" and cancelled["data"]["reason"] == "customer"
    assert m.shopify_events("orders/updated", SHOP, order).events == [cancelled]  # cancelled_at says it too
    order = {**order, "cancelled_at": None}
    for topic in ("products/update", "customers/create", "orders/edited", "app/uninstalled"):
        out = m.shopify_events(topic, SHOP, order)
        assert out.events == [] and topic in out.skipped[0]
    assert m.shopify_events("orders/updated", SHOP, order).events == []
    assert m.shopify_events("orders/create", SHOP, ["not", "an", "order"]).skipped


def test_shopify_multi_currency_order_and_a_guest():
    order = sample("shopify_orders_create.json")
    order.update(currency="eur", presentment_currency="USD", total_price="331.18")
    del order["customer"]
    order.update(email=None, contact_email=None, phone="(613) 555-0101")  # a Canadian shop's buyer, by phone
    order["billing_address"].update(country_code="CA", phone=None)
    [event] = m.shopify_events("orders/create", SHOP, order).events
    data = event["data"]
    assert data["currency"] == "EUR" and data["total"] == "331.18"
    assert data["properties"]["presentment_currency"] == "USD"
    assert data["phone"] == "+16135550101" and "account_id" not in data and "email" not in data
    valid([event])

    order.update(phone=None)
    order["shipping_address"]["phone"] = None
    out = m.shopify_events("orders/create", SHOP, order)
    assert out.events == [] and "names no customer" in out.skipped[0]


def test_a_huge_shopify_order_keeps_its_total_and_500_items():
    order = sample("shopify_orders_create.json")
    line = order["line_items"][0]
    order["line_items"] = [{**line, "id": n, "sku": f"SKU-{n}"} for n in range(620)]
    [event] = m.shopify_events("orders/create", SHOP, order).events
    assert len(event["data"]["items"]) == 500 and event["data"]["properties"]["items_truncated"] == 620
    assert event["data"]["total"] == "359.97"
    valid([event])


# --- WooCommerce --------------------------------------------------------------------------------

def woo_completed_and_refunded(order: dict[str, Any]) -> dict[str, Any]:
    later = copy.deepcopy(order)
    later.update(status="refunded", date_completed_gmt="2017-03-24T08:00:00", date_modified_gmt="2017-03-25T11:00:00",
                 refunds=[{"id": 730, "reason": "Damaged on arrival", "total": "-10.00"}])
    return later


def test_woocommerce_sample_order_is_placed_and_paid_for_a_guest():
    out = m.woocommerce_events("order.created", "example.com", sample("woocommerce_order_727.json"))
    placed, paid = out.events
    assert placed["id"] == "woo:example.com:727:placed" and placed["source"] == "urn:woocommerce:example.com"
    assert placed["time"] == "2017-03-22T19:28:02Z"  # the *_gmt times are UTC without an offset
    data = placed["data"]
    assert data["items"] == [
        {"sku": "product:93", "name": "Woo Single #1", "quantity": 2, "unit_price": "3.00"},  # empty SKU
        {"sku": "Bar3", "name": "Ship Your Idea \u2013 Color: Black, Size: M Test", "quantity": 1,
         "unit_price": "12.00"},
    ]
    assert data["total"] == "29.35" and data["currency"] == "USD" and data["order_id"] == "727"
    assert data["email"] == "john.doe@example.com"
    assert "account_id" not in data  # customer_id 0: a guest, known by email (and phone) only
    assert "phone" not in data  # (555) 555-5555 is a fictional US number
    assert paid["id"] == "woo:example.com:727:paid" and paid["time"] == "2017-03-22T19:28:08Z"
    assert paid["data"]["amount"] == "29.35" and paid["data"]["method"] == "Direct Bank Transfer"
    valid(out.events)


def test_woocommerce_later_states_add_only_the_new_facts():
    order = sample("woocommerce_order_727.json")
    order.update(customer_id=5, status="pending", date_paid_gmt=None)
    order["billing"]["phone"] = "(415) 555-0132"
    first = m.woocommerce_events("order.created", "example.com", order).events
    assert [e["type"] for e in first] == ["order.placed"]
    assert first[0]["data"]["account_id"] == "woo:5" and first[0]["data"]["phone"] == "+14155550132"

    paid = {**order, "status": "processing", "date_paid_gmt": "2017-03-22T19:30:00"}
    later = woo_completed_and_refunded(paid)
    second = m.woocommerce_events("order.updated", "example.com", later).events
    assert [e["id"] for e in second] == ["woo:example.com:727:placed", "woo:example.com:727:paid",
                                         "woo:example.com:727:shipped", "woo:example.com:727:refunded:730"]
    assert second[0]["id"] == first[0]["id"]  # the placement again, under its id: deduplicated
    shipped, refunded = second[2], second[3]
    assert shipped["time"] == "2017-03-24T08:00:00Z"
    assert refunded["data"]["amount"] == "10.00" and refunded["data"]["reason"] == "Damaged on arrival"
    assert m.woocommerce_events("order.updated", "example.com", later).events == second  # re-sent: same events
    valid(second)


def test_woocommerce_topics_and_states_that_are_no_order_fact():
    order = sample("woocommerce_order_727.json")
    assert m.woocommerce_events("order.deleted", "example.com", {"id": 727}).events == []
    assert m.woocommerce_events("product.updated", "example.com", order).skipped
    draft = m.woocommerce_events("order.created", "example.com", {**order, "status": "checkout-draft"})
    assert draft.events == [] and "checkout-draft" in draft.skipped[0]
    nobody = m.woocommerce_events("order.created", "example.com", {**order, "billing": {"email": "", "phone": ""}})
    assert nobody.events == [] and "names no customer" in nobody.skipped[0]
    restored = m.woocommerce_events("order.restored", "example.com", {**order, "currency": "CNY"})
    assert {e["data"]["currency"] for e in restored.events} == {"CNY"}


@pytest.mark.parametrize("header, host", [("https://Shop.Example.com/", "shop.example.com"),
                                          ("https://example.com/shop/", "example.com/shop"),
                                          ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
                                          ("", None), (None, None)])
def test_woocommerce_source_host(header, host):
    assert m.woo_source(header) == host


# --- the generic form ---------------------------------------------------------------------------

def test_generic_orders_map_to_the_events_of_their_status():
    placed = m.GenericOrder.model_validate({
        "order_id": "YZ-20261111-001", "status": "placed", "currency": "CNY", "source": "youzan",
        "items": [{"sku": "HAIER-BCD-470", "name": "海尔冰箱", "quantity": 1, "unit_price": "3999.00"}],
        "customer": {"phone": "13912345678"}, "at": "2026-11-11T00:05:00+08:00"})
    event = m.generic_event(placed)
    assert event["id"] == "youzan:YZ-20261111-001:placed" and event["source"] == "urn:orders:youzan"
    assert event["type"] == "order.placed" and event["time"] == "2026-11-11T00:05:00+08:00"
    assert event["data"]["items"][0]["unit_price"] == "3999.00" and event["data"]["phone"] == "13912345678"
    paid = m.generic_event(m.GenericOrder.model_validate(
        {"order_id": "A1", "status": "paid", "total": "20", "customer": {"email": "a.b@example.cn"}}))
    assert paid["data"]["amount"] == "20" and paid["id"] == "shop:A1:paid" and paid["data"]["currency"] == "CNY"
    refund = m.generic_event(m.GenericOrder.model_validate(
        {"order_id": "A1", "status": "refunded", "amount": "5", "event_id": "refund-2",
         "customer": {"account_id": "u-1"}, "reason": "late"}))
    assert refund["id"] == "shop:A1:refund-2" and refund["data"]["reason"] == "late"
    valid([event, paid, refund])


@pytest.mark.parametrize("body, field", [
    ({"status": "placed", "customer": {"email": "a@b.cn"}, "items": []}, "order_id"),
    ({"order_id": "1", "status": "sold", "customer": {"email": "a@b.cn"}}, "status"),
    ({"order_id": "1", "status": "placed", "customer": {"email": "a@b.cn"}}, "items"),
    ({"order_id": "1", "status": "refunded", "customer": {"email": "a@b.cn"}}, "amount"),
    ({"order_id": "1", "status": "shipped", "customer": {}}, "customer"),
    ({"order_id": "1", "status": "shipped", "customer": {"email": "a@b.cn"}, "currency": "yuan"}, "currency"),
    ({"order_id": "1", "status": "placed", "customer": {"email": "a@b.cn"},
      "items": [{"sku": "x", "quantity": 0, "unit_price": "1"}]}, "items.0.quantity"),
    ({"order_id": "1", "status": "shipped", "customer": {"email": "a@b.cn"}, "at": "2026-11-11T00:05:00"}, "at"),
    ({"order_id": "1", "status": "shipped", "customer": {"email": "a@b.cn"}, "shop": "x"}, "shop"),
])
def test_generic_validation_names_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        m.GenericOrder.model_validate(body)
    text = str(err.value)
    assert field in text, text


# --- the routes (the mapping and answers; the collector's Intake is replaced by a recorder) --------

class RecordingIntake:
    def __init__(self, settings: Settings):
        self.settings, self.received = settings, []

    async def accept(self, caller, items, *, single=False, adapter=None) -> Outcome:
        self.received.append(items)
        return Outcome(202, accepted=[i["id"] for i in items])


def client(**secrets: str) -> tuple[TestClient, RecordingIntake]:
    settings = Settings(**{k: SecretStr(v) for k, v in secrets.items()})
    intake = RecordingIntake(settings)
    app = FastAPI()
    routes.install(app, intake, settings)
    return TestClient(app), intake


def test_shopify_route_answers():
    body = (DATA / "shopify_orders_create.json").read_bytes()
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Shop-Domain": SHOP, "Content-Type": "application/json",
               "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", "X-Shopify-API-Version": "2025-07"}

    def deliver(app: TestClient, content: bytes = body, secret: str = "s3cret", **changed: str):
        sent = {**headers, "X-Shopify-Hmac-Sha256": shopify_sign(secret, content), **changed}
        return app.post("/v1/hooks/shopify", content=content, headers={k: v for k, v in sent.items() if v})

    unconfigured, _ = client()
    r = deliver(unconfigured)
    assert r.status_code == 404 and "CRM_SHOPIFY_WEBHOOK_SECRET" in r.json()["error"]

    app, intake = client(shopify_webhook_secret="s3cret")
    bad = deliver(app, secret="x")
    assert bad.status_code == 401 and "X-Shopify-Hmac-Sha256" in bad.json()["error"] and intake.received == []
    ok = deliver(app)
    assert ok.status_code == 200 and ok.json()["accepted"] == [f"shopify:{SHOP}:820982911946154508:placed"]
    other = deliver(app, **{"X-Shopify-Topic": "products/create"})
    assert other.status_code == 200 and other.json()["accepted"] == [] and other.json()["skipped"]
    r = deliver(app, content=b"{not json")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = deliver(app, **{"X-Shopify-Shop-Domain": ""})
    assert r.status_code == 400 and "X-Shopify-Shop-Domain" in r.json()["error"]
    assert len(intake.received) == 1


def test_woocommerce_route_answers_the_ping_and_checks_signatures():
    app, intake = client(woocommerce_webhook_secret="wc-secret")
    # WooCommerce's check of a new webhook: an unsigned form post
    ping = app.post("/v1/hooks/woocommerce", content=b"webhook_id=42",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ping.status_code == 200 and ping.json()["webhook_id"] == 42
    body = (DATA / "woocommerce_order_727.json").read_bytes()
    headers = {"X-WC-Webhook-Topic": "order.created", "X-WC-Webhook-Resource": "order", "X-WC-Webhook-Event": "created",
               "X-WC-Webhook-Source": "https://example.com/", "X-WC-Webhook-ID": "42",
               "X-WC-Webhook-Delivery-ID": "8f3c0a", "Content-Type": "application/json"}
    unsigned = app.post("/v1/hooks/woocommerce", content=body, headers=headers)
    assert unsigned.status_code == 401 and "X-WC-Webhook-Signature" in unsigned.json()["error"]
    ok = app.post("/v1/hooks/woocommerce", content=body,
                  headers={**headers, "X-WC-Webhook-Signature": woo_sign("wc-secret", body)})
    assert ok.status_code == 200
    assert ok.json()["accepted"] == ["woo:example.com:727:placed", "woo:example.com:727:paid"]
    assert [len(r) for r in intake.received] == [2]
    unconfigured, _ = client()
    assert unconfigured.post("/v1/hooks/woocommerce", content=b"webhook_id=42").status_code == 404


def test_generic_form_takes_every_status_of_the_chain():
    who = {"phone": "13912345678"}
    sent = [m.generic_event(m.GenericOrder.model_validate({"order_id": "YZ-9", "customer": who, **extra}))
            for extra in (
                {"status": "shipped", "carrier": "SF Express", "tracking_number": "SF1",
                 "promised_at": "2026-11-13T18:00:00+08:00"},
                {"status": "delivered", "at": "2026-11-14T10:00:00+08:00"},
                {"status": "cancelled", "reason": "changed my mind"},
                {"status": "return_requested", "reason": "door does not close"},
                {"status": "returned", "carrier": "SF Express", "tracking_number": "SF2"},
                {"status": "installation_scheduled", "scheduled_for": "2026-11-15T09:00:00+08:00",
                 "installer": "Haier service Qingdao"},
                {"status": "installation_completed"})]
    assert [e["type"] for e in sent] == ["order.shipped", "order.delivered", "order.cancelled",
                                         "order.return_requested", "order.returned",
                                         "order.installation_scheduled", "order.installation_completed"]
    assert sent[0]["data"]["promised_at"] == "2026-11-13T18:00:00+08:00" and sent[0]["data"]["carrier"] == "SF Express"
    assert sent[2]["data"]["reason"] == "changed my mind" and sent[2]["id"] == "shop:YZ-9:cancelled"
    assert sent[5]["data"]["scheduled_for"] == "2026-11-15T09:00:00+08:00"
    valid(sent)


def test_shopify_delivered_fulfillments_and_a_cancelled_woocommerce_order():
    order = {**sample("shopify_orders_create.json"), "cancelled_at": None, "fulfillments": [
        {"id": 1, "status": "success", "shipment_status": "delivered", "created_at": "2022-01-03T09:00:00Z",
         "updated_at": "2022-01-05T16:00:00Z", "tracking_company": "UPS", "tracking_number": "1Z2345"},
        {"id": 2, "status": "success", "shipment_status": "in_transit", "created_at": "2022-01-03T09:00:00Z"}]}
    events = m.shopify_events("orders/fulfilled", SHOP, order).events
    assert [e["type"] for e in events] == ["order.shipped", "order.shipped", "order.delivered"]
    delivered = events[-1]
    assert delivered["id"] == f"shopify:{SHOP}:820982911946154508:delivered:1"
    assert delivered["time"] == "2022-01-05T16:00:00Z" and delivered["data"]["tracking_number"] == "1Z2345"
    assert m.shopify_events("orders/updated", SHOP, order).events == [delivered]
    valid(events)
    woo = sample("woocommerce_order_727.json")
    woo.update(customer_id=5, status="cancelled", date_modified_gmt="2017-03-23T10:00:00")
    cancelled = [e for e in m.woocommerce_events("order.updated", "example.com", woo).events
                 if e["type"] == "order.cancelled"]
    assert [e["id"] for e in cancelled] == ["woo:example.com:727:cancelled"]
    assert cancelled[0]["time"] == "2017-03-23T10:00:00Z"
    valid(cancelled)
