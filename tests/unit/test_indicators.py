"""Satisfaction indicators as pure folds, on hand-computed examples (README: Satisfaction indicators)."""
from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

import pytest

from events.customer_events import CustomerEvent
from projections import alerts, customer_view as cv, indicators as ind, satisfaction, sentiment
from projections.business_hours import Calendar

T0 = datetime(2026, 11, 16, 1, 0, tzinfo=timezone.utc)  # Monday 09:00 in Shanghai
CAL = Calendar()  # Mon-Fri 09:00-18:00 Asia/Shanghai


def ce(n: int, minutes: float, type: str, data: dict | None = None, channel: str | None = None,
       customer: str = "c_1") -> CustomerEvent:
    channel = channel or {"email": "email", "call": "phone", "survey": "survey", "ticket": "ticket"}[type.split(".")[0]]
    return CustomerEvent(f"k{n:04d}", f"e{n}", "test", type, T0 + timedelta(minutes=minutes), channel, customer,
                         ("phone:+8613800138000",), data or {})


def total(facts, slice_=ind.ALL) -> dict[str, float]:
    sums: dict = {}
    ind.add(sums, facts)
    out: dict[str, float] = {}
    for (_, _, dim, member), measures in sums.items():
        if (dim, member) == slice_:
            for m, v in measures.items():
                out[m] = out.get(m, 0.0) + v
    return out


def facts_of(events, segment="new"):
    return [f for e in events for f in ind.event_facts(e, segment)]


def test_csat_counts_4_and_5_as_satisfied_and_response_rate_is_answers_over_sent():
    events = [ce(i, i, "survey.sent", {"survey_id": f"s{i}", "rated_channel": "phone", "agent": "li"}) for i in range(8)]
    events += [ce(10 + i, 20 + i, "survey.answered", {"survey_id": f"s{i}", "csat": c, "rated_channel": "phone",
                                                       "agent": "li"}) for i, c in enumerate([5, 4, 3, 1])]
    values = ind.values(total(facts_of(events)))
    assert values["csat"]["value"] == 50.0 and values["csat"]["count"] == 4      # 2 of 4
    assert values["survey_response_rate"]["value"] == 50.0                       # 4 of 8
    # the rated agent and channel come from the survey event itself
    by_agent = ind.values(total(facts_of(events), ("agent", "li")))
    assert by_agent["csat"]["value"] == 50.0
    assert total(facts_of(events), ("channel", "phone"))["csat_answers"] == 4


def test_nps_is_promoters_minus_detractors():
    scores = [10, 9, 9, 8, 7, 6, 0, 10, 3, 9]  # 5 promoters, 3 detractors of 10
    events = [ce(i, i, "survey.answered", {"survey_id": f"s{i}", "nps": s}) for i, s in enumerate(scores)]
    assert ind.values(total(facts_of(events)))["nps"]["value"] == 20.0
    assert ind.values(total(facts_of(events[:1])))["csat"]["value"] is None  # no CSAT answers: no value


def test_calls_wait_abandonment_service_level_and_handle_time():
    q = {"queue": "aftersales", "phone_number": "138", "call_id": "c"}
    events = [
        ce(1, 0, "call.answered", {**q, "agent": "li", "wait_seconds": 10}),
        ce(2, 1, "call.answered", {**q, "agent": "li", "wait_seconds": 30}),
        ce(3, 2, "call.answered", {**q, "agent": "wang", "wait_seconds": 20}),
        ce(4, 3, "call.abandoned", {**q, "wait_seconds": 45}),
        ce(5, 4, "call.ended", {**q, "agent": "li", "talk_seconds": 200, "hold_seconds": 30, "wrap_seconds": 70}),
        ce(6, 5, "call.ended", {**q, "agent": "wang", "talk_seconds": 100}),
        ce(7, 6, "call.answered", {**q, "direction": "outbound", "agent": "li", "wait_seconds": 3}),  # not offered
    ]
    v = ind.values(total(facts_of(events), ("queue", "aftersales")))
    assert v["average_wait"]["value"] == 20.0           # (10 + 30 + 20) / 3 answered
    assert v["abandonment_rate"]["value"] == 25.0       # 1 of 4 offered
    assert v["service_level"]["value"] == 50.0          # 10 s and 20 s within 20 s, of 4 offered
    assert v["average_handle_time"]["value"] == 200.0   # (300 + 100) / 2
    assert ind.values(total(facts_of(events), ("agent", "li")))["average_handle_time"]["value"] == 300.0


