"""Refused links explained, blocked values from configuration and an operator's manual merge, end
to end: the collector (sealed) or a producer writing straight to Kafka, two processor workers on
four partitions, the query API; events arriving in either order."""
from __future__ import annotations

import json

import pytest

from services.common.topics import CUSTOMER_CHANGES
from tests import http
from tests.feed import read_topic
from tests.integration.test_processors import publish
from tests.processes import wait_for

LIMIT_RULE = "refused: at most 1 account_id per customer"
BLOCKED_RULE = "refused: blocked placeholder value"
PATHS = ["collector", "kafka"]
ORDERS = ["in_order", "reversed"]


def start(platform, **env: str) -> tuple[str, str]:
    """(collector, query API) with two processor workers sharing the four partitions."""
    _, collector = platform.collector(**env)
    platform.processor(**env)
    platform.processor(**env)
    _, api = platform.api(**env)
    return collector, api


def send(platform, collector: str, path: str, *events: dict) -> None:
    if path == "collector":
        http.post(f"{collector}/v1/events", json=list(events)).raise_for_status()
    else:
        publish(platform, list(events))


def event(u: str, n: int, minute: int, type: str, source: str, **data) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": source, "type": type,
            "time": f"2026-11-01T10:{minute:02d}:00Z", "data": data}


def order(u: str, n: int, minute: int, **ids) -> dict:
    return event(u, n, minute, "order.placed", "urn:test:shop", order_id=f"o{n}-{u}",
                 items=[{"sku": "A", "quantity": 1, "unit_price": "10"}], **ids)


def page(u: str, n: int, minute: int, **ids) -> dict:
    return event(u, n, minute, "web.page_viewed", "urn:test:web", url="https://shop.example.com/", **ids)


def phone_of(u: str) -> str:
    return f"+86139{int(u, 16) % 10**8:08d}"


def customer(api: str, **by: str) -> dict | None:
    items = http.get(f"{api}/v1/customers", params=by).json()["items"]
    return items[0] if items else None


def cid_of(api: str, **by: str) -> str | None:
    return (customer(api, **by) or {}).get("customer_id")


def merges(api: str, cid: str) -> dict:
    r = http.get(f"{api}/v1/customers/{cid}/merges")
    assert r.status_code == 200, r.text
    return r.json()


def in_arrival_order(platform, collector: str, path: str, order_: str, first: dict, second: dict,
                     seen) -> None:
    """Send ``first`` and, once ``seen()`` says it was applied, ``second`` (swapped when reversed)."""
    a, b = (first, second) if order_ == "in_order" else (second, first)
    send(platform, collector, path, a)
    wait_for(lambda: seen(a), 60, "the first event applied")
    send(platform, collector, path, b)


@pytest.mark.parametrize("order_", ORDERS)
@pytest.mark.parametrize("path", PATHS)
def test_a_link_refused_by_a_limit_is_explained_on_both_sides(platform, unique, path, order_):
    collector, api = start(platform)
    phone = phone_of(unique)
    li, wang = f"li-{unique}", f"wang-{unique}"
    first = order(unique, 1, 10, account_id=li, phone=phone)     # the phone is Li's first
    second = order(unique, 2, 20, account_id=wang, phone=phone)  # Wang's order names it too: refused
    in_arrival_order(platform, collector, path, order_, first, second,
                     lambda e: cid_of(api, account_id=e["data"]["account_id"]))

    def settled():
        a, b = cid_of(api, account_id=li), cid_of(api, account_id=wang)
        if not (a and b and a != b and cid_of(api, phone=phone) == a):
            return None
        found = merges(api, a)["refusals"]
        return len(found) == 1 and merges(api, b)["refusals"] == found and (a, b, found[0])

    li_cid, wang_cid, refusal = wait_for(settled, 90, "the refusal explained on both sides")
    assert (refusal["event_id"], refusal["type"], refusal["rule"]) == (f"{unique}-2", "order.placed", LIMIT_RULE)
    assert (refusal["customer_id"], refusal["other_customer_id"]) == (wang_cid, li_cid)
    assert refusal["identifier"].startswith("phone:") and refusal["stayed_with"].startswith("account_id:")
    assert refusal["event_time"].startswith("2026-11-01T10:20:00")
    if path == "kafka":  # unsealed: the identifiers as given
        assert (refusal["identifier"], refusal["stayed_with"]) == (f"phone:{phone}", f"account_id:{wang}")
    history = merges(api, wang_cid)["items"]
    if order_ == "in_order":
        assert history == [] and merges(api, li_cid)["items"] == []
    else:  # Wang's order came first and took the phone; Li's earlier order took it back: a split, explained
        assert [(h["kind"], h["survivor"], h["alias"], h["rule"]) for h in history] == [
            ("unmerged", li_cid, wang_cid, LIMIT_RULE)]


