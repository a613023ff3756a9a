"""The query API's explain, time-travel and search features, end to end through the collector."""
from __future__ import annotations

import pytest

from tests import http
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
        found = http.get(f"{api}/v1/customers", params={kind: value}).json()["items"]
        return found[0]["event_count"] if found else 0

    *before, login = events(u)
    http.post(f"{collector}/v1/events", json=before).raise_for_status()
    wait_for(lambda: count("anonymous_id", f"ck-{u}") == 1 and count("account_id", f"acct-{u}") == 3, 60,
             "two separate customers")
    http.post(f"{collector}/v1/events", json=login).raise_for_status()
    return wait_for(lambda: (c := http.get(f"{api}/v1/customers", params={"account_id": f"acct-{u}"})
                             .json()["items"]) and c[0]["event_count"] == 5 and c[0], 60, "all five applied")


def test_merges_are_explained_and_aggregates_add_up(running, unique):
    collector, api = running
    customer = settle(collector, api, unique)
    cid = customer["customer_id"]
    merges = http.get(f"{api}/v1/customers/{cid}/merges").json()
    assert merges["customer_id"] == cid
    assert [(m["event_id"], m["identifier"], m["rule"], m["current"]) for m in merges["items"]] == [
        (f"{unique}-5", f"account_id:acct-{unique}", "identifiers shared on one event", True)]
    alias = merges["items"][0]["alias"]
    assert customer["aliases"] == [alias]
    assert http.get(f"{api}/v1/customers/{alias}/merges").json()["customer_id"] == cid
    assert customer["orders"]["count"] == 2
    assert customer["orders"]["average_order_value"] == {"CNY": "75.00"}
    assert customer["traits"]["name"]["source"] == "profile"


def test_as_of_answers_the_view_as_it_stood_then_identity_included(running, unique):
    collector, api = running
    customer = settle(collector, api, unique)
    cid, (alias,) = customer["customer_id"], customer["aliases"]
    # on 3 November the login had not happened: the cookie and the account were two customers
    then = http.get(f"{api}/v1/customers/{cid}", params={"as_of": "2026-11-03T00:00:00Z"}).json()
    assert then["event_count"] == 1 and then["orders"]["count"] == 0
    assert then["identities"] == {"anonymous_id": [f"ck-{unique}"]}
    assert then["as_of"].startswith("2026-11-03T00:00:00")
    account = http.get(f"{api}/v1/customers/{alias}", params={"as_of": "2026-11-03T00:00:00Z"}).json()
    assert (account["customer_id"], account["event_count"], account["orders"]["count"]) == (alias, 2, 1)
    later = http.get(f"{api}/v1/customers/{alias}", params={"as_of": "2026-11-07T00:00:00Z"}).json()
    assert (later["customer_id"], later["requested_id"], later["event_count"]) == (cid, alias, 5)
    assert http.get(f"{api}/v1/customers/{cid}", params={"as_of": "2026-10-01T00:00:00Z"}).status_code == 404
    assert http.get(f"{api}/v1/customers/{cid}", params={"as_of": "2026-11-03T00:00:00"}).status_code == 400
    assert http.get(f"{api}/v1/customers/{cid}", params={"as_of": "yesterday"}).status_code == 422


def test_the_timeline_filters_by_channel_and_type_and_refuses_unknown_ones(running, unique):
    collector, api = running
    cid = settle(collector, api, unique)["customer_id"]
    url = f"{api}/v1/customers/{cid}/timeline"

    def ids(**params) -> list[str]:
        r = http.get(url, params=params)
        assert r.status_code == 200, r.text
        return [i["event_id"] for i in r.json()["items"]]

    assert ids() == [f"{unique}-{n}" for n in range(1, 6)]
    assert ids(channel="web") == [f"{unique}-1", f"{unique}-5"]
    assert ids(type="order.placed") == [f"{unique}-3", f"{unique}-4"]
    assert ids(channel="shop,profile", order="desc") == [f"{unique}-4", f"{unique}-3", f"{unique}-2"]
    assert ids(type=["profile.updated", "web.page_viewed"], channel="web") == [f"{unique}-1", f"{unique}-5"]
    page = http.get(url, params={"channel": "shop", "limit": 1}).json()  # the cursor keeps the filter
    assert ids(channel="shop", cursor=page["next_cursor"]) == [f"{unique}-4"]
    for params, named in (({"channel": "pigeon"}, "unknown channel 'pigeon'"), ({"type": "order.teleported"},
                                                                        "unknown type 'order.teleported'")):
        r = http.get(url, params=params)
        assert r.status_code == 400 and named in r.json()["error"], r.text


