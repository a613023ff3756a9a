"""Identity resolution as a pure function of the evidence (README: Identity resolution).

Every customer is a cluster of identifiers. The evidence is what touchpoints said about identity:
an event with two or more identifiers says they are one person (``identity.linked`` says so
explicitly), an ``identity.unlinked`` says its identifiers are different people. ``resolve_evidence``
partitions the identifiers of a connected piece of evidence into customers:

* links are considered in event-time order (ties by event key), so the result depends only on the
  *set* of evidence, never on arrival order, batching or which worker saw what;
* a link is refused when the joined customer would hold more identifiers of a kind than its limit
  (a family phone or a shared computer does not fuse strangers), or when an unlink says two of the
  identifiers are different people, by any path;
* each event belongs to the customer of its *home* identifier, the strongest it carries
  (account id, then email, phone, anonymous id), so a refused link leaves it where it is surest;
* a customer's id is derived from its *anchor*, the identifier first seen in event time (ties by
  key), so the surviving id of a merge is the older customer, deterministically.

``changes`` compares the partition before and after new evidence and names every merge and split
with the event, identifier and rule that caused it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping

PRIORITY: tuple[str, ...] = ("account_id", "email", "phone", "anonymous_id")
"""Identifier kinds, strongest first: when a link must be refused, the event stays with the
customer of its strongest identifier."""

DEFAULT_LIMITS: dict[str, int] = {"account_id": 1, "email": 5, "phone": 5, "anonymous_id": 100}
"""At most this many identifiers of a kind on one customer: a family phone or a shared computer
must not fuse strangers (two accounts never merge; a sixth email is somebody else)."""

LINKED_RULE = "explicit identity.linked"
SHARED_RULE = "identifiers shared on one event"
UNLINKED_RULE = "explicit identity.unlinked"
REANCHOR_RULE = "earlier first contact re-anchors the customer"
BLOCKED_RULE = "refused: blocked placeholder value"
MANUAL_RULE = "manual merge by {operator}: {reason}"
MANUAL_MERGE_SOURCE = "urn:crm:api:merge"
"""The source of the ``identity.linked`` events the query API publishes for an operator's merge."""


def customer_id_for(anchor_key: str) -> str:
    """The deterministic customer id of a cluster anchored at ``anchor_key``."""
    return "c_" + hashlib.blake2b(anchor_key.encode(), digest_size=10).hexdigest()


def kind_of(key: str) -> str:
    return key.partition(":")[0]


def _priority(key: str) -> tuple[int, str]:
    kind = kind_of(key)
    return (PRIORITY.index(kind) if kind in PRIORITY else len(PRIORITY), key)


def home(identifiers: Iterable[str]) -> str:
    """The identifier that decides an event's customer: its strongest (then smallest) one."""
    return min(identifiers, key=_priority)


def event_home(type: str, identifiers: tuple[str, ...]) -> str:
    """The home identifier of an event: an unlink's first identifier (it links nothing), else the
    strongest it carries. Both the identity stage and the projections derive it the same way."""
    return identifiers[0] if type == "identity.unlinked" else home(identifiers)


