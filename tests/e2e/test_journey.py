"""End to end, as a user: post a journey to the collector, then read the customer from the query API."""
from __future__ import annotations

from tests import http
from tests.processes import wait_for


def journey(u: str) -> tuple[list[dict], dict[str, str]]:
    digits = f"{int(u, 16) % 10**8:08d}"  # every test its own number: a shared phone would merge them
    ids = {"anonymous_id": f"ck-{u}", "account_id": f"acct-{u}", "email": f"Li.Na.{u}@163.com",
           "phone": f"139 {digits[:4]} {digits[4:]}"}
    events = [
        # sent in an order other than event time: the timeline must still come out in event-time order
        {"id": f"{u}-5", "source": "urn:mail", "type": "email.received", "time": "2026-11-03T09:00:00+08:00",
         "data": {"message_id": f"<m-{u}@163.com>", "from": ids["email"], "to": ["service@shop.example.com"],
                  "subject": "物流查询 / where is my parcel", "body_text": "您好，我的订单什么时候到？"}},
        {"id": f"{u}-1", "source": "urn:web", "type": "web.page_viewed", "time": "2026-11-01T10:00:00Z",
         "data": {"anonymous_id": ids["anonymous_id"], "url": "https://shop.example.com/p/fridge",
                  "campaign": {"source": "weibo", "medium": "social", "name": "double11"}}},
        {"id": f"{u}-2", "source": "urn:web", "type": "web.page_viewed", "time": "2026-11-01T10:05:00Z",
         "data": {"anonymous_id": ids["anonymous_id"], "user_id": ids["account_id"],
                  "url": "https://shop.example.com/login"}},
        {"id": f"{u}-3", "source": "urn:shop", "type": "order.placed", "time": "2026-11-01T10:10:00Z",
         "data": {"order_id": f"o-{u}", "account_id": ids["account_id"], "email": ids["email"], "phone": ids["phone"],
                  "items": [{"sku": "HAIER-BCD-470", "name": "海尔冰箱", "quantity": 1, "unit_price": "3999.00"}]}},
        {"id": f"{u}-4", "source": "urn:cti", "type": "call.ended", "time": "2026-11-02T09:00:00Z",
         "data": {"call_id": f"call-{u}", "phone_number": f"+86 139-{digits[:4]}-{digits[4:]}", "queue": "delivery",
                  "agent": "agent-li", "talk_seconds": 185, "wait_seconds": 12}},
    ]
    return events, ids


def test_a_journey_across_four_identifiers_is_one_customer_with_a_complete_timeline(running, unique):
    collector, api = running
    events, ids = journey(unique)
    digits = f"{int(unique, 16) % 10**8:08d}"
    r = http.post(f"{collector}/v1/events", json=events)
    assert r.status_code == 202, r.text
    assert sorted(r.json()["accepted"]) == sorted(e["id"] for e in events)

    def found_by(kind: str, value: str) -> list[dict]:
        resp = http.get(f"{api}/v1/customers", params={kind: value})
        assert resp.status_code == 200, resp.text
        return resp.json()["items"]

    wait_for(lambda: (c := found_by("email", ids["email"])) and c[0]["event_count"] == 5, 60, "all five applied")
    customers = {kind: found_by(kind, value) for kind, value in ids.items()}
    assert all(len(found) == 1 for found in customers.values()), customers
    customer_id = customers["email"][0]["customer_id"]
    assert {found[0]["customer_id"] for found in customers.values()} == {customer_id}

    view = http.get(f"{api}/v1/customers/{customer_id}").json()
    assert view["identities"] == {"account_id": [f"acct-{unique}"], "anonymous_id": [f"ck-{unique}"],
                                  "email": [f"li.na.{unique}@163.com"], "phone": [f"+86139{digits}"]}
    assert view["orders"]["count"] == 1 and view["orders"]["revenue"] == {"CNY": "3999"}
    assert view["contacts"] == {"web": 2, "shop": 1, "phone": 1, "email": 1}

    timeline = http.get(f"{api}/v1/customers/{customer_id}/timeline").json()
    assert [i["event_id"] for i in timeline["items"]] == [f"{unique}-{n}" for n in (1, 2, 3, 4, 5)]
    assert timeline["next_cursor"] is None
    assert timeline["items"][2]["summary"] == f"Order o-{unique} placed: 3999.00 CNY"


def test_timeline_pages_with_a_cursor_and_aliases_answer(running, unique):
    collector, api = running
    events, ids = journey(unique)
    http.post(f"{collector}/v1/events", json=events).raise_for_status()
    customer = wait_for(lambda: (c := http.get(f"{api}/v1/customers", params={"account_id": ids["account_id"]})
                                 .json()["items"]) and c[0]["event_count"] == 5 and c[0], 60, "all five applied")
    pages, cursor = [], None
    while True:
        resp = http.get(f"{api}/v1/customers/{customer['customer_id']}/timeline",
                         params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([i["event_id"] for i in resp["items"]])
        cursor = resp["next_cursor"]
        if cursor is None:
            break
    assert pages == [[f"{unique}-1", f"{unique}-2"], [f"{unique}-3", f"{unique}-4"], [f"{unique}-5"]]
    # the web visit came first, so a customer was created for the cookie and the account joined it;
    # every id the platform ever handed out for this person still answers
    for alias in customer["aliases"]:
        assert http.get(f"{api}/v1/customers/{alias}").json()["customer_id"] == customer["customer_id"]


def test_clear_errors_for_unknown_customers_and_bad_queries(running):
    _, api = running
    r = http.get(f"{api}/v1/customers/c_doesnotexist")
    assert r.status_code == 404 and "c_doesnotexist" in r.json()["error"]
    r = http.get(f"{api}/v1/customers", params={"phone": "12"})
    assert r.status_code == 400 and "phone" in r.json()["error"]
    r = http.get(f"{api}/v1/customers")
    assert r.status_code == 400
    r = http.get(f"{api}/v1/customers/c_x/timeline", params={"cursor": "!!!"})
    assert r.status_code in (400, 404)
    assert http.get(f"{api}/v1/customers/c_x/timeline", params={"limit": 0}).status_code == 422
    assert "crm_api_requests_total" in http.get(f"{api}/metrics").text
    assert http.get(f"{api}/openapi.json").json()["info"]["title"] == "CRM query API"


def test_many_concurrent_lookups_all_answer(running, unique):
    """More requests at once than pooled connections: they queue, none fails."""
    import asyncio

    collector, api = running
    events, ids = journey(unique)
    http.post(f"{collector}/v1/events", json=events).raise_for_status()
    wait_for(lambda: http.get(f"{api}/v1/customers", params={"email": ids["email"]}).json()["items"], 60, "view")

    async def burst() -> list[int]:
        async with http.AsyncClient(base_url=api, timeout=30) as client:
            replies = await asyncio.gather(*(client.get("/v1/customers", params={"email": ids["email"]})
                                             for _ in range(60)))
        return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * 60
