"""Reading events back from ``customer_timeline``, the view's per-event table (shared by the view
stage, which re-folds customers from it, and the query API, which answers ``as_of`` from it)."""
from __future__ import annotations

from events.customer_events import CustomerEvent

EVENT_COLUMNS = "event_key, event_id, source, type, event_time, channel, customer_id, identifiers, data, refused"
"""Select these columns, in this order, for ``to_event``."""


def to_event(row: tuple) -> CustomerEvent:
    """The customer event a timeline row (selected with ``EVENT_COLUMNS``) was made from."""
    key, event_id, source, type_, time, channel, owner, identifiers, data, refused = row
    return CustomerEvent(key, event_id, source, type_, time, channel, owner, tuple(identifiers), data,
                         tuple(refused))