def link_key(identifiers: Iterable[str], unlink: bool) -> str:
    """One key per distinct statement: only the earliest event saying it matters to the resolver
    (a later event with the same identifiers meets clusters that can only have grown)."""
    text = ("unlink " if unlink else "link ") + " ".join(sorted(set(identifiers)))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Anchor:
    time: datetime
    key: str

    def sort_key(self) -> tuple[datetime, str]:
        return (self.time, self.key)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one touchpoint says about identity: these identifiers are (or, unlinking, are not) one person."""

    event_key: str
    event_id: str
    type: str
    time: datetime
    identifiers: tuple[str, ...]
    unlink: bool = False
    note: str = ""   # the rule a link made by hand names instead (MANUAL_RULE); it never changes the outcome

    def order(self) -> tuple[datetime, str]:
        return (self.time, self.event_key)


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
    event_customer: dict[str, str]          # event key -> customer id (events of the evidence)
    anchors: dict[str, Anchor]              # customer id -> its anchor
    first_seen: dict[str, datetime]         # identifier key -> earliest time it was seen
    links: list[Link]

    def members(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for key, cid in self.customer_of.items():
            out.setdefault(cid, set()).add(key)
        return out


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

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


def resolve_evidence(evidence: Iterable[Evidence], limits: Mapping[str, int] | None = None,
                     seen: Mapping[str, datetime] | None = None) -> Partition:
    """Partition identifiers into customers from the whole evidence of a component; pure.

    ``seen`` adds identifiers known from events that carry only one identifier, with the earliest
    time each was seen (it decides anchors, not links).
    """
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    evidence = sorted(evidence, key=Evidence.order)
    forbidden: dict[str, set[str]] = {}
    first_seen: dict[str, datetime] = dict(seen or {})
    for ev in evidence:
        for key in ev.identifiers:
            if key not in first_seen or ev.time < first_seen[key]:
                first_seen[key] = ev.time
        if ev.unlink:
            for a in ev.identifiers:
                forbidden.setdefault(a, set()).update(b for b in ev.identifiers if b != a)

    uf = _UnionFind()
    members: dict[str, set[str]] = {}
    counts: dict[str, dict[str, int]] = {}

    def cluster(key: str) -> str:
        root = uf.find(key)
        if root not in members:
            members[root] = {key}
            counts[root] = {kind_of(key): 1}
        return root

    def refusal(a: str, b: str) -> str | None:
        ca, cb = counts[a], counts[b]
        for kind, limit in limits.items():
            if ca.get(kind, 0) + cb.get(kind, 0) > limit:
                return f"refused: at most {limit} {kind} per customer"
        small, large = (members[a], members[b]) if len(members[a]) <= len(members[b]) else (members[b], members[a])
        for key in small:
            if key in forbidden and not forbidden[key].isdisjoint(large):
                return "refused: explicitly unlinked"
        return None

    links: list[Link] = []
    for ev in evidence:
        if ev.unlink:
            continue
        ids = sorted(set(ev.identifiers), key=_priority)
        rule = LINKED_RULE if ev.type == "identity.linked" else SHARED_RULE
        for key in ids[1:]:
            head, other = cluster(ids[0]), cluster(key)
            if other == head:
                continue
            reason = refusal(head, other)
            links.append(Link(ev.event_key, ev.event_id, ev.time, key, reason or rule, reason is None))
            if reason is None:
                joined_members = members.pop(head) | members.pop(other)
                ch, co = counts.pop(head), counts.pop(other)
                root = uf.union(head, other)
                members[root] = joined_members
                counts[root] = {k: ch.get(k, 0) + co.get(k, 0) for k in ch.keys() | co.keys()}
    for key in first_seen:
        cluster(key)

    anchors: dict[str, Anchor] = {}
    root_customer: dict[str, str] = {}
    for root, keys in members.items():
        anchor = min((Anchor(first_seen[k], k) for k in keys), key=Anchor.sort_key)
        root_customer[root] = customer_id_for(anchor.key)
        anchors[root_customer[root]] = anchor
    customer_of = {k: root_customer[uf.find(k)] for k in first_seen}
    event_customer = {ev.event_key: customer_of[event_home(ev.type, ev.identifiers)] for ev in evidence}
    return Partition(customer_of, event_customer, anchors, first_seen, links)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A link the resolver refused: ``identifier`` stayed off the customer of ``home`` (the
    identifier the event stayed with), by ``rule``."""

    event_key: str
    event_id: str
    type: str
    time: datetime
    identifier: str
    home: str
    rule: str


def refusals(partition: Partition, evidence: Iterable[Evidence]) -> list[Refusal]:
    """The links ``partition`` refused, each with its event and the identifier the event stayed
    with, in the resolver's order."""
    by_event = {ev.event_key: ev for ev in evidence}
    out = []
    for link in partition.links:
        if not link.accepted:
            ev = by_event[link.event_key]
            out.append(Refusal(ev.event_key, ev.event_id, ev.type, ev.time, link.identifier, home(ev.identifiers),
                               link.rule))
    return out


