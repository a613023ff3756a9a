"""The unified customer view fold: given these events -> this view; order, chunking and merges don't matter."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from events.customer_events import CustomerEvent
from projections import customer_view as cv
from projections.timeline import summarize

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def ce(n: int, minutes: int, type: str, data: dict | None = None, ids: tuple[str, ...] = ("email:a@x.com",),
       channel: str | None = None, customer: str = "c_1") -> CustomerEvent:
    channel = channel or {"email": "email", "call": "phone", "web": "web", "order": "shop", "survey": "survey",
                          "ticket": "ticket", "profile": "profile", "consent": "consent"}[type.split(".")[0]]
    return CustomerEvent(f"key{n:04d}", f"e{n}", "test", type, T0 + timedelta(minutes=minutes), channel, customer,
                         ids, data or {})


JOURNEY = [
    ce(1, 0, "web.page_viewed", {"url": "https://shop/p/1"}, ("anonymous_id:ck1",)),
    ce(2, 5, "web.page_viewed", {"url": "https://shop/login", "user_id": "u1"}, ("account_id:u1", "anonymous_id:ck1")),
    ce(3, 6, "profile.updated", {"name": "王芳", "company": "海尔", "preferred_channel": "wechat",
                                 "preferred_time": "evening"}, ("account_id:u1", "email:wf@qq.com")),
    ce(4, 10, "order.placed", {"order_id": "o1", "total": "199.5", "currency": "CNY"}, ("account_id:u1", "email:wf@qq.com")),
    ce(5, 11, "order.placed", {"order_id": "o2", "total": "20", "currency": "CNY"}, ("account_id:u1",)),
    ce(6, 30, "order.refunded", {"order_id": "o2", "amount": "20", "currency": "CNY"}, ("account_id:u1",)),
    ce(7, 60, "call.ended", {"call_id": "c1", "talk_seconds": 125}, ("phone:+8613800138000",)),
    ce(8, 90, "ticket.opened", {"ticket_id": "t1", "kind": "complaint"}, ("email:wf@qq.com",)),
    ce(9, 95, "ticket.resolved", {"ticket_id": "t1"}, ("email:wf@qq.com",)),
    ce(10, 96, "ticket.opened", {"ticket_id": "t2", "kind": "service_request"}, ("email:wf@qq.com",)),
    ce(11, 100, "survey.answered", {"survey_id": "s1", "csat": 2, "nps": 3}, ("email:wf@qq.com",)),
    ce(12, 120, "survey.answered", {"survey_id": "s2", "csat": 5}, ("email:wf@qq.com",)),
    ce(13, 130, "profile.updated", {"name": "Wang Fang"}, ("account_id:u1",)),
    ce(14, 140, "consent.changed", {"purpose": "marketing", "channel": "email", "granted": False}, ("account_id:u1",)),
]


def test_a_journey_folds_into_the_expected_view():
    view = cv.apply_all(cv.empty("c_1"), JOURNEY)
    assert view["traits"]["email"]["value"] == "wf@qq.com" and view["traits"]["phone"]["value"] == "+8613800138000"
    assert view["traits"]["name"]["value"] == "Wang Fang"
    assert view["traits"]["company"]["value"] == "海尔"
    assert (view["traits"]["preferred_channel"]["value"], view["traits"]["preferred_time"]["value"]) == \
        ("wechat", "evening")
    assert view["traits"]["preferred_channel"]["source"] == "profile"
    assert view["orders"]["count"] == 2
    assert view["orders"]["revenue"] == {"CNY": "219.5"}
    assert view["orders"]["refunded"] == {"CNY": "20"} and view["orders"]["refunds"] == 1
    assert view["orders"]["counts"] == {"CNY": 2}
    assert view["contacts"] == {"web": 2, "shop": 3, "phone": 1, "ticket": 3, "survey": 2}
    assert view["first_contact"]["type"] == "web.page_viewed"
    assert view["last_contact"]["type"] == "survey.answered"
    assert view["satisfaction"]["answers"] == 2
    assert view["satisfaction"]["csat"]["value"] == 5 and view["satisfaction"]["nps"]["value"] == 3
    assert view["consent"]["marketing:email"]["value"] is False
    assert view["event_count"] == len(JOURNEY)
    derived = cv.summary(view)
    assert derived["display_name"] == "Wang Fang"
    assert derived["open_tickets"] == ["t2"] and derived["open_complaints"] == []
    assert derived["net_revenue"] == {"CNY": "199.5"}
    assert derived["average_order_value"] == {"CNY": "109.75"}
    assert cv.search_terms(view) == {"wang fang", "wang", "fang", "海尔"}


def test_a_late_older_update_never_overwrites_a_newer_trait():
    newer = ce(1, 100, "profile.updated", {"name": "New Name"})
    older = ce(2, 10, "profile.updated", {"name": "Old Name"})
    assert cv.apply_all(cv.empty("c"), [newer, older])["traits"]["name"]["value"] == "New Name"


def test_a_complaint_stays_a_complaint_when_resolved_first():
    resolved = ce(1, 50, "ticket.resolved", {"ticket_id": "t"})
    opened = ce(2, 10, "ticket.opened", {"ticket_id": "t", "kind": "complaint"})
    view = cv.apply_all(cv.empty("c"), [resolved, opened])
    assert view["tickets"]["t"]["status"] == "resolved" and view["tickets"]["t"]["kind"] == "complaint"


@settings(max_examples=200, deadline=None)
@given(st.permutations(JOURNEY), st.integers(1, len(JOURNEY)))
def test_any_order_and_any_chunking_give_the_same_view(events, chunk):
    whole = cv.apply_all(cv.empty("c_1"), JOURNEY)
    view = cv.empty("c_1")
    for i in range(0, len(events), chunk):
        view = cv.apply_all(view, events[i:i + chunk])
    assert view == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=len(JOURNEY), max_size=len(JOURNEY)))
def test_merging_two_customers_equals_one_customer_who_did_both(sides):
    a = [e for e, s in zip(JOURNEY, sides) if s]
    b = [e for e, s in zip(JOURNEY, sides) if not s]
    merged = cv.merge(cv.apply_all(cv.empty("c_1"), a), cv.apply_all(cv.empty("c_2"), b))
    assert merged == cv.apply_all(cv.empty("c_1"), JOURNEY)


def test_apply_does_not_mutate_its_input():
    start = cv.empty("c")
    cv.apply(start, JOURNEY[0])
    assert start == cv.empty("c")


def test_timeline_summaries_are_readable():
    assert summarize(JOURNEY[3]) == "Order o1 placed: 199.5 CNY"
    assert summarize(JOURNEY[6]) == "Call ended, talked 2m05s"
    assert summarize(JOURNEY[10]) == "Survey answered: CSAT 2, NPS 3"