@pytest.mark.parametrize("order_", ORDERS)
@pytest.mark.parametrize("path", PATHS)
def test_blocked_placeholder_values_are_explained(platform, unique, path, order_):
    collector, api = start(platform)
    acct = f"acct-{unique}"
    first = order(unique, 1, 10, account_id=acct, email="Test@Test.com ")
    second = page(unique, 2, 20, anonymous_id="anonymous", user_id=acct)
    in_arrival_order(platform, collector, path, order_, first, second,
                     lambda e: (c := customer(api, account_id=acct)) and c["event_count"] >= 1)
    cid = wait_for(lambda: (c := customer(api, account_id=acct)) and c["event_count"] == 2
                   and len(merges(api, c["customer_id"])["refusals"]) == 2 and c["customer_id"], 90,
                   "both refusals explained")
    found = merges(api, cid)["refusals"]
    assert [(r["event_id"], r["identifier"], r["rule"], r["customer_id"], r["other_customer_id"]) for r in found] == [
        (f"{unique}-1", "email:Test@Test.com", BLOCKED_RULE, cid, None),
        (f"{unique}-2", "anonymous_id:anonymous", BLOCKED_RULE, cid, None)]
    assert found[0]["stayed_with"].startswith("account_id:")
    assert customer(api, account_id=acct)["identities"].keys() == {"account_id"}


@pytest.mark.parametrize("path", PATHS)
def test_blocked_values_come_from_configuration(platform, unique, path):
    collector, api = start(platform, CRM_IDENTITY_BLOCKED=json.dumps(["nobody@shop.example", "null"]))
    refused, kept = f"refused-{unique}", f"kept-{unique}"
    send(platform, collector, path, order(unique, 1, 10, account_id=refused, email="nobody@shop.example"),
         order(unique, 2, 20, account_id=kept, email="test@test.com"))  # blocked by default, not here
    cid = wait_for(lambda: (c := customer(api, account_id=refused)) and merges(api, c["customer_id"])["refusals"]
                   and c["customer_id"], 90, "the configured value refused")
    (r,) = merges(api, cid)["refusals"]
    assert (r["event_id"], r["identifier"], r["rule"]) == (f"{unique}-1", "email:nobody@shop.example", BLOCKED_RULE)
    kept_cid = wait_for(lambda: cid_of(api, account_id=kept), 60, "the other order")
    assert cid_of(api, email="test@test.com") == kept_cid
    assert merges(api, kept_cid)["refusals"] == []
    answer = http.get(f"{api}/v1/customers", params={"email": "nobody@shop.example"})
    assert answer.status_code == 400 and "blocked placeholder value" in answer.text