def test_complaints_over_inbound_contacts():
    events = [
        ce(1, 0, "call.started", {"call_id": "c1", "phone_number": "1"}),
        ce(2, 1, "call.started", {"call_id": "c2", "phone_number": "1", "direction": "outbound"}),  # not inbound
        ce(3, 2, "email.received", {"message_id": "m", "from": "a@x", "to": ["s@x"]}),
        ce(4, 3, "ticket.opened", {"ticket_id": "t1", "kind": "complaint", "channel": "phone"}),
        ce(5, 4, "ticket.opened", {"ticket_id": "t2", "kind": "question"}),
    ]
    v = ind.values(total(facts_of(events)))
    assert v["complaint_rate"]["value"] == 25.0         # 1 complaint of 4 inbound contacts
    assert total(facts_of(events), ("channel", "phone"))["complaints"] == 1  # the ticket's own channel


def test_first_response_time_in_wall_clock_and_business_hours():
    # the customer writes on Friday 17:00 Shanghai, the agent answers on Monday 09:30
    friday = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    received = CustomerEvent("k1", "e1", "t", "email.received", friday, "email", "c",
                             (), {"thread_id": "th", "message_id": "m1", "from": "a@x", "to": ["s@x"]})
    sent = CustomerEvent("k2", "e2", "t", "email.sent", friday + timedelta(days=2, hours=16, minutes=30), "email", "c",
                         (), {"thread_id": "th", "message_id": "m2", "from": "s@x", "to": ["a@x"], "agent": "li"})
    for order in ([received, sent], [sent, received]):  # arrival order does not matter
        state = None
        for e in order:
            state = ind.thread_apply(state, e, "new")
        facts = ind.thread_facts(state, CAL)
        v = ind.values(total(facts.values(), ("agent", "li")))
        assert v["first_response_time"]["value"] == (2 * 24 + 16.5) * 3600
        assert v["first_response_time_business"]["value"] == 1.5 * 3600  # 17:00-18:00 Fri + 09:00-09:30 Mon


def test_resolution_time_counts_time_before_a_reopen_and_not_time_resolved():
    t = {"ticket_id": "t9", "queue": "complaints"}
    events = [
        ce(1, 0, "ticket.opened", {**t, "kind": "complaint"}),
        ce(2, 30, "ticket.replied", {**t, "author": "agent", "agent": "li"}),
        ce(3, 60, "ticket.resolved", {**t, "agent": "li"}),           # open 60 min
        ce(4, 180, "ticket.replied", {**t, "author": "customer"}),    # a customer reply reopens it
        ce(5, 200, "ticket.replied", {**t, "author": "agent", "agent": "wang"}),
        ce(6, 240, "ticket.resolved", {**t, "agent": "wang"}),        # open 60 more min
    ]
    for order in (events, list(reversed(events)), random.Random(3).sample(events, len(events))):
        state = None
        for e in order:
            state = ind.thread_apply(state, e, "new")
        facts = ind.thread_facts(state, CAL)
        assert facts["resolution"].at == events[-1].time
        assert dict(facts["resolution"].measures)["resolution_s"] == 120 * 60
        assert dict(facts["resolution"].dims)["agent"] == "wang"     # the resolving agent
        assert dict(facts["frt"].measures)["first_response_s"] == 30 * 60
        assert dict(facts["frt"].dims)["queue"] == "complaints"
    # reopened and not yet resolved again: no resolution to count
    state = None
    for e in events[:4]:
        state = ind.thread_apply(state, e, "new")
    assert "resolution" not in ind.thread_facts(state, CAL)
    # a ticket never seen opened (opened before the platform ran) has no known resolution time
    assert ind.thread_facts(ind.thread_apply(None, events[2], "new"), CAL) == {}
    # an explicit reopen works the same way
    state = None
    for e in events[:3] + [ce(7, 120, "ticket.reopened", t), ce(8, 150, "ticket.resolved", {**t, "agent": "li"})]:
        state = ind.thread_apply(state, e, "new")
    assert dict(ind.thread_facts(state, CAL)["resolution"].measures)["resolution_s"] == 90 * 60


