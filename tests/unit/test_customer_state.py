"""Customer state as pure functions: lifecycle, value, segments, time, changes, rules errors."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from events import feed
from events.customer_events import CustomerEvent
from projections import customer_state as cs
from projections import customer_view as cv

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
RULES = cs.load_rules()
DAY = timedelta(days=1)


def ev(n: int, at: timedelta, type: str, data: dict | None = None, channel: str | None = None) -> CustomerEvent:
    channel = channel or {"email": "email", "call": "phone", "web": "web", "order": "shop", "survey": "survey",
                          "ticket": "ticket", "profile": "profile", "consent": "consent"}[type.split(".")[0]]
    return CustomerEvent(f"k{n:04d}", f"e{n}", "test", type, T0 + at, channel, "c_1", ("email:a@x.com",), data or {})


def view_of(*events: CustomerEvent) -> dict:
    return cv.apply_all(cv.empty("c_1"), events)


def order(n: int, at: timedelta, total: str = "100", currency: str = "CNY") -> CustomerEvent:
    return ev(n, at, "order.placed", {"order_id": f"o{n}", "total": total, "currency": currency,
                                      "items": [{"sku": "s", "quantity": 1, "unit_price": total}]})


def page(n: int, at: timedelta, path: str) -> CustomerEvent:
    return ev(n, at, "web.page_viewed", {"url": f"https://shop.example{path}?utm=x", "anonymous_id": "ck"})


def state(view: dict, at: timedelta, previous: dict | None = None) -> dict:
    return cs.derive(view, T0 + at, RULES, previous)


def consent_ev(n: int, at: timedelta, granted: bool, channel: str = "email",
               purpose: str = "marketing") -> CustomerEvent:
    return ev(n, at, "consent.changed", {"purpose": purpose, "channel": channel, "granted": granted})


# -- lifecycle ------------------------------------------------------------------------------------

def test_a_visitor_is_a_prospect_until_repeated_product_views_show_intent():
    one = view_of(page(1, timedelta(0), "/zh/products/sku-1"))
    assert state(one, timedelta(minutes=1))["lifecycle"]["stage"] == "prospect"
    three = view_of(page(1, timedelta(0), "/zh/products/sku-1"), page(2, DAY, "/zh/pricing"),
                    page(3, 2 * DAY, "/zh/products/sku-2"))
    s = state(three, 2 * DAY)
    assert s["lifecycle"]["stage"] == "intent"
    assert "3 times" in s["lifecycle"]["rule"]
    # the window is 30 days from the evaluation time: the first view leaves it after 30 days
    assert state(three, 30 * DAY + timedelta(hours=1))["lifecycle"]["stage"] == "prospect"


def test_a_cart_or_an_enquiry_is_intent_on_its_own():
    assert state(view_of(page(1, timedelta(0), "/en/cart")), DAY)["lifecycle"]["stage"] == "intent"
    assert state(view_of(ev(1, timedelta(0), "email.received", {"from_address": "a@x.com", "subject": "price?"})),
                 DAY)["lifecycle"]["stage"] == "intent"
    outbound = ev(1, timedelta(0), "call.started", {"phone_number": "+8613800138000", "direction": "outbound"})
    assert state(view_of(outbound), DAY)["lifecycle"]["stage"] == "prospect"


def test_buying_makes_a_customer_and_buying_again_within_a_year_makes_loyal_unless_a_complaint_is_open():
    first = view_of(order(1, timedelta(0)))
    assert state(first, DAY)["lifecycle"]["stage"] == "customer"
    again = cv.apply(first, order(2, 40 * DAY))
    assert state(again, 41 * DAY)["lifecycle"]["stage"] == "loyal"
    complaint = cv.apply(again, ev(3, 42 * DAY, "ticket.opened", {"ticket_id": "t1", "kind": "complaint"}))
    s = state(complaint, 42 * DAY)
    assert s["lifecycle"]["stage"] == "at_risk"  # the open complaint makes the buyer at risk, too
    resolved = cv.apply(complaint, ev(4, 43 * DAY, "ticket.resolved", {"ticket_id": "t1"}))
    assert state(resolved, 43 * DAY)["lifecycle"]["stage"] == "loyal"


def test_a_silent_buyer_goes_at_risk_after_90_days_and_churns_after_180_without_contact():
    v = view_of(order(1, timedelta(0)))
    assert state(v, 89 * DAY)["lifecycle"]["stage"] == "customer"
    assert state(v, 91 * DAY)["lifecycle"]["stage"] == "at_risk"
    assert state(v, 181 * DAY)["lifecycle"]["stage"] == "churned"
    # a contact keeps them from churning (at risk, still: no order)
    contacted = cv.apply(v, ev(2, 150 * DAY, "email.received", {"from_address": "a@x.com"}))
    assert state(contacted, 181 * DAY)["lifecycle"]["stage"] == "at_risk"


def test_next_review_never_misses_a_change_made_by_time_alone():
    v = cv.apply_all(view_of(order(1, timedelta(0))), [page(2, DAY, "/zh/cart"), page(3, 2 * DAY, "/zh/products/a")])
    at, moments = T0 + 2 * DAY, []
    while (at := cs.next_review(v, at, RULES)) is not None:
        moments.append(at)
    assert moments == sorted(moments) and len(moments) >= 3
    # between two reviews nothing changes (a review comes 1 s after the threshold it is for)
    previous = T0 + 2 * DAY
    stages = []
    for moment in moments:
        start = cs.derive(v, previous, RULES)
        assert cs.same(start, cs.derive(v, moment - timedelta(seconds=1, microseconds=1), RULES, start))
        stages.append(cs.derive(v, moment, RULES)["lifecycle"]["stage"])
        previous = moment
    assert "at_risk" in stages and stages[-1] == "churned"


def test_since_is_kept_while_the_stage_stays():
    v = view_of(order(1, timedelta(0)))
    first = state(v, DAY)
    later = state(cv.apply(v, ev(2, 2 * DAY, "email.received", {"from_address": "a@x.com"})), 2 * DAY, first)
    assert later["lifecycle"]["since"] == first["lifecycle"]["since"] == cv.ts(T0 + DAY)


# -- value and segments ---------------------------------------------------------------------------

def test_rfm_tier_and_ltv_of_a_big_regular_buyer():
    events = [order(i, i * 20 * DAY, "3000") for i in range(1, 11)]  # 10 orders of 3000, every 20 days
    v = view_of(*events)
    s = state(v, 200 * DAY + timedelta(hours=1))
    value = s["value"]
    assert value["rfm"] == {"recency": 5, "frequency": 5, "monetary": 5, "score": "555"}
    assert value["tier"] == "high" and value["monetary"] == "30000.00"
    assert value["average_order_value"] == "3000.00"
    # 9 gaps over 180 days = 18.25 orders a year; loyal survival 0.9; 3 years
    assert value["ltv"] == "177825.00"  # 30000 + 3000 * 18.25 * 3 * 0.9
    assert {"high_value", "repeat_buyers"} <= set(s["segments"])
    assert s["lifecycle"]["stage"] == "loyal"


def test_monetary_converts_currencies_and_subtracts_refunds():
    v = view_of(order(1, timedelta(0), "100", "USD"), order(2, DAY, "500", "CNY"),
                ev(3, 2 * DAY, "order.refunded", {"order_id": "o2", "amount": "200", "currency": "CNY"}),
                order(4, 3 * DAY, "50", "XYZ"))
    value = state(v, 3 * DAY)["value"]
    assert value["monetary"] == "1010.00"  # 100 * 7.1 + 300; XYZ has no rate
    assert value["net_revenue"] == {"CNY": "300", "USD": "100", "XYZ": "50"}


def test_prospects_have_no_value_tier():
    s = state(view_of(page(1, timedelta(0), "/")), DAY)
    assert s["value"]["tier"] == "none" and s["value"]["rfm"] is None and s["value"]["ltv"] == "0.00"


def test_segments_with_event_windows_and_negative_conditions():
    cart = view_of(page(1, timedelta(0), "/zh/cart"), consent_ev(9, timedelta(0), True))
    assert "cart_abandoners" in state(cart, DAY)["segments"]
    assert "cart_abandoners" not in state(cart, 4 * DAY)["segments"]  # the window passed
    bought = cv.apply(cart, order(2, DAY))
    assert "cart_abandoners" not in state(bought, 2 * DAY)["segments"]
    consent = view_of(ev(1, timedelta(0), "consent.changed", {"purpose": "marketing", "channel": "email",
                                                               "granted": True}))
    assert "email_marketing" in state(consent, DAY)["segments"]


# -- consent --------------------------------------------------------------------------------------

MARKETING = {s.name for s in RULES.segments if s.purpose == "marketing"}


def interested(*more: CustomerEvent) -> dict:
    """A visitor matching every marketing segment's conditions: a cart and two pricing views."""
    return view_of(page(1, timedelta(0), "/zh/cart"), page(2, timedelta(hours=1), "/zh/pricing"),
                   page(3, timedelta(hours=2), "/zh/pricing"), *more)


