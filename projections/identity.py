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


# --- resolution from the evidence, with guards against over-merging ------------------------------

PRIORITY: tuple[str, ...] = ("account_id", "email", "phone", "anonymous_id")
"""Identifier kinds, strongest first: when a link must be refused, the event stays with the
customer of its strongest identifier."""

DEFAULT_LIMITS: dict[str, int] = {"account_id": 1, "email": 5, "phone": 5, "anonymous_id": 100}
"""At most this many identifiers of a kind on one customer: a family phone or a shared computer
must not fuse strangers (two accounts never merge; a sixth email is somebody else)."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one touchpoint says about identity: these identifiers are (or, unlinking, are not) one person."""

    event_key: str
    event_id: str
    type: str
    time: datetime
    identifiers: tuple[str, ...]
    unlink: bool = False


@dataclass(frozen=True, slots=True)
class Link:
    """A union the resolver made, or refused, and why."""

    event_key: str
    event_id: str
    time: datetime
    identifier: str       # the identifier that joined (or would have joined) the event's customer
    rule: str
    accepted: bool


@dataclass
class Partition:
    """Customers as sets of identifiers, each event's customer, and the links made or refused."""

    customer_of: dict[str, str]             # identifier key -> customer id
    event_customer: dict[str, str]          # event key -> customer id
    anchors: dict[str, Anchor]              # customer id -> its anchor
    first_seen: dict[str, datetime]         # identifier key -> earliest evidence time
    links: list[Link]


def _kind(key: str) -> str:
    return key.partition(":")[0]


def _priority(key: str) -> tuple[int, str]:
    kind = _kind(key)
    return (PRIORITY.index(kind) if kind in PRIORITY else len(PRIORITY), key)


def resolve_evidence(evidence: list[Evidence], limits: dict[str, int] | None = None) -> Partition:
    """Partition identifiers into customers from the whole evidence of a component; pure.

    Links are considered in event-time order (ties by event key), so the result depends only on
    the set of evidence, never on the order it arrived in. A link is refused when the joined
    customer would hold more identifiers of a kind than its limit, or when an ``identity.unlinked``
    says two of the identifiers are different people; the event then stays with the customer of its
    highest-priority identifier.
    """
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    forbidden: dict[str, set[str]] = {}
    for ev in evidence:
        if ev.unlink:
            for a in ev.identifiers:
                for b in ev.identifiers:
                    if a != b:
                        forbidden.setdefault(a, set()).add(b)
    first_seen: dict[str, datetime] = {}
    for ev in evidence:
        for key in ev.identifiers:
            if key not in first_seen or ev.time < first_seen[key]:
                first_seen[key] = ev.time

    uf = _UnionFind()
    members: dict[str, set[str]] = {}

    def cluster(key: str) -> str:
        root = uf.find(key)
        members.setdefault(root, {key})
        return root

    def refusal(a: str, b: str) -> str | None:
        ma, mb = members[a], members[b]
        for kind, limit in limits.items():
            if sum(1 for k in ma if _kind(k) == kind) + sum(1 for k in mb if _kind(k) == kind) > limit:
                return f"refused: at most {limit} {kind} per customer"
        small, large = (ma, mb) if len(ma) <= len(mb) else (mb, ma)
        for key in small:
            if forbidden.get(key, set()) & large:
                return "refused: explicitly unlinked"
        return None

    links: list[Link] = []
    home: dict[str, str] = {}
    for ev in sorted((e for e in evidence if not e.unlink), key=lambda e: (e.time, e.event_key)):
        ids = sorted(set(ev.identifiers), key=_priority)
        head = cluster(ids[0])
        for key in ids[1:]:
            other = cluster(key)
            head = cluster(ids[0])
            if other == head:
                continue
            reason = refusal(head, other)
            rule = "explicit identity.linked" if ev.type == "identity.linked" else "identifiers shared on one event"
            links.append(Link(ev.event_key, ev.event_id, ev.time, key, reason or rule, reason is None))
            if reason is None:
                joined = members.pop(head) | members.pop(other)
                uf.union(head, other)
                members[uf.find(head)] = joined
        home[ev.event_key] = ids[0]
    for ev in evidence:
        for key in ev.identifiers:
            cluster(key)

    anchors: dict[str, Anchor] = {}
    root_customer: dict[str, str] = {}
    for root, keys in members.items():
        anchor = min((Anchor(first_seen[k], k) for k in keys), key=Anchor.sort_key)
        root_customer[root] = customer_id_for(anchor.key)
        anchors[root_customer[root]] = anchor
    customer_of = {k: root_customer[uf.find(k)] for k in first_seen}
    event_customer = {key: customer_of[ident] for key, ident in home.items()}
    for ev in evidence:
        if ev.unlink:
            event_customer[ev.event_key] = customer_of[sorted(ev.identifiers, key=_priority)[0]]
    return Partition(customer_of, event_customer, anchors, first_seen, links)
