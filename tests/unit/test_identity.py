"""Identity resolution: given these touchpoints -> these customers, whatever the order or batching."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from projections.identity import (Anchor, IdentityInput, KnownIdentifier, Snapshot, customer_id_for, resolve)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ev(n: int, minutes: int, *keys: str, type: str = "web.page_viewed") -> IdentityInput:
    return IdentityInput(f"k{n}", f"e{n}", type, T0 + timedelta(minutes=minutes), tuple(keys))


class Graph:
    """An in-memory copy of what the identity stage keeps in PostgreSQL, for driving the pure resolver."""

    def __init__(self) -> None:
        self.identifiers: dict[str, KnownIdentifier] = {}
        self.anchors: dict[str, Anchor] = {}
        self.merged: dict[str, str] = {}
        self.assigned: dict[str, str] = {}

    def apply(self, batch: list[IdentityInput]):
        keys = {k for e in batch for k in e.identifiers}
        snap = Snapshot({k: self.identifiers[k] for k in keys if k in self.identifiers})
        snap.anchors = {v.customer_id: self.anchors[v.customer_id] for v in snap.identifiers.values()}
        res = resolve(snap, batch)
        self.identifiers.update(res.identifiers)
        self.anchors.update(res.anchors)
        for cid in res.anchors:  # an id can become a survivor again when a late event re-anchors it
            self.merged.pop(cid, None)
        for m in res.merges:
            for k, v in list(self.identifiers.items()):
                if v.customer_id == m.alias:
                    self.identifiers[k] = KnownIdentifier(m.survivor, v.first_seen)
            self.merged[m.alias] = m.survivor
            self.anchors.pop(m.alias, None)
        self.assigned.update(res.assignments)
        return res

    def customer_of(self, key: str) -> str:
        return self.identifiers[key].customer_id

    def partition(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for key, known in self.identifiers.items():
            out.setdefault(known.customer_id, set()).add(key)
        return {c: frozenset(v) for c, v in out.items()}

    def final_customer(self, customer_id: str) -> str:
        seen = set()
        while customer_id in self.merged:
            assert customer_id not in seen, f"merge cycle through {customer_id}"
            seen.add(customer_id)
            customer_id = self.merged[customer_id]
        return customer_id


def test_new_identifier_creates_a_customer_named_after_it():
    g = Graph()
    res = g.apply([ev(1, 0, "anonymous_id:a1")])
    assert res.assignments == {"k1": customer_id_for("anonymous_id:a1")}
    assert res.merges == []


def test_identifiers_on_one_event_are_one_customer():
    g = Graph()
    g.apply([ev(1, 0, "account_id:u1", "email:a@x.com")])
    assert g.customer_of("account_id:u1") == g.customer_of("email:a@x.com")


def test_link_of_two_customers_merges_into_the_older_with_an_explanation():
    g = Graph()
    g.apply([ev(1, 0, "anonymous_id:cookie")])        # first seen at minute 0
    g.apply([ev(2, 10, "account_id:u1")])             # a different customer, seen later
    older, newer = g.customer_of("anonymous_id:cookie"), g.customer_of("account_id:u1")
    assert older != newer
    res = g.apply([ev(3, 20, "account_id:u1", "anonymous_id:cookie", type="web.page_viewed")])
    assert len(res.merges) == 1
    m = res.merges[0]
    assert (m.survivor, m.alias) == (older, newer)
    assert m.event_id == "e3" and m.identifier == "account_id:u1"
    assert m.rule == "identifiers shared on one event"
    assert g.customer_of("account_id:u1") == older
    assert res.assignments["k3"] == older


def test_explicit_link_is_named_as_the_rule():
    g = Graph()
    g.apply([ev(1, 0, "email:a@x.com"), ev(2, 1, "phone:+8613800138000")])
    res = g.apply([ev(3, 5, "email:a@x.com", "phone:+8613800138000", type="identity.linked")])
    assert res.merges[0].rule == "explicit identity.linked"


def test_merge_through_a_new_identifier_in_the_same_batch():
    g = Graph()
    g.apply([ev(1, 0, "email:a@x.com")])
    g.apply([ev(2, 1, "account_id:u9")])
    res = g.apply([ev(3, 5, "email:a@x.com", "phone:+8613800138000"),
                   ev(4, 6, "phone:+8613800138000", "account_id:u9")])
    assert len({g.customer_of(k) for k in ("email:a@x.com", "account_id:u9", "phone:+8613800138000")}) == 1
    assert len(res.merges) == 1


def test_a_late_earlier_event_re_anchors_the_customer_deterministically():
    g = Graph()
    g.apply([ev(1, 50, "email:a@x.com", "phone:+8613800138000")])
    before = g.customer_of("email:a@x.com")
    res = g.apply([ev(2, 5, "phone:+8613800138000")])  # the phone was in fact seen 45 minutes earlier
    after = g.customer_of("email:a@x.com")
    assert after == customer_id_for("phone:+8613800138000") != before
    assert res.merges[0].alias == before and res.merges[0].rule.startswith("earlier first contact")


KEYS = [f"email:c{i}@x.com" for i in range(4)] + [f"phone:+86138001380{i:02d}" for i in range(4)] + \
       [f"anonymous_id:a{i}" for i in range(4)] + [f"account_id:u{i}" for i in range(3)]

events_strategy = st.lists(
    st.tuples(st.integers(0, 500), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)),
    min_size=1, max_size=25,
).map(lambda items: [ev(i, minute, *keys) for i, (minute, keys) in enumerate(items)])


def _run(events: list[IdentityInput], batch_sizes: list[int]) -> Graph:
    g = Graph()
    i = 0
    sizes = iter(batch_sizes)
    while i < len(events):
        n = max(1, next(sizes, len(events)))
        g.apply(events[i:i + n])
        i += n
    return g


@settings(max_examples=300, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False), st.lists(st.integers(1, 6), max_size=30))
def test_any_arrival_order_and_batching_gives_the_same_customers(events, rnd, sizes):
    reference = _run(sorted(events, key=lambda e: (e.time, e.event_key)), [len(events)])
    shuffled = list(events)
    rnd.shuffle(shuffled)
    other = _run(shuffled, sizes)
    # same partition of identifiers into customers, with the same customer ids
    assert other.partition() == reference.partition()
    # every event ends up (through aliases) at the same surviving customer
    for e in events:
        assert other.final_customer(other.assigned[e.event_key]) == \
            reference.final_customer(reference.assigned[e.event_key])
