"""The query API's explain, time-travel and search features, end to end through the collector."""
from __future__ import annotations

import httpx
import pytest

from tests.processes import wait_for


def events(u: str) -> list[dict]:
    return [
        {"id": f"{u}-1", "source": "urn:web", "type": "web.page_viewed", "time": "2026-11-01T10:00:00Z",
         "data": {"anonymous_id": f"ck-{u}", "url": "https://shop.example.com/"}},
        {"id": f"{u}-2", "source": "urn:crm", "type": "profile.updated", "time": "2026-11-01T11:00:00Z",
         "data": {"account_id": f"acct-{u}", "name": f"张伟 Zhang{u}", "company": "海尔集团 Haier"}},
        {"id": f"{u}-3", "source": "urn:shop", "type": "order.placed", "time": "2026-11-02T10:00:00Z",
         "data": {"order_id": f"o1-{u}", "account_id": f"acct-{u}",
                  "items": [{"sku": "A", "quantity": 1, "unit_price": "100.00"}]}},
        {"id": f"{u}-4", "source": "urn:shop", "type": "order.placed", "time": "2026-11-05T10:00:00Z",
         "data": {"order_id": f"o2-{u}", "account_id": f"acct-{u}",
                  "items": [{"sku": "B", "quantity": 2, "unit_price": "25.00"}]}},
        # the login ties the cookie's customer to the account's: a merge
        {"id": f"{u}-5", "source": "urn:web", "type": "web.page_viewed", "time": "2026-11-06T09:00:00Z",
         "data": {"anonymous_id": f"ck-{u}", "user_id": f"acct-{u}", "url": "https://shop.example.com/login"}},
    ]


def settle(collector: str, api: str, u: str) -> dict:
    """Post the journey so that two customers exist (cookie, account) before the login links them."""
    def count(kind: str, value: str) -> int:
        found = httpx.get(f"{api}/v1/customers", params={kind: value}).json()["items"]
        return found[0]["event_count"] if found else 0

    *before, login = events(u)
    httpx.post(f"{collector}/v1/events", json=before).raise_for_status()
    wait_for(lambda: count("anonymous_id", f"ck-{u}") == 1 and count("account_id", f"acct-{u}") == 3, 60,
             "two separate customers")
    httpx.post(f"{collector}/v1/events", json=login).raise_for_status()
    return wait_for(lambda: (c := httpx.get(f"{api}/v1/customers", params={"account_id": f"acct-{u}"})
                             .json()["items"]) and c[0]["event_count"] == 5 and c[0], 60, "all five applied")


def test_merges_are_explained_and_aggregates_add_up(running, unique):
    collector, api = running
    customer = settle(collector, api, unique)
    cid = customer["customer_id"]
    merges = httpx.get(f"{api}/v1/customers/{cid}/merges").json()
    assert merges["customer_id"] == cid
    assert [(m["event_id"], m["identifier"], m["rule"], m["current"]) for m in merges["items"]] == [
        (f"{unique}-5", f"account_id:acct-{unique}", "identifiers shared on one event", True)]
    alias = merges["items"][0]["alias"]
    assert customer["aliases"] == [alias]
    assert httpx.get(f"{api}/v1/customers/{alias}/merges").json()["customer_id"] == cid
    assert customer["orders"]["count"] == 2
    assert customer["orders"]["average_order_value"] == {"CNY": "75.00"}
    assert customer["traits"]["name"]["source"] == "profile"


def test_as_of_answers_the_view_as_it_stood_then(running, unique):
    collector, api = running
    cid = settle(collector, api, unique)["customer_id"]
    then = httpx.get(f"{api}/v1/customers/{cid}", params={"as_of": "2026-11-03T00:00:00Z"}).json()
    assert then["event_count"] == 3 and then["orders"]["count"] == 1
    assert then["as_of"].startswith("2026-11-03T00:00:00")
    assert httpx.get(f"{api}/v1/customers/{cid}", params={"as_of": "2026-10-01T00:00:00Z"}).status_code == 404
    assert httpx.get(f"{api}/v1/customers/{cid}", params={"as_of": "2026-11-03T00:00:00"}).status_code == 400
    assert httpx.get(f"{api}/v1/customers/{cid}", params={"as_of": "yesterday"}).status_code == 422


@pytest.mark.parametrize("q", ["张伟", "张", "zhang", "ZHANG{u}", "海尔", "haier"])
def test_search_by_name_or_company_prefix_in_any_script(running, unique, q):
    collector, api = running
    cid = settle(collector, api, unique)["customer_id"]
    found = httpx.get(f"{api}/v1/customers", params={"q": q.format(u=unique), "limit": 100}).json()
    assert cid in [c["customer_id"] for c in found["items"]]


def test_search_pages_and_refuses_mixed_queries(running, unique):
    collector, api = running
    settle(collector, api, unique)
    settle(collector, api, unique + "b")
    first = httpx.get(f"{api}/v1/customers", params={"q": "海尔", "limit": 1}).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = httpx.get(f"{api}/v1/customers", params={"q": "海尔", "limit": 1, "cursor": first["next_cursor"]}).json()
    assert second["items"][0]["customer_id"] > first["items"][0]["customer_id"]
    assert httpx.get(f"{api}/v1/customers", params={"q": "%"}).json()["items"] == []
    assert httpx.get(f"{api}/v1/customers", params={"q": "x", "email": "a@b.cn"}).status_code == 400
