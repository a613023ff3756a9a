"""The simulator: generated journeys honour the event contract, and the client paces, batches and retries.

Pure tests: no network. The collector is an ``httpx.MockTransport`` and time is a fake clock.
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.envelope import validate
from events.identifiers import normalize
from events.touchpoints import EVENT_TYPES
from services.simulator import main as sim
from services.simulator.journeys import JourneyGenerator

START = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
RECEIVED = datetime(2026, 3, 20, tzinfo=timezone.utc)
CUSTOMERS = 300
CJK = re.compile(r"[\u4e00-\u9fff]")
LATIN_WORD = re.compile(r"[A-Za-z]{3,}")

EXPECTED_TYPES = {
    "web.session_started", "web.page_viewed", "profile.updated", "order.placed", "order.paid", "order.shipped",
    "call.started", "call.answered", "call.ended", "call.abandoned", "email.received", "email.sent",
    "survey.sent", "survey.answered", "ticket.opened", "ticket.replied", "ticket.resolved", "ticket.reopened",
    "order.refunded", "consent.changed",
}


def _time(event: dict) -> datetime:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def gen() -> JourneyGenerator:
    return JourneyGenerator(seed=42, start=START)


@pytest.fixture(scope="module")
def events(gen: JourneyGenerator) -> list[dict]:
    return list(gen.stream(CUSTOMERS))


@pytest.fixture(scope="module")
def journeys(gen: JourneyGenerator) -> dict[int, list[dict]]:
    return {i: gen.journey(i) for i in range(CUSTOMERS)}


# --- the event contract ------------------------------------------------------------------------

def test_every_generated_event_validates(events: list[dict]) -> None:
    assert len(events) > 3000
    for event in events:
        tp = validate(event, received_at=RECEIVED, default_region="CN")
        assert tp.invalid_identifiers == (), (event, tp.invalid_identifiers)
        assert event["time"].endswith("Z")
        assert tp.time == _time(event), "the sender's own event time is kept"
        assert event["dataschema"] == EVENT_TYPES[event["type"]].dataschema
        assert event["source"].startswith("urn:crm:sim:")
        assert len(orjson.dumps(event)) <= sim.MAX_EVENT_BYTES


def test_ids_are_unique(events: list[dict], gen: JourneyGenerator) -> None:
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    next_round = {e["id"] for e in gen.stream(50, first_index=CUSTOMERS)}
    assert not next_round & set(ids), "a new round of customers must not reuse ids"


def test_same_seed_same_events_and_other_seed_other_ids(events: list[dict]) -> None:
    again = list(JourneyGenerator(seed=42, start=START).stream(CUSTOMERS))
    assert orjson.dumps(again) == orjson.dumps(events)
    other = JourneyGenerator(seed=43, start=START).journey(0)
    assert not {e["id"] for e in other} & {e["id"] for e in events}


def test_ids_do_not_depend_on_start(gen: JourneyGenerator) -> None:
    later = JourneyGenerator(seed=42, start=START + timedelta(days=30))
    for i in range(20):
        assert [e["id"] for e in later.journey(i)] == [e["id"] for e in gen.journey(i)]


def test_each_journey_is_in_event_time_order_within_the_span(journeys: dict[int, list[dict]],
                                                              gen: JourneyGenerator) -> None:
    for i, journey in journeys.items():
        times = [_time(e) for e in journey]
        assert times == sorted(times), f"customer {i} is out of order"
        assert START <= times[0] and times[-1] <= START + gen.span


def test_stream_interleaves_customers_in_time_order(events: list[dict], journeys: dict[int, list[dict]]) -> None:
    times = [_time(e) for e in events]
    assert times == sorted(times)
    assert sorted(e["id"] for j in journeys.values() for e in j) == sorted(e["id"] for e in events)
    first_customer = {e["id"] for e in journeys[0]}
    positions = [n for n, e in enumerate(events) if e["id"] in first_customer]
    assert positions != list(range(positions[0], positions[0] + len(positions))), "customers are interleaved"


def test_short_span_squeezes_journeys_without_reordering() -> None:
    day = JourneyGenerator(seed=5, start=START, span=timedelta(hours=6))
    for i in range(40):
        times = [_time(e) for e in day.journey(i)]
        assert times == sorted(times)
        assert START <= times[0] and times[-1] <= START + timedelta(hours=6)


def test_stream_covers_the_journey_event_types(events: list[dict]) -> None:
    types = Counter(e["type"] for e in events)
    assert EXPECTED_TYPES <= set(types), EXPECTED_TYPES - set(types)
    assert set(types) <= set(EVENT_TYPES)
    assert types["web.page_viewed"] > types["order.placed"] > types["order.refunded"]


def test_archetypes_vary(gen: JourneyGenerator) -> None:
    kinds = Counter(gen.persona(i).kind for i in range(CUSTOMERS))
    assert set(kinds) == {"prospect", "caller", "emailer", "buyer", "repeat", "complainer"}


# --- realistic content -----------------------------------------------------------------------------

def test_chinese_and_english_customers_and_text(events: list[dict]) -> None:
    names = [e["data"]["name"] for e in events if e["type"] == "profile.updated" and "name" in e["data"]]
    assert any(CJK.search(n) for n in names) and any(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", n) for n in names)
    for kind, text_field in (("email.received", "body_text"), ("email.sent", "body_text"),
                             ("ticket.opened", "body_text"), ("survey.answered", "comment"),
                             ("call.ended", "notes")):
        texts = [e["data"].get(text_field, "") for e in events if e["type"] == kind]
        assert any(CJK.search(t) for t in texts), f"no Chinese {kind}"
        assert any(LATIN_WORD.search(t) and not CJK.search(t) for t in texts), f"no English {kind}"


def test_surveys_hold_praise_and_complaints(events: list[dict]) -> None:
    surveys = [e["data"] for e in events if e["type"] == "survey.answered"]
    csat = Counter(s.get("csat") for s in surveys)
    assert csat[5] and (csat[1] + csat[2]), csat
    assert any(s.get("nps") is not None and s["nps"] <= 4 for s in surveys)
    assert any(s.get("nps") is not None and s["nps"] >= 9 for s in surveys)
    complaints = [e for e in events if e["type"] == "ticket.opened" and e["data"]["kind"] == "complaint"]
    assert complaints and any(e["type"] == "ticket.opened" and e["data"]["kind"] == "service_request"
                              for e in events)
    withdrawn = [e for e in events if e["type"] == "consent.changed" and not e["data"]["granted"]]
    assert withdrawn


def test_phones_emails_companies_and_prices_look_real(events: list[dict], gen: JourneyGenerator) -> None:
    phones = {gen.persona(i).phone for i in range(CUSTOMERS)}
    assert any(re.fullmatch(r"\+861[3589]\d{9}", p) for p in phones)
    assert any(not p.startswith("+86") for p in phones), "some international numbers"
    domains = {gen.persona(i).email.split("@")[1] for i in range(CUSTOMERS)}
    assert {"qq.com", "163.com", "gmail.com", "example.com"} <= domains
    companies = {e["data"].get("company") for e in events if e["type"] == "profile.updated"}
    assert {"海尔集团", "华为技术有限公司", "Acme Ltd"} & companies
    for e in events:
        if e["type"] == "order.placed":
            assert e["data"]["currency"] == "CNY"
            assert all(item["sku"] and item["quantity"] >= 1 for item in e["data"]["items"])


def test_email_replies_thread_on_the_customer_message(journeys: dict[int, list[dict]]) -> None:
    checked = 0
    for journey in journeys.values():
        received = {e["data"]["message_id"]: e for e in journey if e["type"] == "email.received"}
        for sent in (e for e in journey if e["type"] == "email.sent"):
            original = received[sent["data"]["in_reply_to"]]
            assert original["data"]["thread_id"] == sent["data"]["thread_id"]
            assert _time(original) < _time(sent)
            assert sent["data"]["agent"]
            checked += 1
    assert checked > 20


def test_call_ends_after_it_was_answered(journeys: dict[int, list[dict]]) -> None:
    for journey in journeys.values():
        calls: dict[str, list[str]] = {}
        for e in journey:
            if e["type"].startswith("call."):
                calls.setdefault(e["data"]["call_id"], []).append(e["type"])
        for steps in calls.values():
            assert steps in (["call.started", "call.answered", "call.ended"], ["call.started", "call.abandoned"])



def test_calls_report_hold_and_wrap_up_time(events: list[dict]) -> None:
    ended = [e["data"] for e in events if e["type"] == "call.ended"]
    assert ended
    for data in ended:
        assert data["hold_seconds"] == 0 or 10 <= data["hold_seconds"] <= 120, data
        assert 15 <= data["wrap_seconds"] <= 90, data
    held = sum(1 for d in ended if d["hold_seconds"] > 0)
    assert 0 < held < len(ended), "some callers are put on hold, most are not"


_RATING = ("rated_touchpoint_id", "rated_channel", "agent", "queue", "email", "phone", "account_id", "anonymous_id")


def test_every_survey_answer_follows_its_survey_invitation(journeys: dict[int, list[dict]]) -> None:
    answered = 0
    for i, journey in journeys.items():
        sent = {e["data"]["survey_id"]: e for e in journey if e["type"] == "survey.sent"}
        assert len(sent) == sum(1 for e in journey if e["type"] == "survey.sent"), "one invitation per survey"
        by_id = {e["id"]: e for e in journey}
        for invite in sent.values():
            rated = invite["data"].get("rated_touchpoint_id")
            if rated is not None:  # sent shortly after the interaction it asks about
                gap = _time(invite) - _time(by_id[rated])
                assert timedelta(minutes=1) <= gap <= timedelta(minutes=10), (i, gap)
        for answer in (e for e in journey if e["type"] == "survey.answered"):
            invite = sent.get(answer["data"]["survey_id"])
            assert invite is not None, (i, answer["data"]["survey_id"])
            assert _time(invite) < _time(answer), i
            assert journey.index(invite) < journey.index(answer), i
            for field in _RATING:
                assert invite["data"].get(field) == answer["data"].get(field), (i, field)
            answered += 1
    assert answered > 20


def test_response_rate_is_realistic() -> None:
    events = list(JourneyGenerator(seed=7, start=START).stream(CUSTOMERS))
    types = Counter(e["type"] for e in events)
    assert types["survey.sent"] > 100
    assert 0.2 <= types["survey.answered"] / types["survey.sent"] <= 0.7, types


def test_some_tickets_are_reopened_and_resolved_again(journeys: dict[int, list[dict]]) -> None:
    tickets = reopened = 0
    for journey in journeys.values():
        steps: dict[str, list[dict]] = {}
        for e in journey:
            if e["type"].startswith("ticket."):
                steps.setdefault(e["data"]["ticket_id"], []).append(e)
        for history in steps.values():
            tickets += 1
            kinds = [e["type"] for e in history]
            assert kinds[0] == "ticket.opened" and kinds[-1] == "ticket.resolved", kinds
            if "ticket.reopened" not in kinds:
                assert kinds.count("ticket.resolved") == 1, kinds
                continue
            reopened += 1
            at = kinds.index("ticket.reopened")
            assert kinds.count("ticket.reopened") == 1 and kinds.count("ticket.resolved") == 2, kinds
            assert kinds[at - 2] == "ticket.resolved" and kinds[at - 1] == "ticket.replied", kinds
            complaint = history[at - 1]["data"]
            assert complaint["author"] == "customer" and complaint["body_text"]
            after = kinds[at + 1:]
            assert "ticket.resolved" in after and "ticket.replied" in after
            assert history[at + 1]["data"]["author"] == "agent"
            times = [_time(e) for e in history]
            assert times == sorted(times) and times[at - 2] < times[at - 1] <= times[at] < times[-1]
    assert tickets and 0.1 <= reopened / tickets <= 0.45, (reopened, tickets)


def test_a_reopening_customer_writes_in_their_own_language(gen: JourneyGenerator,
                                                          journeys: dict[int, list[dict]]) -> None:
    seen = set()
    for i, journey in journeys.items():
        tickets = [e for e in journey if e["type"].startswith("ticket.")]
        for before, e in zip(tickets, tickets[1:]):
            if e["type"] == "ticket.reopened":
                assert before["type"] == "ticket.replied" and before["data"]["author"] == "customer"
                text = before["data"]["body_text"]
                if gen.persona(i).locale == "zh":
                    assert "问题还是没有解决" in text, text
                else:
                    assert "still not fixed" in text and not CJK.search(text), text
                seen.add(gen.persona(i).locale)
    assert seen == {"zh", "en"}

# --- identity --------------------------------------------------------------------------------------------

def _identifiers(event: dict) -> set[tuple[str, str]]:
    tp = validate(event, received_at=RECEIVED)
    return {(i.kind, i.value) for i in tp.identifiers}


def test_identifiers_of_matches_what_the_journey_reveals(gen: JourneyGenerator,
                                                         journeys: dict[int, list[dict]]) -> None:
    for i, journey in journeys.items():
        expected = gen.identifiers_of(i)
        assert set(expected) == {"email", "phone", "account_id", "anonymous_id"}
        seen = set().union(*(_identifiers(e) for e in journey))
        for kind in ("email", "phone", "account_id"):
            shown = {v for k, v in seen if k == kind}
            assert shown == ({normalize(kind, expected[kind]).value} if expected[kind] else set()), (i, kind)
        cookies = {v for k, v in seen if k == "anonymous_id"}
        assert (expected["anonymous_id"] in cookies) if expected["anonymous_id"] else not cookies


def test_identifiers_differ_between_customers_except_a_household_s_phone_and_computer(gen: JourneyGenerator) -> None:
    people = [gen.persona(i) for i in range(CUSTOMERS)]
    for kind in ("email", "phone", "account_id", "anonymous_id"):
        values = [getattr(p, kind) for p in people if kind in ("email", "account_id") or p.household is None]
        assert len(values) == len(set(values)), kind
    households = [p for p in people if p.household is not None]
    assert households, "some customers share a family phone and a home computer"
    for p in households:
        other = people[p.household]
        assert (p.phone, p.anonymous_id) == (other.phone, other.anonymous_id) and p.account_id != other.account_id


def test_the_guards_keep_every_household_apart_and_everyone_else_whole(gen: JourneyGenerator,
                                                                        journeys: dict[int, list[dict]]) -> None:
    from tests.reference import reference_partition

    touchpoints = [validate(e, received_at=datetime.now(timezone.utc)) for j in journeys.values() for e in j]
    customer_of = reference_partition(touchpoints).customer_of
    accounts = {i: customer_of[f"account_id:{gen.identifiers_of(i)['account_id']}"]
                for i in journeys if gen.identifiers_of(i)["account_id"]}
    assert len(set(accounts.values())) == len(accounts), "two account holders fused"
    for i in journeys:
        p, ids = gen.persona(i), gen.identifiers_of(i)
        owners = {customer_of[normalize(k, v).key] for k, v in ids.items() if v}
        if p.household is None and (i + 1 not in journeys or gen.persona(i + 1).household is None):
            assert len(owners) == 1, (i, ids)  # a customer on their own is one profile


def test_logged_in_customers_link_cookie_and_account_on_a_web_event(gen: JourneyGenerator,
                                                                    journeys: dict[int, list[dict]]) -> None:
    logged_in = [i for i in journeys if gen.identifiers_of(i)["account_id"]]
    assert len(logged_in) > 50
    for i in logged_in:
        ids = gen.identifiers_of(i)
        assert any(e["type"].startswith("web.") and e["data"].get("anonymous_id") == ids["anonymous_id"]
                   and e["data"].get("user_id") == ids["account_id"] for e in journeys[i]), i


def test_channels_carry_the_identifiers_they_would_in_reality(events: list[dict]) -> None:
    for e in events:
        kinds = {k for k, _ in _identifiers(e)}
        if e["type"].startswith("call."):
            assert kinds == {"phone"}
        elif e["type"].startswith("email."):
            assert kinds == {"email"}
        elif e["type"].startswith("order."):
            assert kinds == {"account_id", "email"}
        elif e["type"] == "profile.updated" and "name" in e["data"]:
            assert kinds == {"account_id", "email", "phone"}
    prospects_web = [e for e in events if e["type"] == "web.page_viewed" and "user_id" not in e["data"]]
    assert prospects_web


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=-(2**40), max_value=2**40), index=st.integers(min_value=0, max_value=10**6))
def test_any_seed_and_customer_gives_valid_ordered_events(seed: int, index: int) -> None:
    journey = JourneyGenerator(seed, START).journey(index)
    assert journey
    times = [_time(e) for e in journey]
    assert times == sorted(times)
    for event in journey:
        assert validate(event, received_at=RECEIVED).invalid_identifiers == ()


def test_start_needs_a_time_zone() -> None:
    with pytest.raises(ValueError):
        JourneyGenerator(1, datetime(2026, 1, 1))


# --- the client: fake clock and mock collector ---------------------------------------------------------

class FakeClock:
    """Monotonic time that only moves when the code under test waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


