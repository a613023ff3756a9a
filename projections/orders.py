"""The order chain: each order's state and status history, folded from its ``order.*`` events.

Pure and order-independent: the state keeps one history entry per event (keyed by the event key,
so an event applied twice counts once), and everything else (the current status, the totals, the
shipment, the late-delivery flag) is derived from that history sorted by event time. Any arrival
order of the same events gives the same state.

Free-text reasons (cancellation, return, refund) are personal data (``events.pii``): the read
model never holds them; the customer's timeline keeps them sealed.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

from events.customer_events import CustomerEvent
from projections.customer_view import ts

Order = dict[str, Any]

STATUSES = ("placed", "paid", "shipped", "delivered", "installation_scheduled", "installation_completed",
            "return_requested", "returned", "cancelled", "refunded")
"""Every order status, in lifecycle order (which breaks ties between events of the same instant)."""
_RANK = {s: i for i, s in enumerate(STATUSES)}
TYPES = frozenset(f"order.{s}" for s in STATUSES)

_DETAILS = ("carrier", "tracking_number", "amount", "total", "method", "promised_at", "scheduled_for")
"""Fields of an event kept in its history entry (never free text, never identifiers)."""


def is_order_event(event: CustomerEvent) -> bool:
    return event.type in TYPES and bool(event.data.get("order_id"))


def empty(order_id: str) -> Order:
    return {"order_id": order_id, "history": []}


def _entry(event: CustomerEvent) -> dict[str, Any]:
    entry = {"status": event.type.removeprefix("order."), "at": ts(event.time), "event": event.key}
    for name in _DETAILS:
        value = event.data.get(name)
        if value not in (None, ""):
            entry[name] = str(value)
    if event.data.get("currency"):
        entry["currency"] = event.data["currency"]
    return entry


def _sorted(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(history, key=lambda e: (e["at"], _RANK.get(e["status"], 99), e["event"]))


def _sum(entries: list[dict[str, Any]], field: str) -> str | None:
    total, seen = Decimal(0), False
    for e in entries:
        try:
            total += Decimal(e[field])
            seen = True
        except (KeyError, InvalidOperation):
            continue
    return format(total, "f") if seen else None


def _utc(moment: str | None) -> str | None:
    """An RFC 3339 time from an event's data in the fixed form of ``ts`` (so times compare as text)."""
    if not moment:
        return None
    try:
        return ts(datetime.fromisoformat(moment.replace("Z", "+00:00")))
    except ValueError:
        return None


def derive(order_id: str, history: list[dict[str, Any]]) -> Order:
    """The order as its (deduplicated) history says."""
    history = _sorted({e["event"]: e for e in history}.values())
    by = {s: [e for e in history if e["status"] == s] for s in STATUSES}
    last = history[-1] if history else None
    currency = next((e["currency"] for e in history if e["status"] == "placed" and "currency" in e),
                    next((e["currency"] for e in history if "currency" in e), None))
    latest_ship = next((e for e in reversed(by["shipped"] + by["delivered"]) if "tracking_number" in e
                        or "carrier" in e), None)
    promised = [e for e in _sorted(by["shipped"] + by["delivered"]) if "promised_at" in e]
    promised_at = _utc(promised[-1]["promised_at"]) if promised else None
    delivered_at = by["delivered"][0]["at"] if by["delivered"] else None
    scheduled = next((e for e in reversed(by["installation_scheduled"]) if "scheduled_for" in e), None)
    return {
        "order_id": order_id,
        "status": last["status"] if last else None,
        "currency": currency,
        "total": by["placed"][0].get("total") if by["placed"] else None,
        "placed_at": by["placed"][0]["at"] if by["placed"] else None,
        "updated_at": last["at"] if last else None,
        "paid": _sum(by["paid"], "amount"),
        "refunded": _sum(by["refunded"], "amount"),
        "carrier": latest_ship.get("carrier") if latest_ship else None,
        "tracking_number": latest_ship.get("tracking_number") if latest_ship else None,
        "shipped_at": by["shipped"][0]["at"] if by["shipped"] else None,
        "promised_at": promised_at,
        "delivered_at": delivered_at,
        "late": (delivered_at > promised_at) if delivered_at and promised_at else None,
        "installation": {
            "scheduled_for": _utc(scheduled["scheduled_for"]) if scheduled else None,
            "completed_at": by["installation_completed"][0]["at"] if by["installation_completed"] else None,
        } if by["installation_scheduled"] or by["installation_completed"] else None,
        "cancelled_at": by["cancelled"][0]["at"] if by["cancelled"] else None,
        "returned_at": by["returned"][0]["at"] if by["returned"] else None,
        "history": history,
    }


def apply(order: Order, event: CustomerEvent) -> Order:
    """The order with one more event (an event already in its history changes nothing)."""
    return apply_all(order, [event])


def apply_all(order: Order, events: Iterable[CustomerEvent]) -> Order:
    history = list(order.get("history", ()))
    keys = {e["event"] for e in history}
    for event in events:
        if event.key not in keys and is_order_event(event):
            history.append(_entry(event))
            keys.add(event.key)
    return derive(order["order_id"], history)


def fold(events: Iterable[CustomerEvent]) -> dict[str, Order]:
    """Every order the events speak of, folded from nothing."""
    by_order: dict[str, list[CustomerEvent]] = {}
    for event in events:
        if is_order_event(event):
            by_order.setdefault(str(event.data["order_id"]), []).append(event)
    return {oid: apply_all(empty(oid), evs) for oid, evs in by_order.items()}