@pytest.mark.parametrize("order_", ORDERS)
@pytest.mark.parametrize("path", PATHS)
def test_an_admin_merges_two_customers_audited_on_the_feed_explained_and_undone(platform, unique, path, order_):
    collector, api = start(platform)
    acct, mail = f"acct-{unique}", f"mail-{unique}@163.com"
    first = page(unique, 1, 10, anonymous_id=f"ck-{unique}", user_id=acct)
    second = event(unique, 2, 20, "profile.updated", "urn:test:crm", email=mail, name="王芳")
    in_arrival_order(platform, collector, path, order_, first, second,
                     lambda e: cid_of(api, **({"account_id": acct} if e is first else {"email": mail})))
    a = wait_for(lambda: cid_of(api, account_id=acct), 60, "the account's customer")
    b = wait_for(lambda: cid_of(api, email=mail), 60, "the email's customer")
    assert a != b

    reason = "same person, confirmed on the phone"
    answer = http.post(f"{api}/v1/customers/{b}/merge", json={"with": a, "reason": reason,
                                                              "operator": "ops@example.com"})
    assert answer.status_code == 202, answer.text
    merge = answer.json()
    assert (merge["customer_id"], merge["merged_with"], merge["source"]) == (b, a, "urn:crm:api:merge")
    assert [k.partition(":")[0] for k in merge["linked"]] == ["email", "account_id"]

    # the account's customer is older (10:00): it survives, the email's id becomes its alias
    merged = wait_for(lambda: (c := customer(api, email=mail)) and c["customer_id"] == a and c["event_count"] == 3
                      and c, 90, "the manual merge applied")
    assert merged["aliases"] == [b] and merged["identities"].keys() == {"account_id", "anonymous_id", "email"}
    (m,) = merges(api, a)["items"]
    assert (m["kind"], m["survivor"], m["alias"], m["event_id"], m["current"]) == ("merged", a, b, merge["event_id"],
                                                                                  True)
    assert m["rule"] == f"manual merge by ops@example.com: {reason}"
    assert merges(api, b)["customer_id"] == a
    timeline = http.get(f"{api}/v1/customers/{a}/timeline").json()["items"]
    assert timeline[-1]["type"] == "identity.linked" and timeline[-1]["source"] == "urn:crm:api:merge"

    feed = wait_for(lambda: [c for c in (json.loads(r.value) for r in read_topic(
        platform.stack.kafka_bootstrap, platform.topic(CUSTOMER_CHANGES), {b})) if c["type"] == "customer.merged"],
        60, "customer.merged on the feed")
    assert feed[-1]["subject"] == b and feed[-1]["data"]["into"] == a
    (audited,) = http.get(f"{api}/v1/audit", params={"action": "customer.merge"}).json()["items"]
    assert (audited["target"], audited["details"]["with"], audited["details"]["event_id"]) == (b, a, merge["event_id"])

    # guards: one customer already; unknown; reversible by the unmerge, after which they stay apart
    again = http.post(f"{api}/v1/customers/{a}/merge", json={"with": b, "reason": "twice"})
    assert again.status_code == 409 and "one customer already" in again.json()["error"]
    assert http.post(f"{api}/v1/customers/{a}/merge", json={"with": "c_nobody", "reason": "x"}).status_code == 404
    undone = http.post(f"{api}/v1/customers/{a}/unmerge", json={"alias": b, "reason": "not the same after all"})
    assert undone.status_code == 202, undone.text
    wait_for(lambda: cid_of(api, email=mail) == b, 90, "the unmerge")
    history = merges(api, a)["items"]
    assert [(h["kind"], h["survivor"], h["alias"], h["current"]) for h in history] == [
        ("merged", a, b, False), ("unmerged", b, a, True)]
    refused = http.post(f"{api}/v1/customers/{a}/merge", json={"with": b, "reason": "changed my mind"})
    assert refused.status_code == 409 and "refused: explicitly unlinked" in refused.json()["error"]


@pytest.mark.parametrize("path", PATHS)
def test_a_manual_merge_the_account_limit_refuses_is_a_409_naming_the_limit(platform, unique, path):
    collector, api = start(platform)
    send(platform, collector, path, order(unique, 1, 10, account_id=f"a-{unique}"),
         order(unique, 2, 20, account_id=f"b-{unique}"))
    a = wait_for(lambda: cid_of(api, account_id=f"a-{unique}"), 60, "customer a")
    b = wait_for(lambda: cid_of(api, account_id=f"b-{unique}"), 60, "customer b")
    answer = http.post(f"{api}/v1/customers/{a}/merge", json={"with": b, "reason": "one person, two accounts"})
    assert answer.status_code == 409 and LIMIT_RULE in answer.json()["error"]
    assert http.get(f"{api}/v1/audit", params={"action": "customer.merge"}).json()["items"] == []
    assert cid_of(api, account_id=f"b-{unique}") == b