def test_the_shipped_marketing_segments_declare_their_purpose():
    assert MARKETING == {"cart_abandoners", "pricing_interest", "email_marketing"}
    channels = {s.name: s.channel for s in RULES.segments}
    assert channels["email_marketing"] == channels["cart_abandoners"] == "email"
    assert channels["pricing_interest"] == "all"
    assert all(s.purpose == "service" for s in RULES.segments if s.name not in MARKETING)


def test_without_consent_a_customer_is_in_no_marketing_segment():
    s = state(interested(), DAY)
    assert MARKETING.isdisjoint(s["segments"]) and s["profile"]["consent"] == {}
    # consent to something else, or a withdrawal, is no marketing consent either
    for other in (consent_ev(9, timedelta(0), True, "all", "analytics"), consent_ev(9, timedelta(0), False),
                  consent_ev(9, timedelta(0), True, "all", "service")):
        assert MARKETING.isdisjoint(state(interested(other), DAY)["segments"]), other.data


def test_consent_for_a_channel_admits_to_that_channels_segments_and_all_channels_to_every_one():
    by_email = state(interested(consent_ev(9, timedelta(0), True, "email")), DAY)
    assert MARKETING & set(by_email["segments"]) == {"cart_abandoners", "email_marketing"}
    by_sms = state(interested(consent_ev(9, timedelta(0), True, "sms")), DAY)
    assert MARKETING.isdisjoint(by_sms["segments"])  # neither email nor every channel
    everywhere = state(interested(consent_ev(9, timedelta(0), True, "all")), DAY)
    assert MARKETING <= set(everywhere["segments"])
    # the purpose's own conditions still apply: the cart leaves the window after 3 days
    assert "cart_abandoners" not in state(interested(consent_ev(9, timedelta(0), True, "all")), 4 * DAY)["segments"]


