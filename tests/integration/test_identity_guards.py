"""Guards against over-merging and unlinking, through the real broker, processors and database."""
from __future__ import annotations

from tests.integration.test_exactly_once import assert_equals_reference
from tests.integration.test_processors import customer_of, publish, query
from tests.processes import wait_for


def order(u: str, n: int, minute: int, **ids) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:shop", "type": "order.placed",
            "time": f"2026-11-01T10:{minute:02d}:00Z",
            "data": {"order_id": f"o{n}-{u}", "items": [{"sku": "A", "quantity": 1, "unit_price": "10"}], **ids}}


def call(u: str, n: int, minute: int, phone: str) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:pbx", "type": "call.ended",
            "time": f"2026-11-01T10:{minute:02d}:00Z",
            "data": {"call_id": f"call{n}-{u}", "phone_number": phone, "talk_seconds": 60}}


def page(u: str, n: int, minute: int, cookie: str, user: str | None = None) -> dict:
    data = {"anonymous_id": cookie, "url": "https://shop.example.com/"}
    if user:
        data["user_id"] = user
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:web", "type": "web.page_viewed",
            "time": f"2026-11-01T10:{minute:02d}:00Z", "data": data}


def unlink(u: str, n: int, minute: int, *refs: tuple[str, str]) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:ops", "type": "identity.unlinked",
            "time": f"2026-11-01T10:{minute:02d}:00Z",
            "data": {"identifiers": [{"kind": k, "value": v} for k, v in refs], "reason": "test"}}


def phone_of(u: str) -> str:
    return f"+86139{int(u, 16) % 10**8:08d}"


def test_a_family_phone_does_not_fuse_the_family(platform, unique):
    platform.processor()
    phone = phone_of(unique)
    events = [order(unique, 1, 10, account_id=f"li-{unique}", phone=phone),
              order(unique, 2, 20, account_id=f"wang-{unique}", phone=phone),
              call(unique, 3, 30, phone)]
    publish(platform, events)
    assert_equals_reference(platform.dsn, events)
    li, wang = customer_of(platform.dsn, f"account_id:li-{unique}"), customer_of(platform.dsn, f"account_id:wang-{unique}")
    assert li != wang
    assert customer_of(platform.dsn, f"phone:{phone}") == li  # the phone stays with who used it first
    owners = dict(query(platform.dsn, "SELECT event_id, customer_id FROM customer_timeline WHERE event_id LIKE %s",
                        f"{unique}-%"))
    assert owners == {f"{unique}-1": li, f"{unique}-2": wang, f"{unique}-3": li}
    items = query(platform.dsn, "SELECT key FROM customer_view_identifier WHERE customer_id = %s", wang)
    assert items == [(f"account_id:wang-{unique}",)]


def test_a_shared_computer_does_not_fuse_two_account_holders_in_any_arrival_order(platform, unique):
    """Mum's login arrives first but happened later: the cookie ends with dad, who used it first."""
    platform.processor()
    cookie = f"pc-{unique}"
    mum_login, dad_login = page(unique, 2, 30, cookie, f"mum-{unique}"), page(unique, 1, 10, cookie, f"dad-{unique}")
    browse = page(unique, 3, 40, cookie)
    for event in (mum_login, browse, dad_login):  # one batch each, so the late one must undo a link
        publish(platform, [event])
        wait_for(lambda: query(platform.dsn, "SELECT count(*) FROM customer_timeline WHERE event_id = %s",
                               event["id"]) == [(1,)], 60, f"{event['id']} applied")
    assert_equals_reference(platform.dsn, [mum_login, browse, dad_login])
    dad, mum = customer_of(platform.dsn, f"account_id:dad-{unique}"), customer_of(platform.dsn, f"account_id:mum-{unique}")
    assert dad != mum and customer_of(platform.dsn, f"anonymous_id:{cookie}") == dad
    (kind, rule), = query(platform.dsn, "SELECT kind, rule FROM customer_view_change WHERE source = %s "
                                        "AND kind = 'unmerged'", mum)
    assert rule == "refused: at most 1 account_id per customer"


def test_an_unlink_splits_a_merged_customer_and_each_side_is_folded_again(platform, unique):
    platform.processor()
    email, phone = f"split.{unique}@example.com", phone_of(unique)
    events = [order(unique, 1, 1, email=email),
              call(unique, 2, 2, phone),
              order(unique, 3, 3, email=email, phone=phone)]  # the link that turns out to be wrong
    publish(platform, events[:2])
    wait_for(lambda: customer_of(platform.dsn, f"email:{email}") and customer_of(platform.dsn, f"phone:{phone}"),
             60, "two customers")
    publish(platform, events[2:])
    wait_for(lambda: customer_of(platform.dsn, f"email:{email}") == customer_of(platform.dsn, f"phone:{phone}")
             and query(platform.dsn, "SELECT count(*) FROM customer_timeline WHERE event_id LIKE %s",
                       f"{unique}-%") == [(3,)], 60, "the merge")
    merged = customer_of(platform.dsn, f"email:{email}")
    assert query(platform.dsn, "SELECT event_count FROM customer_view WHERE customer_id = %s", merged) == [(3,)]
    split = unlink(unique, 4, 50, ("email", email), ("phone", phone))
    publish(platform, [split])
    wait_for(lambda: customer_of(platform.dsn, f"phone:{phone}") != merged, 60, "the split")
    assert_equals_reference(platform.dsn, events + [split])
    other = customer_of(platform.dsn, f"phone:{phone}")
    assert customer_of(platform.dsn, f"email:{email}") == merged
    counts = dict(query(platform.dsn, "SELECT customer_id, event_count FROM customer_view WHERE customer_id IN (%s, %s)",
                        merged, other))
    assert counts == {merged: 3, other: 1}  # the email side keeps the link event (its home) and the unlink
    assert [r[0] for r in query(platform.dsn, "SELECT kind FROM customer_view_change WHERE %s IN (source, target) "
                                              "ORDER BY seq", other)] == ["merged", "unmerged"]
