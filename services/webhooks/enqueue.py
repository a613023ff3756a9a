"""The enqueue stage: turns each change on ``crm.customer-changes`` into one delivery per enabled
subscription whose filters it passes.

It runs under the processors' ``BatchRunner``, so the deliveries of a batch and the positions it
consumed are committed in one PostgreSQL transaction: a record is enqueued exactly once whatever
crashes and redeliveries happen (and ``UNIQUE (subscription_id, event_id)`` makes a change
published twice one delivery, too). A subscription takes the changes whose Kafka record was
written from the moment it was created (or enabled again) on, so reading the log again enqueues
the same deliveries.

Consent: a subscription for a purpose that needs consent (``marketing``, ...) gets no change
whose snapshot does not consent to it, and a segment declared for such a purpose in the rules
(``gated``) lets a change through a segment filter only while the snapshot consents to it. Such a
change also cancels what is still pending for the customer at that subscription.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from events.feed import CHANGE_TYPES
from services.common.topics import CUSTOMER_CHANGES
from services.processors.records import Output, Record, deadletter
from services.webhooks import store
from services.webhooks.filters import Gates, consents, matches


class InvalidChange(ValueError):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Change:
    id: str
    type: str
    customer_id: str
    sequence: int | None
    data: dict[str, Any]


def decode(value: bytes | None) -> Change:
    """A change event from a record value; raises ``InvalidChange`` (with the dead-letter kind)."""
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidChange("undecodable", f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidChange("undecodable", "not a JSON object")
    change_id, change_type = event.get("id"), event.get("type")
    customer_id = event.get("customerid") or event.get("subject")
    data, sequence = event.get("data"), event.get("sequence")
    if not isinstance(change_id, str) or not change_id:
        raise InvalidChange("schema_violation", "no id")
    if not isinstance(change_type, str):
        raise InvalidChange("schema_violation", "no type")
    if change_type not in CHANGE_TYPES:
        raise InvalidChange("unknown_type", f"unknown change type {change_type!r}")
    if not isinstance(customer_id, str) or not customer_id:
        raise InvalidChange("schema_violation", "no customerid")
    if not isinstance(data, dict):
        raise InvalidChange("schema_violation", "data is not an object")
    if sequence is not None and (not isinstance(sequence, int) or isinstance(sequence, bool)):
        raise InvalidChange("schema_violation", "sequence is not an integer")
    return Change(change_id, change_type, customer_id, sequence, data)


def _consent_changed(change: Change) -> bool:
    """A change saying the customer's consent changed (a withdrawal comes with one)."""
    changed = change.data.get("changed")
    return (change.type == "profile.changed" and isinstance(changed, dict)
            and isinstance(change.data.get("state"), dict) and any(str(k).startswith("consent:") for k in changed))


class EnqueueStage:
    """A ``BatchRunner`` stage (``name``, ``topic``, ``prepare``)."""

    name = "webhooks"
    topic = CUSTOMER_CHANGES

    def __init__(self, gated: Gates | None = None):
        self.gated = dict(gated or {})  # segments that need consent (the customer-state rules)

    def prepare(self, cur, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        subscribers = store.targets(cur)
        events: dict[str, tuple] = {}
        deliveries: dict[tuple[str, str], None] = {}  # in order, once each
        withheld: dict[tuple[str, str], tuple] = {}  # (subscription, customer) -> the latest refusal
        for record in records:
            try:
                change = decode(record.value)
            except InvalidChange as exc:
                outputs.append(deadletter(record, stage=self.name, kind=exc.kind, reason=str(exc)))
                continue
            published_ms = record.timestamp_ms or 0
            active = [t for t in subscribers if published_ms >= t.active_since_ms]
            wanted = [t.id for t in active if matches(t.filter, change.type, change.data, self.gated)]
            if wanted:
                events.setdefault(change.id, (change.id, change.type, change.customer_id, change.sequence,
                                              record.value, published_ms))
                deliveries.update(((sid, change.id), None) for sid in wanted)
            if _consent_changed(change):
                for t in active:
                    if not consents(t.filter, change.type, change.data):
                        withheld[(t.id, change.customer_id)] = (t.id, change.customer_id, change.sequence,
                                                                t.filter.purpose)
        store.enqueue(cur, list(events.values()), list(deliveries))
        store.withhold(cur, list(withheld.values()))  # after enqueue: this batch's older ones too
        return outputs
