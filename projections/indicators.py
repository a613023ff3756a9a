"""Real-time satisfaction indicators (README: Satisfaction indicators) as pure folds: touchpoints -> facts -> sums -> values.

Three kinds of state produce *facts*; a fact is a set of additive measures placed at an event-time
instant and tagged with its dimensions (channel, queue, agent, customer segment):

* ``event_facts``: what one touchpoint says on its own (a survey answer, an answered or abandoned
  call, a handled call, a complaint, an inbound contact, the sentiment of what the customer wrote);
* ``thread_facts``: what a whole conversation says (an email thread or a ticket): the first
  response time and the resolution time, in wall-clock seconds and in business hours. The thread
  state is every message of it, sorted, so the answer does not depend on arrival order;
* ``repeat_facts``: which of a customer's inbound contacts came within 24 h after another one.

Facts of threads and customers are recomputed whenever their state changes, and only the
difference is applied to the sums, so a late message that changes a first response time moves it
rather than counting it twice. Sums are kept per minute and per dimension value; an indicator's
value is a ratio of sums (``Indicator``), so windows and breakdowns are sums of minutes.

Definitions, the contract of the README's Satisfaction indicators:

* CSAT % = answers of 4 or 5 on 1-5 / all CSAT answers x 100; response rate = survey answers /
  surveys sent x 100. The agent, queue and channel rated are the ones on the survey event (captured
  at survey time), not whoever handles the customer now.
* NPS = % promoters (9-10) - % detractors (0-6) of NPS answers, -100..+100.
* First response time: the customer's first message on a thread (email received, ticket opened,
  or a customer reply) -> the first agent reply after it; placed at the reply, tagged with the
  replying agent.
* Resolution time (tickets): the sum of the periods the ticket was open, opened -> resolved, plus
  reopened -> resolved again for each reopen (a ``ticket.reopened`` or a customer reply to a resolved
  ticket), so time spent before a reopen is never lost and time spent resolved is never counted.
  A reopened ticket withdraws its resolution until it is resolved again; placed at the final
  resolution, tagged with the resolving agent.
* Calls (inbound): average wait = wait of answered calls / answered calls (the speed of answer);
  abandonment rate = abandoned / offered; service level = answered within 20 s / offered; offered
  = answered + abandoned; average handle time = (talk + hold + after-call work) / handled calls.
* Complaint rate = complaints (tickets opened as complaints) / inbound contacts x 100; repeat-
  contact rate = inbound contacts within 24 h after the same customer's previous inbound contact /
  inbound contacts x 100. Inbound contacts: inbound calls, emails received, tickets opened.
* Sentiment = mean score (-1..+1) of customer-written texts; negative share = texts scored
  negative / texts x 100.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

from events.customer_events import CustomerEvent
from projections import satisfaction, sentiment
from projections.business_hours import Calendar
from projections.customer_view import ts

MEASURES = (
    "surveys_sent", "survey_answers", "csat_answers", "csat_satisfied", "nps_answers", "nps_promoters",
    "nps_detractors", "first_responses", "first_response_s", "first_response_bh_s", "resolutions",
    "resolution_s", "resolution_bh_s", "calls_offered", "calls_answered", "calls_abandoned", "answer_wait_s",
    "answered_in_sl", "calls_handled", "handle_s", "contacts", "repeat_contacts", "complaints",
    "sentiment_texts", "sentiment_sum", "sentiment_negative",
)
"""Additive measures: the columns of the per-minute sums."""

DIMENSIONS = ("channel", "queue", "agent", "segment")
ALL = ("all", "")
"""The slice of everything: dimension ``all``, member ``""``."""

SERVICE_LEVEL_S = 20.0
THREAD_MESSAGES_KEPT = 500


@dataclass(frozen=True)
class Indicator:
    name: str
    numerator: tuple[str, ...]    # summed; a second entry is subtracted (NPS)
    denominator: str
    scale: float
    unit: str
    better: str                   # "higher" | "lower"
    en: str
    zh: str

    @property
    def measures(self) -> frozenset[str]:
        return frozenset(self.numerator + (self.denominator,))

    def value(self, sums: dict[str, float]) -> float | None:
        base = sums.get(self.denominator, 0.0)
        if base <= 0:
            return None
        top = sums.get(self.numerator[0], 0.0) - sum(sums.get(m, 0.0) for m in self.numerator[1:])
        return round(top / base * self.scale, 4)


INDICATORS: dict[str, Indicator] = {i.name: i for i in (
    Indicator("csat", ("csat_satisfied",), "csat_answers", 100, "%", "higher", "CSAT", "客户满意度"),
    Indicator("survey_response_rate", ("survey_answers",), "surveys_sent", 100, "%", "higher",
              "Survey response rate", "问卷回复率"),
    Indicator("nps", ("nps_promoters", "nps_detractors"), "nps_answers", 100, "score", "higher",
              "Net Promoter Score", "净推荐值"),
    Indicator("first_response_time", ("first_response_s",), "first_responses", 1, "s", "lower",
              "First response time", "首次响应时间"),
    Indicator("first_response_time_business", ("first_response_bh_s",), "first_responses", 1, "s", "lower",
              "First response time (business hours)", "首次响应时间（工作时间）"),
    Indicator("resolution_time", ("resolution_s",), "resolutions", 1, "s", "lower", "Resolution time", "解决时长"),
    Indicator("resolution_time_business", ("resolution_bh_s",), "resolutions", 1, "s", "lower",
              "Resolution time (business hours)", "解决时长（工作时间）"),
    Indicator("average_wait", ("answer_wait_s",), "calls_answered", 1, "s", "lower", "Average wait", "平均等待时长"),
    Indicator("abandonment_rate", ("calls_abandoned",), "calls_offered", 100, "%", "lower",
              "Abandonment rate", "放弃率"),
    Indicator("service_level", ("answered_in_sl",), "calls_offered", 100, "%", "higher",
              "Service level (answered within 20 s)", "服务水平（20秒内接听）"),
    Indicator("average_handle_time", ("handle_s",), "calls_handled", 1, "s", "lower",
              "Average handle time", "平均处理时长"),
    Indicator("complaint_rate", ("complaints",), "contacts", 100, "%", "lower", "Complaint rate", "投诉率"),
    Indicator("repeat_contact_rate", ("repeat_contacts",), "contacts", 100, "%", "lower",
              "Repeat contacts within 24 h", "24小时重复联络率"),
    Indicator("sentiment", ("sentiment_sum",), "sentiment_texts", 1, "score", "higher", "Sentiment", "情感倾向"),
    Indicator("negative_sentiment_rate", ("sentiment_negative",), "sentiment_texts", 100, "%", "lower",
              "Negative sentiment share", "负面情绪占比"),
)}

WINDOWS: dict[str, timedelta] = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1),
                                 "24h": timedelta(hours=24), "7d": timedelta(days=7),
                                 "30d": timedelta(days=30)}  # operations review by month


@dataclass(frozen=True)
class Fact:
    """Additive ``measures`` at ``at`` (event time), tagged with ``dims``."""

    at: datetime
    dims: tuple[tuple[str, str], ...]
    measures: tuple[tuple[str, float], ...]

    def slices(self) -> list[tuple[str, str]]:
        """Every slice the fact counts in: all, and each of its dimension values."""
        return [ALL] + [(d, v) for d, v in self.dims if v]


def fact(at: datetime, dims: dict[str, Any], **measures: float) -> Fact:
    return Fact(at, tuple((d, str(dims[d])) for d in DIMENSIONS if dims.get(d)),
                tuple(sorted((m, float(v)) for m, v in measures.items() if v)))


# --- facts of one touchpoint ---------------------------------------------------------------------

def event_facts(event: CustomerEvent, segment: str) -> list[Fact]:
    """What the touchpoint says on its own. ``segment`` is the customer's segment at the time."""
    data, kind = event.data, event.type
    dims = {"channel": satisfaction.contact_channel(event), "queue": data.get("queue"),
            "agent": data.get("agent"), "segment": segment}
    facts: list[Fact] = []
    inbound = data.get("direction", "inbound") == "inbound"
    if kind == "survey.sent":
        facts.append(fact(event.time, dims, surveys_sent=1))
    elif kind == "survey.answered":
        csat, nps = data.get("csat"), data.get("nps")
        facts.append(fact(event.time, dims, survey_answers=1,
                          csat_answers=csat is not None, csat_satisfied=csat is not None and csat >= 4,
                          nps_answers=nps is not None, nps_promoters=nps is not None and nps >= 9,
                          nps_detractors=nps is not None and nps <= 6))
    elif kind == "call.answered" and inbound:
        wait = float(data.get("wait_seconds") or 0)
        facts.append(fact(event.time, dims, calls_offered=1, calls_answered=1, answer_wait_s=wait,
                          answered_in_sl=wait <= SERVICE_LEVEL_S))
    elif kind == "call.abandoned" and inbound:
        facts.append(fact(event.time, dims, calls_offered=1, calls_abandoned=1))
    elif kind == "call.ended" and data.get("talk_seconds") is not None:
        handle = sum(float(data.get(f) or 0) for f in ("talk_seconds", "hold_seconds", "wrap_seconds"))
        facts.append(fact(event.time, dims, calls_handled=1, handle_s=handle))
    if satisfaction.inbound_contact(event):
        facts.append(fact(event.time, dims, contacts=1,
                          complaints=kind == "ticket.opened" and data.get("kind") == "complaint"))
    text = satisfaction.customer_text(event)
    score = sentiment.score(text) if text else None
    if score is not None:
        facts.append(fact(event.time, dims, sentiment_texts=1, sentiment_sum=score,
                          sentiment_negative=score <= sentiment.NEGATIVE))
    return facts