def test_a_late_reply_moves_the_first_response_instead_of_counting_twice():
    opened = ce(1, 0, "ticket.opened", {"ticket_id": "t"})
    late_first = ce(2, 10, "ticket.replied", {"ticket_id": "t", "author": "agent", "agent": "li"})
    second = ce(3, 40, "ticket.replied", {"ticket_id": "t", "author": "agent", "agent": "wang"})
    sums: dict = {}
    s1 = ind.thread_apply(ind.thread_apply(None, opened, "new"), second, "new")
    ind.diff({}, ind.thread_facts(s1, CAL), sums)
    s2 = ind.thread_apply(s1, late_first, "new")
    ind.diff(ind.thread_facts(s1, CAL), ind.thread_facts(s2, CAL), sums)
    merged = {}
    for (_, _, dim, member), m in sums.items():
        for k, v in m.items():
            merged[(dim, member, k)] = merged.get((dim, member, k), 0) + v
    assert merged[("all", "", "first_responses")] == 1
    assert merged[("all", "", "first_response_s")] == 600
    assert merged[("agent", "wang", "first_responses")] == 0 and merged[("agent", "li", "first_responses")] == 1


def test_repeat_contacts_within_24h_whatever_the_order():
    contacts = [ce(1, 0, "call.started", {"call_id": "a", "phone_number": "1", "queue": "q"}),
                ce(2, 60 * 20, "email.received", {"message_id": "m", "from": "a@x", "to": ["s@x"]}),
                ce(3, 60 * 50, "call.started", {"call_id": "b", "phone_number": "1", "queue": "q"})]
    for order in itertools.permutations(contacts):
        view = cv.apply_all(cv.empty("c_1"), order)
        facts = ind.repeat_facts(view, lambda at: "prospect")
        assert set(facts) == {"k0002"}  # 20 h after the first; the third came 30 h after the second
    # a late contact in between makes the third a repeat: the diff adds exactly that one
    before = cv.apply_all(cv.empty("c_1"), contacts)
    after = cv.apply(before, ce(4, 60 * 40, "ticket.opened", {"ticket_id": "t"}))
    sums: dict = {}
    ind.diff(ind.repeat_facts(before, lambda at: "new"), ind.repeat_facts(after, lambda at: "new"), sums,
             keep=ind.known_repeats(after))
    added = {k[0]: m["repeat_contacts"] for k, m in sums.items() if k[2] == "all"}
    assert added == {ind.minute_of(contacts[2].time): 1.0, ind.minute_of(T0 + timedelta(minutes=60 * 40)): 1.0}


def test_sentiment_scores_chinese_and_english_customer_text_only():
    assert sentiment.score("服务很好，谢谢！") > 0.3
    assert sentiment.score("快递太慢了，非常失望，我要投诉") < -0.3
    assert sentiment.score("Great service, thank you!") > 0.3
    assert sentiment.score("The agent was rude and my problem is still not solved") < -0.3
    assert sentiment.score("") is None and sentiment.score("> quoted only") is None
    # a polite question is not a complaint, in either language
    assert sentiment.score("咨询：海尔洗衣机是否支持上门安装？ 您好，我想购买海尔 10公斤 滚筒洗衣机，"
                           "请问是否支持上门安装？大概几天可以送到杭州？谢谢！") > sentiment.NEGATIVE
    assert sentiment.score("你好，我的订单SO8339已经付款了，请问什么时候能发货？") > sentiment.NEGATIVE
    assert sentiment.score("Hello, does the washing machine include installation? Thanks.") > sentiment.NEGATIVE
    angry = ce(1, 0, "email.received", {"message_id": "m", "from": "a@x", "to": ["s@x"],
                                        "body_text": "Terrible, I am very disappointed and angry."})
    agent = ce(2, 1, "email.sent", {"message_id": "n", "from": "s@x", "to": ["a@x"], "body_text": "Terrible news!"})
    t = total(facts_of([angry, agent]))
    assert t["sentiment_texts"] == 1 and t["sentiment_negative"] == 1  # the agent's words do not count


