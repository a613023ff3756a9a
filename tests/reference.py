"""The reference the read model must equal: the pure folds applied to the accepted events at once."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Callable

import orjson

from events.customer_events import CustomerEvent, resolved_cloudevent
from events.envelope import InvalidEvent, Touchpoint, validate
from projections import customer_view, indicators
from projections.business_hours import Calendar
from projections.identity import Evidence, Partition, event_home, resolve_evidence


def reference_partition(touchpoints: list[Touchpoint], limits: dict[str, int] | None = None) -> Partition:
    """Identity resolved from every event at once: the evidence of the events with two or more
    identifiers (and of unlinks), and the first sighting of every identifier."""
    evidence, seen = [], {}
    for tp in touchpoints:
        keys = tuple(i.key for i in tp.identifiers)
        if len(keys) > 1 or tp.type == "identity.unlinked":
            evidence.append(Evidence(tp.key, tp.id, tp.type, tp.time, keys, tp.type == "identity.unlinked"))
        for k in keys:
            seen[k] = min(seen.get(k, tp.time), tp.time)
    return resolve_evidence(evidence, limits, seen)


def reference_views(raw_events: list[dict], default_region: str = "CN",
                    limits: dict[str, int] | None = None, opener: Opener | None = None) -> dict[str, dict]:
    """customer_id -> view, for the valid events among ``raw_events`` (each applied once)."""
    return {cid: orjson.loads(orjson.dumps(customer_view.apply_all(customer_view.empty(cid), evs)))
            for cid, evs in resolved_events(raw_events, default_region, limits, opener).items()}


def reference_indicator_totals(raw_events: list[dict], calendar: Calendar | None = None,
                               opener: Opener | None = None) -> dict[str, float]:
    """The indicator measures of the overall slice, summed over all time, for the valid events among
    ``raw_events``: what the per-minute sums must add up to, each event counted once."""
    calendar = calendar or Calendar()
    grouped = resolved_events(raw_events, opener=opener)
    sums: dict = {}
    threads: dict[str, dict] = {}
    for cid, evs in grouped.items():
        view = customer_view.apply_all(customer_view.empty(cid), evs)
        indicators.add(sums, indicators.repeat_facts(view, lambda at: "").values())
        for e in evs:
            indicators.add(sums, indicators.event_facts(e, ""))
            key = indicators.thread_key(e)
            if key:
                threads[key] = indicators.thread_apply(threads.get(key), e, "")
    for state in threads.values():
        indicators.add(sums, indicators.thread_facts(state, calendar).values())
    totals: dict[str, float] = {m: 0.0 for m in indicators.MEASURES}
    for (_, _, dim, _), measures in sums.items():
        if dim == "all":
            for m, v in measures.items():
                totals[m] += v
    return totals


def resolved_events(raw_events: list[dict], default_region: str = "CN", limits: dict[str, int] | None = None,
                    opener: Opener | None = None) -> dict[str, list[CustomerEvent]]:
    """The valid events among ``raw_events``, once each, resolved at once, by customer. Sealed
    events (as the collector writes them) keep their pseudonyms and tokens; ``opener`` opens
    what the processors open in memory (the customer's words, for sentiment)."""
    touchpoints = {}
    for raw in raw_events:
        try:
            tp = validate(raw, received_at=datetime.now(timezone.utc), default_region=default_region, sealed=True)
        except InvalidEvent:
            continue
        touchpoints.setdefault(tp.key, tp)
    partition = reference_partition(list(touchpoints.values()), limits)
    grouped: dict[str, list[CustomerEvent]] = defaultdict(list)
    for tp in touchpoints.values():
        keys = tuple(i.key for i in tp.identifiers)
        home = event_home(tp.type, keys)
        cid = partition.customer_of[home]
        refused = tuple(k for k in keys if k != home and (tp.type == "identity.unlinked"
                                                          or partition.customer_of[k] != cid))
        ce = resolved_cloudevent(tp, cid, refused)
        grouped[cid].append(CustomerEvent.from_cloudevent(orjson.loads(orjson.dumps(ce))))
    if opener is not None:
        grouped = defaultdict(list, {cid: opener(evs) for cid, evs in grouped.items()})
    return grouped


Opener = Callable[[list[CustomerEvent]], list[CustomerEvent]]


def vault_opener(dsn: str, master_key: str) -> Opener:
    """Opens sealed events' texts as the processors do, with the keys in the database at ``dsn``."""
    import psycopg2

    from services.common.vault import Vault, load_master_key

    vault = Vault(load_master_key(master_key, None))

    def opener(events: list[CustomerEvent]) -> list[CustomerEvent]:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            return vault.open_events(cur, events)
    return opener


def opened_copies(dsn: str, master_key: str, events: list[dict]) -> list[dict]:
    """Sealed events with the customer's words opened (the fields sentiment reads), pseudonyms left:
    what the independent oracle (tests/oracle.py) needs to score them as the processors do."""
    import copy

    import psycopg2

    from events import pii
    from services.common.vault import Vault, load_master_key

    vault = Vault(load_master_key(master_key, None))
    out = copy.deepcopy(events)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for event in out:
            data = event.get("data")
            if isinstance(data, dict):
                texts = {f: data[f] for f in Vault.TEXT_FIELDS if isinstance(data.get(f), str)}
                if texts:
                    data.update({f: ("" if v == pii.ERASED else v) for f, v in vault.open_text(cur, texts).items()})
    conn.close()
    return out


def sealed(value: dict | None) -> bool:
    """A touchpoint naming pseudonyms: sealed by a collector, or an operator action of the API
    (unmerge, erasure). Its subjects live in that platform's database only."""
    return bool(value) and ("crmsubject" in value or b"psn-" in orjson.dumps(value.get("data")))


def sealed_copies(platform, events: list[dict]) -> list[dict]:
    """The events as ``platform``'s collector sealed them onto crm.touchpoints (the first copy of each)."""
    from events.envelope import event_key
    from services.common.topics import TOUCHPOINTS
    from tests.feed import read_records

    wanted = {event_key(e["source"], e["id"]) for e in events if isinstance(e, dict) and "source" in e and "id" in e}
    found: dict[str, dict] = {}
    for r in read_records(platform.stack.kafka_bootstrap, [platform.topic(TOUCHPOINTS)]):
        try:
            value = orjson.loads(r.value)
            key = event_key(value["source"], value["id"])
        except Exception:  # a test's hand-made records
            continue
        if key in wanted and sealed(value):
            found.setdefault(key, value)
    return list(found.values())
