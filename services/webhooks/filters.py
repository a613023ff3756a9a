"""Which subscriptions a change goes to (pure: no I/O)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SEGMENT_CHANGES = ("segment.entered", "segment.exited")


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscription's filters: ``None`` lets everything through."""

    event_types: frozenset[str] | None = None
    segments: frozenset[str] | None = None


def matches(flt: Filter, change_type: str, data: dict[str, Any]) -> bool:
    """Whether a change (its type and ``data``) passes a subscription's filters.

    The type filter names the change types wanted. The segment filter lets a change through when
    the customer's snapshot after it (``data.state.segments``) is in one of the segments, or when
    the change is the customer entering or leaving one of them. A ``customer.merged`` change has
    no snapshot, so it passes only subscriptions without a segment filter.
    """
    if flt.event_types is not None and change_type not in flt.event_types:
        return False
    if flt.segments is None:
        return True
    if change_type in SEGMENT_CHANGES and data.get("segment") in flt.segments:
        return True
    state = data.get("state") or {}
    return not flt.segments.isdisjoint(state.get("segments") or ())
