"""Identity resolution: given these touchpoints -> these customers, whatever the order or batching,
and every merge and split named with its cause."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from projections.identity import (Cause, Evidence, REANCHOR_RULE, changes, customer_id_for, event_home, link_key,
                                  resolve_evidence)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ev(n: int, minutes: int, *keys: str, type: str = "web.page_viewed") -> Evidence:
    return Evidence(f"k{n:03d}", f"e{n}", type, T0 + timedelta(minutes=minutes), tuple(keys),
                    type == "identity.unlinked")


class Graph:
    """An in-memory model of the identity stage: evidence deduplicated per statement, components
    of the evidence, and only the touched components resolved again on each batch."""

    def __init__(self) -> None:
        self.links: dict[str, Evidence] = {}
        self.first_seen: dict[str, datetime] = {}
        self.customer_of: dict[str, str] = {}
        self.assigned: dict[str, str] = {}
        self.log: list = []

    def _component(self, keys: set[str]) -> tuple[set[str], list[Evidence]]:
        todo, comp = list(keys), set()
        while todo:
            k = todo.pop()
            if k in comp:
                continue
            comp.add(k)
            todo += [o for e in self.links.values() if k in e.identifiers for o in e.identifiers]
        return comp, [e for e in self.links.values() if set(e.identifiers) & comp]

    def apply(self, batch: list[Evidence]) -> list:
        touched = set()
        for e in batch:
            if len(e.identifiers) > 1 or e.unlink:
                lk = link_key(e.identifiers, e.unlink)
                if lk not in self.links or e.order() < self.links[lk].order():
                    self.links[lk] = e
                    touched.update(e.identifiers)
            for k in e.identifiers:
                if k not in self.first_seen or e.time < self.first_seen[k]:
                    self.first_seen[k] = e.time
                    touched.add(k)
        found = []
        while touched:
            comp, evidence = self._component(touched)
            touched -= comp
            p = resolve_evidence(evidence, None, {k: self.first_seen[k] for k in comp})
            before = {k: self.customer_of[k] for k in comp if k in self.customer_of}
            found += changes(before, p, evidence, Cause(batch[0].event_key, batch[0].event_id, batch[0].time))
            self.customer_of.update(p.customer_of)
        for e in batch:
            self.assigned[e.event_key] = event_home(e.type, e.identifiers)
        self.log += found
        return found

    def customer_of_event(self, event_key: str) -> str:
        return self.customer_of[self.assigned[event_key]]

    def partition(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for key, cid in self.customer_of.items():
            out.setdefault(cid, set()).add(key)
        return {c: frozenset(v) for c, v in out.items()}


def test_new_identifier_creates_a_customer_named_after_it():
    g = Graph()
    assert g.apply([ev(1, 0, "anonymous_id:a1")]) == []
    assert g.customer_of_event("k001") == customer_id_for("anonymous_id:a1")


def test_identifiers_on_one_event_are_one_customer():
    g = Graph()
    g.apply([ev(1, 0, "account_id:u1", "email:a@x.com")])
    assert g.customer_of["account_id:u1"] == g.customer_of["email:a@x.com"]


def test_link_of_two_customers_merges_into_the_older_with_an_explanation():
    g = Graph()
    g.apply([ev(1, 0, "anonymous_id:cookie")])        # first seen at minute 0
    g.apply([ev(2, 10, "account_id:u1")])             # a different customer, seen later
    older, newer = g.customer_of["anonymous_id:cookie"], g.customer_of["account_id:u1"]
    assert older != newer
    (m,) = g.apply([ev(3, 20, "account_id:u1", "anonymous_id:cookie")])
    assert (m.kind, m.target, m.source) == ("merged", older, newer)
    assert m.event_id == "e3" and m.identifier == "account_id:u1" and m.identifiers == ("account_id:u1",)
    assert m.rule == "identifiers shared on one event"
    assert g.customer_of_event("k003") == older


def test_explicit_link_is_named_as_the_rule():
    g = Graph()
    g.apply([ev(1, 0, "email:a@x.com"), ev(2, 1, "phone:+8613800138000")])
    (m,) = g.apply([ev(3, 5, "email:a@x.com", "phone:+8613800138000", type="identity.linked")])
    assert m.rule == "explicit identity.linked"


def test_merge_through_a_new_identifier_in_the_same_batch():
    g = Graph()
    g.apply([ev(1, 0, "email:a@x.com")])
    g.apply([ev(2, 1, "account_id:u9")])
    found = g.apply([ev(3, 5, "email:a@x.com", "phone:+8613800138000"),
                     ev(4, 6, "phone:+8613800138000", "account_id:u9")])
    assert len({g.customer_of[k] for k in ("email:a@x.com", "account_id:u9", "phone:+8613800138000")}) == 1
    assert [m.kind for m in found] == ["merged"]


def test_a_late_earlier_event_re_anchors_the_customer_deterministically():
    g = Graph()
    g.apply([ev(1, 50, "email:a@x.com", "phone:+8613800138000")])
    before = g.customer_of["email:a@x.com"]
    (m,) = g.apply([ev(2, 5, "phone:+8613800138000")])  # the phone was in fact seen 45 minutes earlier
    assert g.customer_of["email:a@x.com"] == customer_id_for("phone:+8613800138000") != before
    assert (m.kind, m.source, m.rule, m.event_id) == ("merged", before, REANCHOR_RULE, "e2")


def test_an_unlink_splits_a_merge_and_names_itself():
    g = Graph()
    g.apply([ev(1, 0, "email:a@x.com"), ev(2, 1, "phone:+8613800138000"), ev(3, 2, "anonymous_id:c1")])
    g.apply([ev(4, 5, "email:a@x.com", "phone:+8613800138000"), ev(5, 6, "phone:+8613800138000", "anonymous_id:c1")])
    merged = g.customer_of["email:a@x.com"]
    assert g.customer_of["anonymous_id:c1"] == merged
    (m,) = g.apply([ev(6, 90, "email:a@x.com", "phone:+8613800138000", type="identity.unlinked")])
    assert (m.kind, m.source, m.target) == ("unmerged", merged, customer_id_for("phone:+8613800138000"))
    assert m.identifiers == ("anonymous_id:c1", "phone:+8613800138000")
    assert (m.event_id, m.rule, m.identifier) == ("e6", "explicit identity.unlinked", "phone:+8613800138000")
    assert g.customer_of["email:a@x.com"] == merged  # the email keeps the id it was anchored at


def test_a_split_caused_by_a_guard_names_the_refused_link():
    g = Graph()
    g.apply([ev(1, 10, "anonymous_id:pc", "email:a@x.com")])
    g.apply([ev(2, 20, "anonymous_id:pc", "account_id:u2")])   # accepted: one account on the customer
    shared = g.customer_of["account_id:u2"]
    # a late event shows u1 on the same computer *before* u2: u1 takes the cookie, u2 is refused
    found = g.apply([ev(3, 5, "anonymous_id:pc", "account_id:u1")])
    assert g.customer_of["account_id:u1"] == g.customer_of["anonymous_id:pc"] != g.customer_of["account_id:u2"]
    split = [m for m in found if m.kind == "unmerged"]
    assert split and split[0].rule == "refused: at most 1 account_id per customer" and split[0].event_id == "e2"
    assert shared in {m.source for m in found}


KEYS = [f"email:c{i}@x.com" for i in range(4)] + [f"phone:+86138001380{i:02d}" for i in range(4)] + \
       [f"anonymous_id:a{i}" for i in range(4)] + [f"account_id:u{i}" for i in range(3)]

events_strategy = st.lists(
    st.tuples(st.integers(0, 500), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
              st.integers(0, 9)),
    min_size=1, max_size=25,
).map(lambda items: [ev(i, minute, *keys, type="identity.unlinked" if roll == 0 and len(keys) > 1
                        else "identity.linked" if roll == 1 else "web.page_viewed")
                     for i, (minute, keys, roll) in enumerate(items)])


def _run(events: list[Evidence], batch_sizes: list[int]) -> Graph:
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
    reference = _run(sorted(events, key=Evidence.order), [len(events)])
    shuffled = list(events)
    rnd.shuffle(shuffled)
    other = _run(shuffled, sizes)
    # same partition of identifiers into customers, with the same customer ids
    assert other.partition() == reference.partition()
    # every event ends up at the same customer
    for e in events:
        assert other.customer_of_event(e.event_key) == reference.customer_of_event(e.event_key)
    # and the changes, replayed, lead from nothing to the final partition
    replay: dict[str, str] = {}
    for m in other.log:
        for k in m.identifiers:
            replay[k] = m.target
    assert all(other.customer_of[k] == cid for k, cid in replay.items() if k in other.customer_of)