def test_the_latest_consent_wins_and_a_withdrawal_makes_the_customer_leave():
    granted = interested(consent_ev(9, timedelta(hours=3), True, "email"))
    before = {**state(granted, DAY), "version": 1}
    assert {"cart_abandoners", "email_marketing"} <= set(before["segments"])
    # withdrawing every channel later overrides the earlier grant for email
    withdrawn = cv.apply(granted, consent_ev(10, timedelta(hours=4), False, "all"))
    after = {**state(withdrawn, DAY, before), "version": 2}
    assert MARKETING.isdisjoint(after["segments"])
    assert after["profile"]["consent"] == {"marketing:all": False, "marketing:email": False}
    found = {(k, d) for k, d, _ in cs.changes(before, after)}
    assert {("segment.exited", "cart_abandoners"), ("segment.exited", "email_marketing"),
            ("profile.changed", "")} <= found
    assert not any(k == "segment.entered" for k, _ in found)
    # granting email again after that admits again (the later event wins)
    again = cv.apply(withdrawn, consent_ev(11, timedelta(hours=5), True, "email"))
    assert {"cart_abandoners", "email_marketing"} <= set(state(again, DAY)["segments"])
    # ... and an older event arriving late changes nothing
    late = cv.apply(again, consent_ev(12, timedelta(hours=1), False, "email"))
    assert state(late, DAY) == state(again, DAY)


def test_withdrawing_one_channel_after_granting_all_leaves_the_others():
    v = interested(consent_ev(9, timedelta(0), True, "all"), consent_ev(10, timedelta(hours=3), False, "email"))
    s = state(v, DAY)
    assert s["profile"]["consent"] == {"marketing:all": True, "marketing:email": False}
    assert MARKETING.isdisjoint(s["segments"])  # email withdrawn; pricing_interest needs every channel
    assert cs.consented(s["profile"]["consent"], "marketing", "sms")
    assert not cs.consented(s["profile"]["consent"], "marketing", "email")
    assert cs.consented(s["profile"]["consent"], "marketing", None)  # on some channel
    assert not cs.consented(s["profile"]["consent"], "marketing", "all")