def test_business_hours_skip_nights_weekends_and_holidays():
    cal = Calendar.from_config({"timezone": "Asia/Shanghai", "hours": {"mon": ["09:00", "18:00"],
                                "tue": ["09:00", "18:00"]}, "holidays": ["2026-11-17"]})
    monday_8 = datetime(2026, 11, 16, 0, 0, tzinfo=timezone.utc)   # 08:00 Shanghai
    assert cal.seconds(monday_8, monday_8 + timedelta(hours=2)) == 3600              # 09:00-10:00
    assert cal.seconds(monday_8, monday_8 + timedelta(days=2)) == 9 * 3600          # Tuesday is a holiday
    assert cal.seconds(monday_8 + timedelta(hours=2), monday_8) == 0
    with pytest.raises(ValueError, match="weekday"):
        Calendar.from_config({"hours": {"funday": ["09:00", "10:00"]}})
    with pytest.raises(ValueError, match="time zone"):
        Calendar.from_config({"timezone": "Mars/Olympus"})


def test_customer_satisfaction_index_and_at_risk_reasons():
    happy = cv.apply_all(cv.empty("c"), [ce(1, 0, "survey.answered", {"survey_id": "s", "csat": 5, "nps": 10})])
    a = satisfaction.assess(happy)
    assert a["index"] == 100.0 and not a["at_risk"]
    unhappy = cv.apply_all(happy, [
        ce(2, 10, "survey.answered", {"survey_id": "s2", "csat": 2, "nps": 4}),
        ce(3, 20, "ticket.opened", {"ticket_id": "t", "kind": "complaint", "body_text": "非常失望，我要投诉"}),
    ])
    a = satisfaction.assess(unhappy)
    assert a["at_risk"] and {r["code"] for r in a["reasons"]} == {"low_csat", "detractor", "negative_sentiment",
                                                                  "open_complaint"}
    # the figures behind the reasons, for the dashboard to word them in the viewer's language
    values = {r["code"]: r["value"] for r in a["reasons"]}
    assert values["low_csat"] == 2 and values["detractor"] == 4 and values["open_complaint"] == "t"
    assert values["negative_sentiment"] < 0
    assert a["index"] < 30
    resolved = cv.apply_all(unhappy, [ce(4, 30, "ticket.resolved", {"ticket_id": "t"}),
                                      ce(5, 40, "survey.answered", {"survey_id": "s3", "csat": 5, "nps": 9,
                                                                    "comment": "Thank you, great help!"})])
    assert not satisfaction.assess(resolved)["at_risk"]
    assert cv.summary(resolved)["satisfaction"]["index"] > 70
    calls = cv.apply_all(cv.empty("c"), [ce(i, i * 60, "call.started", {"call_id": f"c{i}", "phone_number": "1"})
                                         for i in range(3)])
    assert [(r["code"], r["value"]) for r in satisfaction.assess(calls)["reasons"]] == [("repeat_contacts", 3)]


def test_segment_is_by_orders_before_the_moment():
    view = cv.apply_all(cv.empty("c"), [CustomerEvent(f"o{i}", f"o{i}", "t", "order.placed", T0 + timedelta(days=i),
                                                      "shop", "c", (), {"order_id": f"o{i}", "total": "1"})
                                        for i in range(1, 5)])
    assert [cv.segment(view, T0 + timedelta(days=d, hours=1)) for d in (0, 1, 2, 3, 4)] == \
        ["prospect", "new", "new", "repeat", "repeat"]
    assert cv.merge(view, cv.empty("x"))["orders"]["first_times"] == view["orders"]["first_times"]


def test_alert_rules_are_validated_and_fire_on_enough_samples():
    rule = alerts.AlertRule.from_config({"name": "csat", "indicator": "csat", "window": "1h",
                                         "dimension": "channel", "below": 80, "min_count": 5})
    assert rule.applies("csat", "1h", "channel", "phone") and not rule.applies("csat", "5m", "channel", "phone")
    assert not rule.breached(50.0, 4) and rule.breached(50.0, 5) and not rule.breached(85.0, 10)
    with pytest.raises(ValueError, match="unknown indicator"):
        alerts.AlertRule.from_config({"name": "x", "indicator": "happiness", "window": "1h", "below": 1})
    with pytest.raises(ValueError, match="exactly one"):
        alerts.AlertRule.from_config({"name": "x", "indicator": "csat", "window": "1h"})