# --- threads: email conversations and tickets ----------------------------------------------------

def thread_key(event: CustomerEvent) -> str | None:
    """The conversation a touchpoint belongs to, or None."""
    data = event.data
    if event.type.startswith("ticket."):
        return f"ticket:{data.get('ticket_id')}"
    if event.type in ("email.received", "email.sent"):
        refs = data.get("references") or []
        root = data.get("thread_id") or (refs[0] if refs else None) or data.get("in_reply_to") or data.get("message_id")
        return f"email:{root}"
    return None


def _role(event: CustomerEvent) -> str:
    kind, data = event.type, event.data
    if kind in ("email.received", "ticket.opened"):
        return "customer"
    if kind == "ticket.replied":
        return "customer" if data.get("author") == "customer" else "agent"
    if kind == "email.sent":
        return "agent"
    return {"ticket.resolved": "resolved", "ticket.reopened": "reopened"}[kind]


def thread_apply(state: dict[str, Any] | None, event: CustomerEvent, segment: str) -> dict[str, Any]:
    """The thread with this message in it (a copy). Messages are kept sorted and deduplicated, so
    the state is the same whatever order they came in."""
    data = event.data
    entry = {"at": ts(event.time), "event": event.key, "role": _role(event), "opened": event.type == "ticket.opened",
             "channel": satisfaction.contact_channel(event), "queue": data.get("queue"), "agent": data.get("agent"),
             "segment": segment}
    messages = {m["event"]: m for m in (state or {}).get("messages", [])}
    messages.setdefault(event.key, entry)
    ordered = sorted(messages.values(), key=lambda m: (m["at"], m["event"]))[:THREAD_MESSAGES_KEPT]
    return {"kind": "ticket" if event.type.startswith("ticket.") else "email", "messages": ordered}