def test_service_segments_do_not_depend_on_consent():
    v = view_of(*[order(i, i * 20 * DAY, "3000") for i in range(1, 11)])
    withdrawn = cv.apply(v, consent_ev(20, 200 * DAY, False, "all"))
    at = 200 * DAY + timedelta(hours=1)
    assert {"high_value", "repeat_buyers"} <= set(state(withdrawn, at)["segments"])
    assert state(withdrawn, at)["segments"] == state(v, at)["segments"]


@pytest.mark.parametrize("consent, purpose, channel, expected", [
    ({}, "marketing", "email", False),
    ({}, "marketing", None, False),
    ({}, "service", "email", True),  # serving the customer needs no consent
    ({"marketing:email": True}, "marketing", "email", True),
    ({"marketing:email": True}, "marketing", "sms", False),
    ({"marketing:email": True}, "marketing", "all", False),
    ({"marketing:email": True}, "marketing", None, True),
    ({"marketing:email": True}, "analytics", None, False),
    ({"marketing:all": True}, "marketing", "mail", True),
    ({"marketing:all": True}, "marketing", "all", True),
    ({"marketing:all": True, "marketing:web": False}, "marketing", "all", False),
    ({"marketing:all": False, "marketing:email": True}, "marketing", "email", True),
    ({"marketing:all": False, "marketing:email": True}, "marketing", "phone", False),
    ({"marketing:all": False}, "marketing", None, False),
])
def test_consented_reads_the_published_consent(consent, purpose, channel, expected):
    assert cs.consented(consent, purpose, channel) is expected


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(5))), st.integers(min_value=1, max_value=4))
def test_consent_does_not_depend_on_event_order(order_of, cut):
    events = [consent_ev(1, timedelta(0), True, "email"), consent_ev(2, DAY, False, "all"),
              consent_ev(3, 2 * DAY, True, "all"), consent_ev(4, 3 * DAY, False, "sms"), page(5, 3 * DAY, "/zh/cart")]
    shuffled = [events[i] for i in order_of]
    whole = state(view_of(*events), 4 * DAY)
    assert whole["profile"]["consent"] == {"marketing:all": True, "marketing:email": True, "marketing:sms": False}
    assert "cart_abandoners" in whole["segments"] and "pricing_interest" not in whole["segments"]
    assert state(cv.apply_all(view_of(*shuffled[:cut]), shuffled[cut:]), 4 * DAY) == whole


# -- changes --------------------------------------------------------------------------------------

def test_a_new_customer_starts_with_a_lifecycle_change_and_its_profile():
    v = view_of(ev(1, timedelta(0), "profile.updated", {"name": "王芳"}))
    after = {**state(v, DAY), "version": 1}
    kinds = [c[0] for c in cs.changes(None, after)]
    assert kinds == ["lifecycle.changed", "profile.changed"]
    assert cs.changes(None, after)[0][2] == {"from": None, "to": "prospect", "rule": "no rule matched"}


def test_changes_name_every_difference_once():
    v = view_of(page(1, timedelta(0), "/zh/cart"), consent_ev(9, timedelta(0), True))
    before = state(v, DAY)
    v2 = cv.apply_all(v, [order(2, 2 * DAY, "30000"), ev(3, 2 * DAY, "profile.updated", {"name": "Li Lei"}),
                          ev(4, 2 * DAY, "survey.answered", {"survey_id": "s", "csat": 1})])
    after = state(v2, 2 * DAY, before)
    found = {(k, d) for k, d, _ in cs.changes(before, after)}
    assert found == {("lifecycle.changed", ""), ("segment.entered", "high_value"),
                     ("segment.entered", "high_value_at_risk"), ("segment.exited", "cart_abandoners"),
                     ("satisfaction.at_risk", ""), ("value.changed", ""), ("profile.changed", "")}
    assert cs.changes(after, after) == []


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(8))), st.integers(min_value=1, max_value=7))
def test_state_does_not_depend_on_event_order_or_chunks(order_of, cut):
    events = [order(1, timedelta(0), "800"), page(2, DAY, "/zh/pricing"), page(3, 2 * DAY, "/zh/pricing"),
              ev(4, 3 * DAY, "ticket.opened", {"ticket_id": "t", "kind": "complaint"}),
              ev(5, 4 * DAY, "survey.answered", {"survey_id": "s", "nps": 9}), order(6, 50 * DAY, "120"),
              ev(7, 51 * DAY, "ticket.resolved", {"ticket_id": "t"}),
              ev(8, 52 * DAY, "consent.changed", {"purpose": "marketing", "channel": "email", "granted": True})]
    shuffled = [events[i] for i in order_of]
    whole = state(view_of(*events), 60 * DAY)
    chunked = cv.apply_all(view_of(*shuffled[:cut]), shuffled[cut:])
    assert state(chunked, 60 * DAY) == whole


