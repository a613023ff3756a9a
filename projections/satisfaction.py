"""Per-customer satisfaction: which touchpoints speak for the customer's mood, and how to read them.

Pure functions shared by the customer-view fold and the indicator facts:

* ``customer_text`` is what the customer wrote (an email, a ticket, a reply, a survey comment);
  agents' words never count towards the customer's sentiment;
* ``inbound_contact`` says whether the customer reached out to us (an inbound call, an email, a
  ticket): the base of the complaint and repeat-contact rates;
* ``repeats`` marks each inbound contact that came within 24 h after another one;
* ``assess`` turns a customer's view into a satisfaction index (0-100) and an at-risk flag with
  its reasons. It reads only the view, i.e. event time: "recent" means recent relative to the
  customer's own latest events, so a replay gives the same answer whenever it runs.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from events.customer_events import CustomerEvent
from projections.sentiment import NEGATIVE

REPEAT_WITHIN = timedelta(hours=24)
INBOUND_KEPT = 100
"""Inbound contacts kept per customer (the most recent): bounded state whatever the history."""
SENTIMENT_KEPT = 5
"""Most recent scored texts kept per customer; the index uses their average."""
REPEAT_AT_RISK = 3
"""This many inbound contacts within 24 h flag the customer (the problem is not being solved)."""


def at_time(stamp: str) -> datetime:
    """The instant of a stored timestamp (``customer_view.ts`` format)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def customer_text(event: CustomerEvent) -> str | None:
    """The text the customer wrote on this touchpoint, if any (opened, when the event is sealed)."""
    data = {**event.data, **event.opened} if event.opened else event.data
    kind = event.type
    if kind == "email.received":
        return " ".join(t for t in (data.get("subject"), data.get("body_text")) if t) or None
    if kind == "ticket.opened":
        return " ".join(t for t in (data.get("subject"), data.get("body_text")) if t) or None
    if kind == "ticket.replied" and data.get("author") == "customer":
        return data.get("body_text") or None
    if kind == "survey.answered":
        return data.get("comment") or None
    return None


def inbound_contact(event: CustomerEvent) -> bool:
    """The customer reached out: an inbound call, an email to us, a new ticket."""
    if event.type == "call.started":
        return event.data.get("direction", "inbound") == "inbound"
    return event.type in ("email.received", "ticket.opened")


def contact_channel(event: CustomerEvent) -> str:
    if event.type.startswith("ticket."):
        return event.data.get("channel") or "ticket"
    if event.type.startswith("survey."):
        return event.data.get("rated_channel") or "survey"
    return event.channel


def repeats(inbound: list[dict[str, Any]], full: bool) -> dict[str, bool]:
    """Per inbound contact (by event key): did it come within 24 h after another one?

    ``inbound`` is sorted by (at, event). When the kept list is ``full`` its oldest entry may have
    lost its predecessor to the bound, so its status is unknown and it is left out."""
    out: dict[str, bool] = {}
    previous: datetime | None = None
    for n, contact in enumerate(inbound):
        at = at_time(contact["at"])
        if not (full and n == 0):
            out[contact["event"]] = previous is not None and at - previous <= REPEAT_WITHIN
        previous = at
    return out


def _component(value: float | None) -> float | None:
    return None if value is None else max(0.0, min(100.0, value))


def assess(view: dict[str, Any]) -> dict[str, Any]:
    """Satisfaction index (0-100, None when nothing is known) and at-risk flag with reasons."""
    sat = view["satisfaction"]
    csat = sat.get("csat")
    nps = sat.get("nps")
    texts = sat.get("sentiment") or []
    mood = sum(t["value"] for t in texts) / len(texts) if texts else None
    components = {
        "csat": _component((csat["value"] - 1) / 4 * 100) if csat else None,
        "nps": _component(nps["value"] * 10.0) if nps else None,
        "sentiment": _component((mood + 1) / 2 * 100) if mood is not None else None,
    }
    reasons: list[dict[str, Any]] = []
    if csat and csat["value"] <= 2:
        reasons.append({"code": "low_csat", "detail": f"last CSAT answer {csat['value']} of 5", "value": csat["value"],
                        "at": csat["at"],
                        "event": csat["event"]})
    if nps and nps["value"] <= 6:
        reasons.append({"code": "detractor", "detail": f"last NPS answer {nps['value']} of 10", "value": nps["value"],
                        "at": nps["at"],
                        "event": nps["event"]})
    if texts and texts[-1]["value"] <= NEGATIVE:
        last = texts[-1]
        reasons.append({"code": "negative_sentiment", "detail": f"last message scored {last['value']:+.2f}",
                        "value": round(last["value"], 2), "at": last["at"], "event": last["event"]})
    inbound = view.get("inbound") or []
    if len(inbound) >= REPEAT_AT_RISK:
        window = inbound[-REPEAT_AT_RISK:]
        first, last_at = at_time(window[0]["at"]), at_time(window[-1]["at"])
        if last_at - first <= REPEAT_WITHIN:
            reasons.append({"code": "repeat_contacts",
                            "detail": f"{REPEAT_AT_RISK} contacts within 24 h", "value": REPEAT_AT_RISK,
                            "at": window[-1]["at"],
                            "event": window[-1]["event"]})
    complaints = sorted((t["at"], tid) for tid, t in view["tickets"].items()
                        if t["status"] == "open" and t.get("kind") == "complaint")
    if complaints:
        reasons.append({"code": "open_complaint", "detail": f"unresolved complaint {complaints[0][1]}",
                        "value": complaints[0][1],
                        "at": complaints[0][0], "event": None})
    known = [v for v in components.values() if v is not None]
    penalty = min(30, 15 * len(complaints)) + (10 if any(r["code"] == "repeat_contacts" for r in reasons) else 0)
    index = None
    if known or penalty:
        index = round(max(0.0, min(100.0, (sum(known) / len(known) if known else 50.0) - penalty)), 1)
    return {"index": index, "at_risk": bool(reasons), "reasons": reasons, "components": components}