class Collector:
    """A mock collector that validates events like the real one and can fail on demand."""

    def __init__(self, clock: FakeClock | None = None, script: list | None = None):
        self.clock = clock
        self.script = list(script or [])  # responses/exceptions to give before behaving normally
        self.posts: list[tuple[float, list[dict]]] = []
        self.hosts: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.add(request.url.host)
        assert request.url.path == "/v1/events"
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        batch = orjson.loads(request.content)
        self.posts.append((self.clock() if self.clock else 0.0, batch))
        accepted, rejected = [], []
        for index, event in enumerate(batch):
            try:
                validate(event, received_at=RECEIVED)
                accepted.append(event["id"])
            except ValueError as exc:
                rejected.append({"index": index, "id": event.get("id"), "reason": "schema_violation",
                                 "errors": [{"field": "", "message": str(exc)}]})
        return httpx.Response(202, json={"accepted": accepted, "rejected": rejected})


def _sender(collector: Collector, clock: FakeClock, **kw) -> sim.Sender:
    client = httpx.Client(transport=httpx.MockTransport(collector))
    return sim.Sender(client, "http://collector.test", wait=clock.wait, **kw)


def _events(n: int) -> list[dict]:
    return list(JourneyGenerator(7, START).stream(max(1, n // 10 + 5)))[:n]


def test_sender_posts_a_batch() -> None:
    clock = FakeClock()
    collector = Collector(clock)
    batch = _events(20)
    result = _sender(collector, clock).send(batch)
    assert result.accepted == [e["id"] for e in batch] and not result.rejected and not result.failed
    assert collector.posts[0][1] == batch


def test_sender_honours_retry_after_on_503() -> None:
    clock = FakeClock()
    unavailable = httpx.Response(503, headers={"Retry-After": "5"}, json={"error": "event log unavailable"})
    collector = Collector(clock, [unavailable, unavailable])
    result = _sender(collector, clock).send(_events(3))
    assert len(result.accepted) == 3 and result.retries == 2
    assert clock.waits == [5.0, 5.0]


def test_sender_backs_off_exponentially_on_connection_errors() -> None:
    clock = FakeClock()
    refused = httpx.ConnectError("connection refused")
    collector = Collector(clock, [refused, refused, refused])
    result = _sender(collector, clock, backoff=0.5).send(_events(2))
    assert len(result.accepted) == 2 and result.retries == 3
    assert clock.waits == [0.5, 1.0, 2.0]


def test_sender_gives_up_after_bounded_retries() -> None:
    clock = FakeClock()
    collector = Collector(clock, [httpx.Response(503)] * 10)
    result = _sender(collector, clock, max_retries=3, backoff=1, max_backoff=2).send(_events(4))
    assert result.failed == 4 and not result.accepted and result.retries == 3
    assert "gave up after 4 attempts" in result.error
    assert clock.waits == [1, 2, 2]


def test_sender_stops_retrying_when_asked() -> None:
    collector = Collector(None, [httpx.Response(503)] * 5)
    client = httpx.Client(transport=httpx.MockTransport(collector))
    result = sim.Sender(client, "http://collector.test", wait=lambda s: True).send(_events(2))
    assert result.failed == 2 and "stopped" in result.error


def test_sender_reports_rejections_of_a_400() -> None:
    clock = FakeClock()
    rejected = [{"index": 0, "id": "x", "reason": "schema_violation", "errors": [{"field": "data", "message": "m"}]}]
    collector = Collector(clock, [httpx.Response(400, json={"error": "no valid event", "rejected": rejected})])
    result = _sender(collector, clock).send(_events(1))
    assert result.rejected == rejected and not result.accepted and not result.failed


def test_sender_splits_a_batch_the_collector_finds_too_large() -> None:
    clock = FakeClock()
    collector = Collector(clock, [httpx.Response(413, json={"error": "too big"})])
    batch = _events(10)
    result = _sender(collector, clock).send(batch)
    assert result.accepted == [e["id"] for e in batch]
    assert [len(b) for _, b in collector.posts] == [5, 5]


def test_sender_does_not_retry_other_client_errors() -> None:
    clock = FakeClock()
    collector = Collector(clock, [httpx.Response(404, text="not found")])
    result = _sender(collector, clock).send(_events(2))
    assert result.failed == 2 and "HTTP 404" in result.error and not clock.waits


def _pump(collector: Collector, clock: FakeClock, **kw) -> sim.Pump:
    problems: list[str] = []
    pump = sim.Pump(_sender(collector, clock), clock=clock, wait=clock.wait, on_problem=problems.append, **kw)
    pump.problems = problems
    return pump


def test_pump_paces_at_the_rate_and_batches_by_count() -> None:
    clock = FakeClock()
    collector = Collector(clock)
    stats = _pump(collector, clock, rate=10, batch_size=5).run(_events(23))
    assert [len(b) for _, b in collector.posts] == [5, 5, 5, 5, 3]
    assert [round(t, 6) for t, _ in collector.posts] == [0.4, 0.9, 1.4, 1.9, 2.3]
    assert (stats.sent, stats.accepted, stats.rejected, stats.failed, stats.batches) == (23, 23, 0, 0, 5)
    assert stats.ok


def test_pump_flushes_a_partial_batch_after_the_linger_time() -> None:
    clock = FakeClock()
    collector = Collector(clock)
    _pump(collector, clock, rate=2, batch_size=50, linger=1.0).run(_events(4))
    assert [len(b) for _, b in collector.posts] == [2, 2]
    assert [t for t, _ in collector.posts] == [0.5, 1.5]


def test_pump_stops_at_max_events_and_duration() -> None:
    clock = FakeClock()
    collector = Collector(clock)
    stats = _pump(collector, clock, rate=100, batch_size=5).run(_events(50), max_events=7)
    assert stats.sent == 7 and [len(b) for _, b in collector.posts] == [5, 2]

    clock = FakeClock()
    collector = Collector(clock)
    stats = _pump(collector, clock, rate=10, batch_size=100).run(_events(100), duration=1.0)
    assert stats.sent == 10 and clock.now == pytest.approx(1.0)


def test_pump_does_not_burst_after_a_stall() -> None:
    clock = FakeClock()
    collector = Collector(clock, [httpx.Response(503, headers={"Retry-After": "20"})])
    _pump(collector, clock, rate=10, batch_size=5).run(_events(40))
    times = Counter(round(t, 6) for t, _ in collector.posts)
    # the stalled batch plus at most one second (two batches) of catch-up at the same instant
    assert max(times.values()) <= 3
    assert len(collector.posts) == 8


def test_pump_discards_the_pending_batch_when_stopped() -> None:
    clock = FakeClock()
    collector = Collector(clock)
    pump = _pump(collector, clock, rate=10, batch_size=5)
    stats = pump.run(_events(40), stopped=lambda: clock.now >= 0.75)
    assert stats.sent == 5 and stats.discarded == 3 and stats.ok


def test_pump_prints_rejected_events() -> None:
    clock = FakeClock()
    collector = Collector(clock)
    bad = dict(_events(1)[0], type="no.such.type")
    pump = _pump(collector, clock, rate=10, batch_size=5)
    stats = pump.run([bad] + _events(2))
    assert (stats.accepted, stats.rejected) == (2, 1) and not stats.ok
    assert any(bad["id"] in p and "rejected" in p for p in pump.problems)


def test_retry_after_and_collector_url_parsing() -> None:
    assert sim.retry_after_seconds("5") == 5.0
    assert sim.retry_after_seconds(None) is None and sim.retry_after_seconds("soon") is None
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert sim.retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert sim.events_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/v1/events"
    assert sim.events_url("http://ingest:8080/v1/events/") == "http://ingest:8080/v1/events"
    with pytest.raises(ValueError):
        sim.events_url("ftp://example.com")


def test_command_line_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_COLLECTOR_URL", raising=False)
    args = sim.build_parser().parse_args([])
    assert (args.collector, args.rate, args.customers, args.batch) == ("http://127.0.0.1:8080", 50.0, 200, 50)
    assert args.duration is None and args.max_events is None and args.start is None and not args.loop
    monkeypatch.setenv("CRM_COLLECTOR_URL", "http://ingest:8080")
    args = sim.build_parser().parse_args(["--start", "2026-01-01T08:00:00+08:00"])
    assert args.collector == "http://ingest:8080" and args.start == datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(SystemExit):
        sim.build_parser().parse_args(["--start", "2026-01-01T08:00:00"])
    with pytest.raises(SystemExit):
        sim.build_parser().parse_args(["--rate", "0"])


def test_journey_events_loop_uses_new_customers() -> None:
    looping = sim.journey_events(3, 2, START, loop=True)
    first_round = list(JourneyGenerator(3, START).stream(2))
    taken = [next(looping) for _ in range(len(first_round) + 5)]
    assert taken[:len(first_round)] == first_round
    assert not {e["id"] for e in taken[len(first_round):]} & {e["id"] for e in first_round}


def test_run_sends_everything_to_the_given_collector_only(capsys: pytest.CaptureFixture) -> None:
    collector = Collector()
    with pytest.raises(SystemExit) as exit_info:
        sim.run(["--collector", "http://collector.test:8080", "--customers", "4", "--rate", "100000",
                 "--batch", "20", "--seed", "9", "--start", "2026-03-01T00:00:00Z", "--quiet"],
                transport=httpx.MockTransport(collector))
    assert exit_info.value.code == 0
    expected = list(JourneyGenerator(9, START.replace(hour=0)).stream(4))
    assert [e for _, batch in collector.posts for e in batch] == expected
    assert collector.hosts == {"collector.test"}
    out = capsys.readouterr().out
    assert f"accepted {len(expected)}" in out and "rejected 0" in out


def test_run_exits_non_zero_when_events_are_not_accepted(capsys: pytest.CaptureFixture) -> None:
    collector = Collector(None, [httpx.Response(404, text="no collector here")] * 3)
    with pytest.raises(SystemExit) as exit_info:
        sim.run(["--collector", "http://collector.test", "--customers", "1", "--rate", "100000", "--quiet",
                 "--max-events", "3"], transport=httpx.MockTransport(collector))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "not delivered" in captured.err and "failed 3" in captured.out


def test_backfill_sends_recent_history_first_then_live_events_stamped_as_sent(capsys: pytest.CaptureFixture) -> None:
    collector = Collector()
    before = datetime.now(timezone.utc)
    with pytest.raises(SystemExit) as exit_info:
        sim.run(["--collector", "http://collector.test", "--customers", "2", "--rate", "100000", "--quiet",
                 "--backfill", "2", "--backfill-customers", "3", "--backfill-rate", "100000", "--max-events", "10",
                 "--loop"], transport=httpx.MockTransport(collector))
    after = datetime.now(timezone.utc)
    assert exit_info.value.code == 0
    sent = [e for _, batch in collector.posts for e in batch]
    history = sum(len(JourneyGenerator(1, before).journey(i)) for i in range(3))
    backfill, live = sent[:history], sent[history:]
    assert len(live) == 10

    def at(event: dict) -> datetime:
        return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    # the backfill: the three customers' journeys, in the last two hours, in time order
    assert all(before - timedelta(hours=2, seconds=1) <= at(e) <= after for e in backfill)
    assert [at(e) for e in backfill] == sorted(at(e) for e in backfill)
    assert {e["id"] for e in backfill} == {e["id"] for i in range(3) for e in JourneyGenerator(1, before).journey(i)}
    # live: other customers (no id repeats, or the platform would drop them), stamped when sent
    assert not {e["id"] for e in live} & {e["id"] for e in backfill}
    assert all(before <= at(e) <= after for e in live)
    assert [at(e) for e in live] == sorted(at(e) for e in live)
    assert "backfilled the last 2 h" in capsys.readouterr().out
