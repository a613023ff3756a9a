"""Guards against over-merging, on the evidence-based resolver: limits, priority, unlinking."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from projections.identity import DEFAULT_LIMITS, Evidence, resolve_evidence

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ev(n: int, minutes: int, *keys: str, type: str = "web.page_viewed", unlink: bool = False) -> Evidence:
    return Evidence(f"k{n:03d}", f"e{n}", "identity.unlinked" if unlink else type,
                    T0 + timedelta(minutes=minutes), tuple(keys), unlink)


def groups(p) -> set[frozenset[str]]:
    out: dict[str, set[str]] = {}
    for key, cid in p.customer_of.items():
        out.setdefault(cid, set()).add(key)
    return {frozenset(v) for v in out.values()}


def test_a_shared_computer_does_not_fuse_two_account_holders():
    p = resolve_evidence([
        ev(1, 0, "anonymous_id:family-pc", "account_id:dad"),   # dad logs in first
        ev(2, 60, "anonymous_id:family-pc", "account_id:mum"),  # then mum, on the same browser
        ev(3, 61, "account_id:mum", type="order.placed"),
    ])
    assert groups(p) == {frozenset({"anonymous_id:family-pc", "account_id:dad"}), frozenset({"account_id:mum"})}
    assert p.event_customer["k002"] == p.customer_of["account_id:mum"]  # the stronger identifier decides
    refused = [l for l in p.links if not l.accepted]
    assert [(l.event_id, l.rule) for l in refused] == [("e2", "refused: at most 1 account_id per customer")]


def test_a_family_phone_does_not_fuse_strangers_and_stays_with_who_used_it_first():
    p = resolve_evidence([
        ev(1, 10, "account_id:li", "phone:+8613800138000", type="order.placed"),
        ev(2, 20, "account_id:wang", "phone:+8613800138000", type="order.placed"),
        ev(3, 30, "phone:+8613800138000", type="call.ended"),
    ])
    li, wang = p.customer_of["account_id:li"], p.customer_of["account_id:wang"]
    assert li != wang
    assert p.customer_of["phone:+8613800138000"] == li
    assert p.event_customer["k002"] == wang and p.event_customer["k003"] == li


def test_a_sixth_email_is_somebody_else():
    evidence = [ev(i, i, "account_id:u1", f"email:m{i}@x.com") for i in range(6)]
    p = resolve_evidence(evidence)
    assert len({p.customer_of[f"email:m{i}@x.com"] for i in range(5)} | {p.customer_of["account_id:u1"]}) == 1
    assert p.customer_of["email:m5@x.com"] != p.customer_of["account_id:u1"]
    assert p.event_customer["k005"] == p.customer_of["account_id:u1"]


def test_unlinking_splits_whichever_arrives_first():
    link = ev(1, 10, "email:a@x.com", "phone:+8613800138000")
    unlink = ev(2, 99, "email:a@x.com", "phone:+8613800138000", unlink=True)
    for evidence in ([link, unlink], [unlink, link]):
        p = resolve_evidence(evidence)
        assert p.customer_of["email:a@x.com"] != p.customer_of["phone:+8613800138000"]
        assert [l.rule for l in p.links] == ["refused: explicitly unlinked"]


def test_an_unlink_blocks_indirect_paths_too():
    p = resolve_evidence([
        ev(1, 0, "email:a@x.com", "anonymous_id:c1"),
        ev(2, 1, "anonymous_id:c1", "phone:+8613800138000"),
        ev(3, 2, "email:a@x.com", "phone:+8613800138000", unlink=True),
    ])
    assert p.customer_of["email:a@x.com"] != p.customer_of["phone:+8613800138000"]


KEYS = (["account_id:u1", "account_id:u2", "account_id:u3"] + [f"email:m{i}@x.com" for i in range(7)]
        + [f"phone:+86138001380{i:02d}" for i in range(4)] + [f"anonymous_id:c{i}" for i in range(4)])

evidence_strategy = st.lists(
    st.tuples(st.integers(0, 300), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
              st.booleans()),
    min_size=1, max_size=30,
).map(lambda items: [ev(i, minute, *keys, unlink=unlink and len(keys) > 1)
                     for i, (minute, keys, unlink) in enumerate(items)])


@settings(max_examples=300, deadline=None)
@given(evidence_strategy, st.randoms(use_true_random=False))
def test_the_partition_depends_only_on_the_evidence_and_respects_every_guard(evidence, rnd):
    reference = resolve_evidence(evidence)
    shuffled = list(evidence)
    rnd.shuffle(shuffled)
    again = resolve_evidence(shuffled)
    assert again.customer_of == reference.customer_of
    assert again.event_customer == reference.event_customer
    for members in groups(reference):
        for kind, limit in DEFAULT_LIMITS.items():
            assert sum(1 for k in members if k.startswith(kind + ":")) <= limit
    for e in evidence:
        if e.unlink:
            assert len({reference.customer_of[k] for k in e.identifiers}) == len(set(e.identifiers))


@settings(max_examples=200, deadline=None)
@given(evidence_strategy)
def test_without_guards_in_play_customers_are_the_connected_identifiers(evidence):
    links_only = [e for e in evidence if not e.unlink]
    p = resolve_evidence(links_only, {k: 10_000 for k in DEFAULT_LIMITS})
    component: dict[str, str] = {}

    def find(k: str) -> str:
        while component.setdefault(k, k) != k:
            k = component[k]
        return k
    for e in links_only:
        for other in e.identifiers[1:]:
            a, b = find(e.identifiers[0]), find(other)
            if a != b:
                component[a] = b
    expected: dict[str, set[str]] = {}
    for k in {k for e in links_only for k in e.identifiers}:
        expected.setdefault(find(k), set()).add(k)
    assert groups(p) == {frozenset(v) for v in expected.values()}
