"""Identity resolution as a pure function over a snapshot of the identity graph (design §5).

Every customer is a cluster of identifiers. Its id is derived from its *anchor*: the identifier
seen first in event time (ties broken by the identifier key). Because the anchor depends only on
the set of events, the final partition into customers and the surviving ids do not depend on the
arrival order or on which worker saw what. When clusters join, or an out-of-order event reveals an
earlier anchor, the old ids become aliases of the new one (a merge, with the event, identifier
and rule that caused it).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime


def customer_id_for(anchor_key: str) -> str:
    """The deterministic customer id of a cluster anchored at ``anchor_key``."""
    return "c_" + hashlib.blake2b(anchor_key.encode(), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class KnownIdentifier:
    customer_id: str
    first_seen: datetime


@dataclass(frozen=True, slots=True)
class Anchor:
    time: datetime
    key: str

    def sort_key(self) -> tuple[datetime, str]:
        return (self.time, self.key)


@dataclass(frozen=True, slots=True)
class IdentityInput:
    """What the resolver needs of one touchpoint."""

    event_key: str
    event_id: str
    type: str
    time: datetime
    identifiers: tuple[str, ...]  # normalized keys, primary first


@dataclass(frozen=True, slots=True)
class Merge:
    alias: str
    survivor: str
    event_key: str
    event_id: str
    identifier: str
    rule: str
    time: datetime


@dataclass
class Snapshot:
    """The part of the identity graph a batch touches: its identifiers and their customers' anchors."""

    identifiers: dict[str, KnownIdentifier] = field(default_factory=dict)
    anchors: dict[str, Anchor] = field(default_factory=dict)


@dataclass
class Resolution:
    assignments: dict[str, str]                  # event_key -> customer_id
    identifiers: dict[str, KnownIdentifier]      # batch identifiers, new or changed
    anchors: dict[str, Anchor]                   # customers created or re-anchored
    merges: list[Merge]                          # old customer ids that became aliases


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def resolve(snapshot: Snapshot, events: list[IdentityInput]) -> Resolution:
    """Resolve a batch of touchpoints against the snapshot; pure and deterministic.

    The snapshot must hold every batch identifier already known, and the anchor of every customer
    they belong to.
    """
    uf = _UnionFind()
    first_seen: dict[str, datetime] = {}
    old_customer: dict[str, str] = {}
    for key in {k for e in events for k in e.identifiers}:
        known = snapshot.identifiers.get(key)
        if known is not None:
            old_customer[key] = known.customer_id
            first_seen[key] = known.first_seen
            uf.union("i:" + key, "c:" + known.customer_id)

    # Event-time order, so that each merge is explained by the earliest event that caused it.
    ordered = sorted(events, key=lambda e: (e.time, e.event_key))
    for ev in ordered:
        for key in ev.identifiers:
            seen = first_seen.get(key)
            if seen is None or ev.time < seen:
                first_seen[key] = ev.time
        head = ev.identifiers[0]
        uf.find("i:" + head)
        for key in ev.identifiers[1:]:
            uf.union("i:" + head, "i:" + key)

    # Group batch identifiers and old customers into components.
    components: dict[str, tuple[set[str], set[str]]] = {}
    for key in first_seen:
        comp = components.setdefault(uf.find("i:" + key), (set(), set()))
        comp[0].add(key)
        if key in old_customer:
            comp[1].add(old_customer[key])

    assignments: dict[str, str] = {}
    new_identifiers: dict[str, KnownIdentifier] = {}
    anchors: dict[str, Anchor] = {}
    merges: list[Merge] = []
    root_customer: dict[str, str] = {}
    for root, (keys, customers) in components.items():
        candidates = [snapshot.anchors[c] for c in customers if c in snapshot.anchors]
        candidates += [Anchor(first_seen[k], k) for k in keys]
        anchor = min(candidates, key=Anchor.sort_key)
        cid = customer_id_for(anchor.key)
        root_customer[root] = cid
        if snapshot.anchors.get(cid) != anchor:
            anchors[cid] = anchor
        for key in keys:
            known = snapshot.identifiers.get(key)
            if known is None or known.customer_id != cid or known.first_seen != first_seen[key]:
                new_identifiers[key] = KnownIdentifier(cid, first_seen[key])
        for old in sorted(customers - {cid}):
            merges.append(_explain(old, cid, keys, old_customer, ordered, anchor))
    for ev in events:
        assignments[ev.event_key] = root_customer[uf.find("i:" + ev.identifiers[0])]
    return Resolution(assignments, new_identifiers, anchors, merges)


def _explain(alias: str, survivor: str, keys: set[str], old_customer: dict[str, str],
             ordered: list[IdentityInput], anchor: Anchor) -> Merge:
    """Name the earliest event that tied an identifier of ``alias`` to the rest of the cluster."""
    alias_keys = {k for k in keys if old_customer.get(k) == alias}
    for ev in ordered:
        ids = set(ev.identifiers)
        if ids & alias_keys and ids - alias_keys and set(ev.identifiers) <= keys:
            ident = sorted(ids & alias_keys)[0]
            rule = "explicit identity.linked" if ev.type == "identity.linked" else "identifiers shared on one event"
            return Merge(alias, survivor, ev.event_key, ev.event_id, ident, rule, ev.time)
    # No event spans both sides: the cluster's anchor moved to an earlier-seen identifier.
    ev = next((e for e in ordered if anchor.key in e.identifiers), ordered[0])
    return Merge(alias, survivor, ev.event_key, ev.event_id, anchor.key,
                 "earlier first contact re-anchors the customer", ev.time)