# --- what changed: merges and splits, explained ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Change:
    """Identifiers that moved from one customer to another, and why.

    ``merged``: every identifier of ``source`` now belongs to ``target`` (source is an alias now).
    ``unmerged``: ``source`` was split; ``identifiers`` left it for ``target``.
    """

    kind: str                 # merged | unmerged
    target: str
    source: str
    identifiers: tuple[str, ...]
    event_key: str
    event_id: str
    identifier: str
    rule: str
    time: datetime


@dataclass(frozen=True, slots=True)
class Cause:
    """An event to name when no evidence explains a change (an earlier first contact)."""

    event_key: str
    event_id: str
    time: datetime


def changes(before: Mapping[str, str], after: Partition, evidence: Iterable[Evidence],
            cause: Cause) -> list[Change]:
    """The merges and splits that turn ``before`` (identifier -> customer, for the identifiers that
    had one) into ``after``, in a deterministic order."""
    evidence = sorted(evidence, key=Evidence.order)
    old_members: dict[str, set[str]] = {}
    for key, cid in before.items():
        old_members.setdefault(cid, set()).add(key)
    new_members = after.members()
    out: list[Change] = []
    for source in sorted(old_members):
        keys = old_members[source]
        parts: dict[str, set[str]] = {}
        for key in keys:
            parts.setdefault(after.customer_of[key], set()).add(key)
        if len(parts) == 1:
            (target,) = parts
            if target != source:
                out.append(_explain_merge(source, target, keys, new_members[target], evidence, after, cause))
            continue
        for target in sorted(parts):
            if target != source:
                out.append(_explain_split(source, target, parts[target], keys, evidence, after, cause))
    return out


def _explain_merge(source: str, target: str, keys: set[str], joined: set[str], evidence: list[Evidence],
                   after: Partition, cause: Cause) -> Change:
    """Name the earliest accepted link that tied an identifier of ``source`` to the rest."""
    accepted = {(l.event_key, l.identifier) for l in after.links if l.accepted}
    for ev in evidence:
        if ev.unlink:
            continue
        ids = set(ev.identifiers)
        if ids & keys and ids - keys and ids & joined - keys and any((ev.event_key, k) in accepted for k in ids):
            return Change("merged", target, source, tuple(sorted(keys)), ev.event_key, ev.event_id,
                          sorted(ids & keys)[0],
                          ev.note or (LINKED_RULE if ev.type == "identity.linked" else SHARED_RULE), ev.time)
    anchor = after.anchors[target]
    return Change("merged", target, source, tuple(sorted(keys)), cause.event_key, cause.event_id, anchor.key,
                  REANCHOR_RULE, cause.time)


def _explain_split(source: str, target: str, moved: set[str], keys: set[str], evidence: list[Evidence],
                   after: Partition, cause: Cause) -> Change:
    """Name the unlink that separates ``moved`` from the rest of ``source``, else the refused link."""
    rest = keys - moved
    for ev in evidence:
        ids = set(ev.identifiers)
        if ev.unlink and ids & moved and ids & rest:
            return Change("unmerged", target, source, tuple(sorted(moved)), ev.event_key, ev.event_id,
                          sorted(ids & moved)[0], UNLINKED_RULE, ev.time)
    by_event = {ev.event_key: ev for ev in evidence}
    for link in after.links:
        ev = by_event.get(link.event_key)
        if not link.accepted and ev is not None and set(ev.identifiers) & moved and set(ev.identifiers) & rest:
            return Change("unmerged", target, source, tuple(sorted(moved)), ev.event_key, ev.event_id,
                          link.identifier, link.rule, ev.time)
    return Change("unmerged", target, source, tuple(sorted(moved)), cause.event_key, cause.event_id,
                  min(moved), REANCHOR_RULE, cause.time)