@pytest.mark.parametrize("q", ["张伟", "张", "zhang", "ZHANG{u}", "海尔", "haier"])
def test_search_by_name_or_company_prefix_in_any_script(running, unique, q):
    collector, api = running
    cid = settle(collector, api, unique)["customer_id"]
    found = http.get(f"{api}/v1/customers", params={"q": q.format(u=unique), "limit": 100}).json()
    assert cid in [c["customer_id"] for c in found["items"]]


def test_search_pages_and_refuses_mixed_queries(running, unique):
    collector, api = running
    settle(collector, api, unique)
    settle(collector, api, unique + "b")
    first = http.get(f"{api}/v1/customers", params={"q": "海尔", "limit": 1}).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = http.get(f"{api}/v1/customers", params={"q": "海尔", "limit": 1, "cursor": first["next_cursor"]}).json()
    assert second["items"][0]["customer_id"] > first["items"][0]["customer_id"]
    assert http.get(f"{api}/v1/customers", params={"q": "%"}).json()["items"] == []
    assert http.get(f"{api}/v1/customers", params={"q": "x", "email": "a@b.cn"}).status_code == 400


def test_an_operator_unmerges_a_wrong_merge_and_each_side_gets_its_own_events_back(running, unique):
    collector, api = running
    merged = settle(collector, api, unique)
    cid, (alias,) = merged["customer_id"], merged["aliases"]
    answer = http.post(f"{api}/v1/customers/{cid}/unmerge",
                        json={"alias": alias, "reason": "a shared kiosk", "operator": "ops@example.com"})
    assert answer.status_code == 202, answer.text
    unmerge = answer.json()
    assert unmerge["customer_id"] == cid and unmerge["unlinked"] == [f"anonymous_id:ck-{unique}",
                                                                     f"account_id:acct-{unique}"]

    def lookup(kind: str, value: str) -> dict | None:
        items = http.get(f"{api}/v1/customers", params={kind: value}).json()["items"]
        return items[0] if items else None

    wait_for(lambda: (lookup("account_id", f"acct-{unique}") or {}).get("customer_id") == alias, 60, "the split")
    cookie_side, account_side = lookup("anonymous_id", f"ck-{unique}"), lookup("account_id", f"acct-{unique}")
    assert cookie_side["customer_id"] == cid and cookie_side["aliases"] == []
    # the cookie's page view and the unlink itself; the account's profile, orders and login
    assert (cookie_side["event_count"], account_side["event_count"]) == (2, 4)
    assert account_side["orders"]["count"] == 2 and cookie_side["orders"]["count"] == 0
    assert account_side["identities"] == {"account_id": [f"acct-{unique}"]}
    assert http.get(f"{api}/v1/customers/{alias}").json()["customer_id"] == alias  # an id of its own again
    history = http.get(f"{api}/v1/customers/{cid}/merges").json()["items"]
    assert [(m["kind"], m["survivor"], m["alias"], m["current"]) for m in history] == [
        ("merged", cid, alias, False), ("unmerged", alias, cid, True)]
    assert history[1]["event_id"] == unmerge["event_id"] and history[1]["rule"] == "explicit identity.unlinked"
    timeline = http.get(f"{api}/v1/customers/{cid}/timeline").json()["items"]
    assert [i["type"] for i in timeline] == ["web.page_viewed", "identity.unlinked"]
    assert timeline[1]["data"]["operator"] == "ops@example.com"

    again = http.post(f"{api}/v1/customers/{cid}/unmerge", json={"alias": alias, "reason": "twice"})
    assert again.status_code == 409 and "not merged into" in again.json()["error"]
    both = http.post(f"{api}/v1/customers/{cid}/unmerge",
                      json={"alias": alias, "identifier": {"kind": "email", "value": "a@x.com"}, "reason": "x"})
    assert both.status_code == 422
    stranger = http.post(f"{api}/v1/customers/{cid}/unmerge",
                          json={"identifier": {"kind": "email", "value": f"nobody.{unique}@x.com"}, "reason": "x"})
    assert stranger.status_code == 409
    assert http.post(f"{api}/v1/customers/c_nobody{unique}/unmerge",
                      json={"alias": alias, "reason": "x"}).status_code == 404
