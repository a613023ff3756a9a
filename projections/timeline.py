"""One line of text per touchpoint for the customer's timeline (pure)."""
from __future__ import annotations

from typing import Any, Callable

from events.customer_events import CustomerEvent


def _money(d: dict[str, Any], field: str) -> str:
    return f"{d.get(field, '?')} {d.get('currency', '')}".strip()


def _seconds(value: Any) -> str:
    try:
        s = int(float(value))
    except (TypeError, ValueError):
        return "?"
    return f"{s // 60}m{s % 60:02d}s"


def _attached(d: dict[str, Any]) -> str:
    n = len(d.get("attachments") or ())
    return f" ({n} attachment{'s' if n != 1 else ''})" if n else ""


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "email.received": lambda d: f"Email received: {d.get('subject') or '(no subject)'}" + _attached(d),
    "email.sent": lambda d: f"Email sent: {d.get('subject') or '(no subject)'}" + _attached(d),
    "call.started": lambda d: f"Call started ({d.get('direction', 'inbound')}, queue {d.get('queue') or '-'})",
    "call.answered": lambda d: f"Call answered by {d.get('agent') or 'an agent'} after {_seconds(d.get('wait_seconds'))}",
    "call.ended": lambda d: f"Call ended, talked {_seconds(d.get('talk_seconds'))}"
                            + (f" ({d['disposition']})" if d.get("disposition") else ""),
    "call.abandoned": lambda d: f"Call abandoned after waiting {_seconds(d.get('wait_seconds'))}",
    "web.page_viewed": lambda d: f"Viewed {d.get('title') or d.get('url')}",
    "web.session_started": lambda d: f"Web visit started at {d.get('url')}",
    "web.identified": lambda d: f"Signed in on the web as {d.get('user_id')}",
    "web.tracked": lambda d: f"{d.get('event')} on {d.get('title') or d.get('url')}",
    "order.placed": lambda d: f"Order {d.get('order_id')} placed: {_money(d, 'total')}",
    "order.paid": lambda d: f"Order {d.get('order_id')} paid: {_money(d, 'amount')}",
    "order.refunded": lambda d: f"Order {d.get('order_id')} refunded: {_money(d, 'amount')}",
    "order.shipped": lambda d: f"Order {d.get('order_id')} shipped",
    "order.delivered": lambda d: f"Order {d.get('order_id')} delivered",
    "order.cancelled": lambda d: f"Order {d.get('order_id')} cancelled",
    "order.return_requested": lambda d: f"Order {d.get('order_id')}: return requested",
    "order.returned": lambda d: f"Order {d.get('order_id')} returned",
    "order.installation_scheduled": lambda d: f"Order {d.get('order_id')}: installation scheduled",
    "order.installation_completed": lambda d: f"Order {d.get('order_id')}: installation completed",
    "fax.received": lambda d: "Fax received" + (f", {d['pages']} page(s)" if d.get("pages") else ""),
    "survey.sent": lambda d: f"Survey {d.get('survey_id')} sent",
    "survey.answered": lambda d: "Survey answered: " + ", ".join(
        f"{k.upper()} {d[k]}" for k in ("csat", "nps") if d.get(k) is not None),
    "ticket.opened": lambda d: f"Ticket {d.get('ticket_id')} opened ({d.get('kind', 'service_request')}): {d.get('subject', '')}",
    "ticket.replied": lambda d: f"Ticket {d.get('ticket_id')}: reply from the {d.get('author', 'agent')}",
    "ticket.resolved": lambda d: f"Ticket {d.get('ticket_id')} resolved",
    "ticket.reopened": lambda d: f"Ticket {d.get('ticket_id')} reopened",
    "profile.updated": lambda d: "Profile updated: " + ", ".join(
        k for k in ("name", "company", "address", "language", "birthday", "email", "phone") if d.get(k)),
    "identity.linked": lambda d: f"Identities linked ({d.get('reason', 'explicit link')})",
    "identity.unlinked": lambda d: f"Identities unlinked ({d.get('reason', 'explicit unlink')})",
    "consent.changed": lambda d: f"Consent for {d.get('purpose')} by {d.get('channel')}: "
                                 + ("granted" if d.get("granted") else "withdrawn"),
    "customer.erasure_requested": lambda d: "Erasure requested",
}


def summarize(event: CustomerEvent) -> str:
    """A short English line describing the touchpoint."""
    fn = _SUMMARIES.get(event.type)
    return fn(event.data)[:500] if fn else event.type
