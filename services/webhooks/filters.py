"""Which subscriptions a change goes to (pure: no I/O)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from projections.customer_state import NO_CONSENT_NEEDED, Rules, consented

SEGMENT_CHANGES = ("segment.entered", "segment.exited")
ANY_PURPOSE = frozenset({"customer.erased"})
"""Changes every purpose gets: they carry no snapshot and tell a recipient to delete what it holds."""


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscription's filters: ``None`` lets everything through."""

    event_types: frozenset[str] | None = None
    segments: frozenset[str] | None = None
    purpose: str = NO_CONSENT_NEEDED


Gates = Mapping[str, tuple[str, str]]
"""Segments declared for a purpose that needs consent: name -> (purpose, channel), from the rules."""


def gates(rules: Rules) -> dict[str, tuple[str, str]]:
    return {s.name: (s.purpose, s.channel) for s in rules.segments if s.purpose != NO_CONSENT_NEEDED}


def consents(flt: Filter, change_type: str, data: dict[str, Any]) -> bool:
    """Whether the customer's snapshot after the change (``data.state``) consents to the
    subscription's purpose on at least one channel (always true for ``service``). A change without
    a snapshot (``customer.merged``) goes to ``service`` subscriptions only, but for the ones in
    ``ANY_PURPOSE``."""
    if flt.purpose == NO_CONSENT_NEEDED or change_type in ANY_PURPOSE:
        return True
    state = data.get("state")
    if not isinstance(state, dict):
        return False
    return consented((state.get("profile") or {}).get("consent") or {}, flt.purpose, None)


def matches(flt: Filter, change_type: str, data: dict[str, Any], gated: Gates | None = None) -> bool:
    """Whether a change (its type and ``data``) passes a subscription's filters.

    The purpose: a subscription for a purpose that needs consent (``marketing``, ...) gets only the
    changes whose snapshot consents to it (``consents``). The type filter names the change types
    wanted. The segment filter lets a change through when the customer's snapshot after it
    (``data.state.segments``) is in one of the segments, or when the change is the customer
    entering or leaving one of them; through a segment that needs consent (``gated``) only while
    the snapshot consents to it, so a withdrawal (or a snapshot written before the rules asked for
    consent) sends nothing. A ``customer.merged`` change has no snapshot, so it passes only
    subscriptions without a segment filter.
    """
    if flt.event_types is not None and change_type not in flt.event_types:
        return False
    if not consents(flt, change_type, data):
        return False
    if flt.segments is None:
        return True
    state = data.get("state") or {}
    consent = (state.get("profile") or {}).get("consent") or {}

    def through(segment: Any) -> bool:
        if segment not in flt.segments:
            return False
        gate = (gated or {}).get(segment)
        return gate is None or consented(consent, *gate)

    if change_type in SEGMENT_CHANGES and through(data.get("segment")):
        return True
    return any(through(s) for s in state.get("segments") or ())
