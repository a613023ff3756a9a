"""A fax from a gateway's webhook lands on the customer's timeline, the sender's number as their phone."""
from __future__ import annotations

from tests import http
from tests.processes import wait_for


def test_a_gateway_fax_lands_on_the_customers_timeline(platform, unique):
    _, collector = platform.collector()
    platform.processor()
    _, api = platform.api()
    number = f"+86216{int(unique, 16) % 10**7:07d}"
    fax = {"fax_id": f"FX-{unique}", "from": number, "to": "+86 532 8888 0000", "pages": 3, "source": "efax",
           "document": {"filename": "purchase-order.pdf", "content_type": "application/pdf", "size": 48213},
           "at": "2026-11-20T10:15:02+08:00"}
    key = platform.keys["events:write"]
    assert http.post(f"{collector}/v1/hooks/fax", json=fax, key=None).status_code == 401
    bad = http.post(f"{collector}/v1/hooks/fax", json={**fax, "pages": -1}, key=key)
    assert bad.status_code == 422 and "pages" in bad.json()["error"]
    for _ in range(2):  # a redelivered callback: recorded once
        sent = http.post(f"{collector}/v1/hooks/fax", json=fax, key=key)
        assert sent.status_code == 202 and sent.json()["accepted"] == [f"fax:efax:FX-{unique}"], sent.text

    def found():
        items = http.get(f"{api}/v1/customers", params={"phone": number}).json()["items"]
        return items and items[0]
    customer = wait_for(found, 60, "the fax's sender as a customer")
    items = http.get(f"{api}/v1/customers/{customer['customer_id']}/timeline").json()["items"]
    assert [(i["type"], i["channel"]) for i in items] == [("fax.received", "fax")]
    assert items[0]["summary"] == "Fax received, 3 page(s)"  # no number: summaries are not sealed
    assert items[0]["data"]["pages"] == 3 and items[0]["data"]["document"]["size"] == 48213
    assert customer["event_count"] == 1