def _dims(message: dict[str, Any], queue: str | None) -> dict[str, Any]:
    return {"channel": message["channel"], "queue": message.get("queue") or queue, "agent": message.get("agent"),
            "segment": message.get("segment")}


def thread_facts(state: dict[str, Any], calendar: Calendar) -> dict[str, Fact]:
    """The facts a conversation contributes now, by name (``frt``, ``resolution``)."""
    messages = state["messages"]
    queue = next((m["queue"] for m in messages if m.get("queue")), None)
    out: dict[str, Fact] = {}
    first = next((m for m in messages if m["role"] == "customer"), None)
    if first is not None:
        reply = next((m for m in messages if m["role"] == "agent" and m["at"] >= first["at"]), None)
        if reply is not None:
            start, end = satisfaction.at_time(first["at"]), satisfaction.at_time(reply["at"])
            out["frt"] = fact(end, _dims(reply, queue), first_responses=1, first_response_s=(end - start).total_seconds(),
                              first_response_bh_s=calendar.seconds(start, end))
    opened = next((m for m in messages if m["opened"]), None)
    if state["kind"] == "ticket" and opened is not None:  # a ticket never seen opened has no known duration
        open_since: datetime | None = satisfaction.at_time(opened["at"])
        periods: list[tuple[datetime, datetime]] = []
        resolved_by = None
        for m in messages:
            at = satisfaction.at_time(m["at"])
            if at < satisfaction.at_time(opened["at"]):
                continue
            if m["role"] == "resolved" and open_since is not None:
                periods.append((open_since, at))
                open_since, resolved_by = None, m
            elif m["role"] in ("reopened", "customer") and open_since is None:
                open_since, resolved_by = at, None
        if resolved_by is not None:
            out["resolution"] = fact(satisfaction.at_time(resolved_by["at"]), _dims(resolved_by, queue), resolutions=1,
                                     resolution_s=sum((b - a).total_seconds() for a, b in periods),
                                     resolution_bh_s=sum(calendar.seconds(a, b) for a, b in periods))
    return out


