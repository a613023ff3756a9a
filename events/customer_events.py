"""Events on ``crm.customer-events``: resolved touchpoints and identity markers, keyed by customer.

A resolved touchpoint is the touchpoint's CloudEvent plus the extensions ``customerid`` (the
customer it was resolved to), ``identifiers`` (its normalized identifier keys, space separated),
``refused`` (those of them that belong to other customers: a guard refused the link, or the event
is an unlink) and ``identityversion`` (the identity graph's version the resolution is true at).

An identity marker tells projections that ``identifiers`` belong to ``customerid`` as of
``version``: ``customer.merged`` (every identifier of ``source`` moved: ``source`` is an alias now),
``customer.unmerged`` (``source`` was split and these identifiers left it) or
``customer.identified`` (identifiers no event of the batch stated, e.g. one a guard kept apart).
Projections keep, per identifier, the word of the highest version: that converges to the identity
graph's final state whatever order markers and events arrive in.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from events.envelope import Touchpoint, event_key

MERGED = "customer.merged"
UNMERGED = "customer.unmerged"
IDENTIFIED = "customer.identified"
MARKER_TYPES = (MERGED, UNMERGED, IDENTIFIED)
MARKER_SOURCE = "urn:crm:identity"


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


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
    refused: tuple[str, ...] = ()
    version: int = 0
    opened: dict[str, Any] | None = None
    """Sealed text fields opened in memory (``events.pii``) for what must read them (sentiment);
    never stored or published: ``data`` keeps the tokens."""

    @property
    def linked(self) -> tuple[str, ...]:
        """The identifiers that belong to this event's customer."""
        return tuple(k for k in self.identifiers if k not in self.refused)

    @classmethod
    def from_cloudevent(cls, ce: dict[str, Any]) -> "CustomerEvent":
        return cls(
            key=event_key(ce["source"], ce["id"]), id=ce["id"], source=ce["source"], type=ce["type"],
            time=_time(ce["time"]), channel=ce.get("channel", ""), customer_id=ce["customerid"],
            identifiers=tuple(ce.get("identifiers", "").split()), data=ce.get("data") or {},
            refused=tuple(ce.get("refused", "").split()), version=int(ce.get("identityversion", 0)),
        )


@dataclass(frozen=True, slots=True)
class IdentityMarker:
    """``identifiers`` belong to ``customer_id`` as of identity-graph ``version``; says why."""

    type: str                      # customer.merged | customer.unmerged | customer.identified
    customer_id: str               # where the identifiers are now
    identifiers: tuple[str, ...]
    version: int
    source: str | None = None      # merged: the alias; unmerged: the customer that was split
    seq: int = 0                   # the change's number in the identity graph's log (0: identified)
    event_key: str = ""
    event_id: str = ""
    identifier: str = ""
    rule: str = ""
    time: datetime | None = None

    def to_cloudevent(self) -> dict[str, Any]:
        data = {"customer_id": self.customer_id, "identifiers": list(self.identifiers), "version": self.version}
        if self.type != IDENTIFIED:
            data.update(source=self.source, seq=self.seq, event_key=self.event_key, event_id=self.event_id,
                        identifier=self.identifier, rule=self.rule)
        return {
            "specversion": "1.0", "id": f"{self.type}:{self.version}:{self.customer_id}:{self.source or ''}",
            "source": MARKER_SOURCE, "type": self.type, "time": _iso(self.time) if self.time else None,
            "customerid": self.customer_id, "datacontenttype": "application/json", "data": data,
        }

    @classmethod
    def from_cloudevent(cls, ce: dict[str, Any]) -> "IdentityMarker":
        d = ce["data"]
        return cls(ce["type"], d["customer_id"], tuple(d["identifiers"]), int(d["version"]), d.get("source"),
                   int(d.get("seq", 0)), d.get("event_key", ""), d.get("event_id", ""), d.get("identifier", ""),
                   d.get("rule", ""), _time(ce["time"]) if ce.get("time") else None)


def resolved_cloudevent(tp: Touchpoint, customer_id: str, refused: tuple[str, ...] = (), version: int = 0
                        ) -> dict[str, Any]:
    ce = tp.to_cloudevent()
    ce["customerid"] = customer_id
    ce["identifiers"] = " ".join(i.key for i in tp.identifiers)
    if refused:
        ce["refused"] = " ".join(refused)
    ce["identityversion"] = version
    return ce


# -- the declared shapes (JSON Schema), checked against the functions above by the tests ----------

MARKER_DESCRIPTIONS = {
    MERGED: "every identifier of data.source moved to customerid: data.source is an alias now",
    UNMERGED: "data.source was split: these identifiers left it for customerid",
    IDENTIFIED: "these identifiers belong to customerid, though no event of the batch stated it "
                "(e.g. one a guard kept apart)",
}


def resolution_schema() -> dict[str, Any]:
    """JSON Schema of the extension attributes ``resolved_cloudevent`` adds to a touchpoint."""
    return {
        "type": "object",
        "required": ["customerid", "identifiers", "identityversion"],
        "properties": {
            "customerid": {"type": "string", "description": "the customer the touchpoint was resolved to"},
            "identifiers": {"type": "string",
                            "description": "the touchpoint's normalized identifier keys, space separated, "
                                           "e.g. 'email:li.na@163.com phone:+8613912345678'"},
            "refused": {"type": "string", "description": "those identifiers that belong to other customers (a guard "
                                                         "refused the link, or the event is an unlink), space "
                                                         "separated; absent when none"},
            "identityversion": {"type": "integer", "minimum": 0,
                                "description": "the identity graph's version the resolution is true at"},
        },
    }


def marker_schema(marker_type: str) -> dict[str, Any]:
    """JSON Schema of one identity marker's CloudEvent (``IdentityMarker.to_cloudevent``)."""
    data: dict[str, Any] = {
        "customer_id": {"type": "string", "description": "the customer the identifiers belong to now"},
        "identifiers": {"type": "array", "items": {"type": "string"}, "description": "identifier keys"},
        "version": {"type": "integer", "minimum": 0, "description": "the identity graph's version this is true at"},
    }
    if marker_type != IDENTIFIED:
        data.update({
            "source": {"type": "string", "description": "merged: the alias; unmerged: the customer that was split"},
            "seq": {"type": "integer", "minimum": 1, "description": "the change's number in the identity graph's log"},
            "event_key": {"type": "string", "description": "key of the touchpoint that caused the change"},
            "event_id": {"type": "string", "description": "id of the touchpoint that caused the change"},
            "identifier": {"type": "string", "description": "the identifier that linked (or split) the customers"},
            "rule": {"type": "string", "description": "the rule that decided"},
        })
    return {
        "title": marker_type,
        "description": MARKER_DESCRIPTIONS[marker_type],
        "type": "object",
        "additionalProperties": False,
        "required": ["specversion", "id", "source", "type", "time", "customerid", "datacontenttype", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "description": "<type>:<version>:<customer_id>:<source>"},
            "source": {"const": MARKER_SOURCE},
            "type": {"const": marker_type},
            "time": {"type": ["string", "null"], "format": "date-time",
                     "description": "event time of the cause; null when unknown"},
            "customerid": {"type": "string"},
            "datacontenttype": {"const": "application/json"},
            "data": {"type": "object", "additionalProperties": False, "required": list(data), "properties": data},
        },
    }


def decode(value: bytes) -> CustomerEvent | IdentityMarker:
    ce = orjson.loads(value)
    if ce.get("type") in MARKER_TYPES:
        return IdentityMarker.from_cloudevent(ce)
    return CustomerEvent.from_cloudevent(ce)