def test_snapshot_and_changes_match_the_published_schemas():
    v = view_of(order(1, timedelta(0)), ev(2, DAY, "profile.updated", {"name": "王芳"}))
    snap = {**state(v, DAY), "version": 3}
    feed.CustomerSnapshot.model_validate(snap)
    for kind, detail, data in cs.changes(None, snap):
        event = feed.change_event("c_1", 3, kind, snap["as_of"], data, snap, detail)
        feed.CHANGE_TYPES[kind].model_validate(event["data"])
        assert event["id"] == f"c_1:3:{kind}" + (f":{detail}" if detail else "")


# -- the rules file -------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, message", [
    ({"lifecycle": [{"stage": "vip", "when": {"field": "orders.count", "gte": 1}}]}, "lifecycle[0].stage"),
    ({"lifecycle": [{"stage": "loyal", "when": {"field": "orders.cnt", "gte": 1}}]}, "unknown fact 'orders.cnt'"),
    ({"lifecycle": [{"stage": "loyal", "when": {"field": "value.ltv", "gte": 1}}]}, "unknown fact 'value.ltv'"),
    ({"segments": [{"name": "x", "when": {"field": "orders.count", "greater": 1}}]}, "exactly one operator"),
    ({"segments": [{"name": "x", "when": {"event": "order.placed"}}]}, "within_days"),
    ({"segments": [{"name": "x", "when": {"event": "web.page_viewed", "within_days": 3, "at_least": 500}}]},
     "from 0 to 50"),
    ({"segments": [{"name": "x", "when": {"event": "web.page_viewed", "within_days": 3, "path_matches": "("}}]},
     "not a regular expression"),
    ({"segments": [{"name": "Bad Name", "when": {"field": "orders.count", "gte": 1}}]}, "segments[0].name"),
    ({"segments": [{"name": "x", "when": {"any": []}}]}, "non-empty list"),
    ({"value": {"rfm": {"recency_days": [90, 30, 180, 365]}}}, "value.rfm.recency_days"),
    ({"lifecycles": []}, "unknown section"),
    ({"segments": [{"name": "x", "purpose": "advertising", "when": {"field": "orders.count", "gte": 1}}]},
     "segments[0].purpose: unknown purpose 'advertising'; one of marketing, analytics, service, profiling"),
    ({"segments": [{"name": "x", "purpose": "marketing", "channel": "fax",
                    "when": {"field": "orders.count", "gte": 1}}]},
     "segments[0].channel: unknown channel 'fax'"),
    ({"segments": [{"name": "x", "channel": "email", "when": {"field": "orders.count", "gte": 1}}]},
     "segments[0].channel: the channel the consent must cover; it takes a purpose that needs consent"),
    ({"segments": [{"name": "x", "audience": "marketing", "when": {"field": "orders.count", "gte": 1}}]},
     "optionally label, description, purpose, channel"),
])
def test_a_wrong_rules_file_is_refused_with_where_and_why(doc, message):
    with pytest.raises(cs.RulesError, match=pytest.importorskip("re").escape(message)):
        cs.parse_rules(doc)


def test_the_rules_file_path_is_named_in_errors(tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text("[[segments]]\nname = 'x'\n", encoding="utf-8")
    with pytest.raises(cs.RulesError, match=r"rules\.toml: segments\[0\]"):
        cs.load_rules(bad)
    with pytest.raises(cs.RulesError, match="not valid TOML"):
        bad.write_text("[[segments", encoding="utf-8")
        cs.load_rules(bad)