# --- a customer's repeat contacts ----------------------------------------------------------------

def repeat_facts(view: dict[str, Any], segment_of) -> dict[str, Fact]:
    """Per inbound contact that came within 24 h after another: a ``repeat_contacts`` fact.
    ``segment_of(at)`` gives the customer's segment at a moment."""
    inbound = view.get("inbound") or []
    statuses = satisfaction.repeats(inbound, full=len(inbound) >= satisfaction.INBOUND_KEPT)
    out = {}
    for contact in inbound:
        if statuses.get(contact["event"]):
            at = satisfaction.at_time(contact["at"])
            out[contact["event"]] = fact(at, {**contact, "segment": segment_of(at)}, repeat_contacts=1)
    return out


def known_repeats(view: dict[str, Any]) -> set[str]:
    """The inbound contacts whose repeat status the view can tell (all but a full list's oldest)."""
    inbound = view.get("inbound") or []
    return set(satisfaction.repeats(inbound, full=len(inbound) >= satisfaction.INBOUND_KEPT))


# --- sums ----------------------------------------------------------------------------------------

Key = tuple[datetime, bool, str, str]
"""(minute, late, dimension, member) of one row of sums."""


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def add(sums: dict[Key, dict[str, float]], facts: Iterable[Fact], sign: int = 1, *, late: bool = False) -> None:
    """Add (or with ``sign`` -1 take away) facts into per-minute, per-slice sums."""
    for f in facts:
        minute = minute_of(f.at)
        for dim, member in f.slices():
            row = sums.setdefault((minute, late, dim, member), {})
            for m, v in f.measures:
                row[m] = row.get(m, 0.0) + sign * v


def diff(before: dict[str, Fact], after: dict[str, Fact], sums: dict[Key, dict[str, float]],
         keep: set[str] | None = None) -> None:
    """Apply the change from ``before`` to ``after`` facts (by name). Names in neither ``after`` nor
    ``keep`` are withdrawn; with ``keep`` given, names outside it are left as they were."""
    for name in set(before) | set(after):
        if keep is not None and name not in keep:
            continue
        old, new = before.get(name), after.get(name)
        if old != new:
            if old is not None:
                add(sums, [old], -1)
            if new is not None:
                add(sums, [new], +1)


def values(sums: dict[str, float], names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Indicator values from a slice's summed measures: value, numerator and denominator."""
    out = {}
    for name in names or INDICATORS:
        ind = INDICATORS[name]
        out[name] = {"value": ind.value(sums), "count": sums.get(ind.denominator, 0.0), "unit": ind.unit}
    return out
