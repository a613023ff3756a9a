"""Events on ``crm.customer-events``: resolved touchpoints and identity markers, keyed by customer.

A resolved touchpoint is the touchpoint's CloudEvent plus the extensions ``customerid`` (the
customer it was resolved to) and ``identifiers`` (its normalized identifier keys, space separated).
A ``customer.merged`` marker tells projections that ``alias`` now belongs to ``survivor``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from events.envelope import Touchpoint, event_key

MERGED = "customer.merged"
MARKER_SOURCE = "urn:crm:identity"


@dataclass(frozen=True, slots=True)
class CustomerEvent:
    """A touchpoint resolved to a customer, in the plain form the projections fold."""

    key: str
    id: str
    source: str
    type: str
    time: datetime
    channel: str
    customer_id: str
    identifiers: tuple[str, ...]
    data: dict[str, Any]

    @classmethod
    def from_cloudevent(cls, ce: dict[str, Any]) -> "CustomerEvent":
        time = ce["time"]
        if isinstance(time, str):
            time = datetime.fromisoformat(time.replace("Z", "+00:00"))
        return cls(
            key=event_key(ce["source"], ce["id"]), id=ce["id"], source=ce["source"], type=ce["type"],
            time=time, channel=ce.get("channel", ""), customer_id=ce["customerid"],
            identifiers=tuple(ce.get("identifiers", "").split()), data=ce.get("data") or {},
        )


@dataclass(frozen=True, slots=True)
class CustomerMerged:
    """``alias`` was found to be the same person as ``survivor``; explains which event and rule."""

    survivor: str
    alias: str
    event_key: str
    event_id: str
    identifier: str
    rule: str
    time: datetime
    seq: int
    """Position of the merge in the identity graph's history: later merges win over earlier ones."""

    def to_cloudevent(self) -> dict[str, Any]:
        return {
            "specversion": "1.0", "id": f"merge:{self.seq}",
            "source": MARKER_SOURCE, "type": MERGED, "time": self.time.isoformat().replace("+00:00", "Z"),
            "customerid": self.survivor, "datacontenttype": "application/json",
            "data": {"survivor": self.survivor, "alias": self.alias, "event_key": self.event_key,
                     "event_id": self.event_id, "identifier": self.identifier, "rule": self.rule,
                     "seq": self.seq},
        }

    @classmethod
    def from_cloudevent(cls, ce: dict[str, Any]) -> "CustomerMerged":
        d = ce["data"]
        return cls(d["survivor"], d["alias"], d["event_key"], d["event_id"], d["identifier"], d["rule"],
                   datetime.fromisoformat(ce["time"].replace("Z", "+00:00")), int(d["seq"]))


def resolved_cloudevent(tp: Touchpoint, customer_id: str) -> dict[str, Any]:
    ce = tp.to_cloudevent()
    ce["customerid"] = customer_id
    ce["identifiers"] = " ".join(i.key for i in tp.identifiers)
    return ce


def decode(value: bytes) -> CustomerEvent | CustomerMerged:
    ce = orjson.loads(value)
    if ce.get("type") == MERGED:
        return CustomerMerged.from_cloudevent(ce)
    return CustomerEvent.from_cloudevent(ce)
