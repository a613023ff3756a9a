"""Customer-view stage: crm.customer-events -> the unified customer view in PostgreSQL.

Each event is inserted into ``customer_timeline`` first; its primary key (source + id) lets only
events not seen before through to the fold, in the same transaction that stores the offsets,
so every event changes the view exactly once whatever redeliveries happen. Merge markers fold
the alias's view into the survivor's (the fold is commutative, so the order in which markers and
events arrive does not matter). Per-customer advisory locks keep concurrent workers apart.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict

import orjson
from psycopg2.extras import execute_values

from events.customer_events import CustomerEvent, CustomerMerged, decode
from projections import customer_view
from projections.timeline import summarize
from services.common.topics import CUSTOMER_EVENTS
from services.processors.records import Output, Record, deadletter

log = logging.getLogger(__name__)


def _lock_id(customer_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big", signed=True)


class ViewStage:
    name = "customer_view"
    topic = CUSTOMER_EVENTS

    def prepare(self, cur, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        events: list[CustomerEvent] = []
        markers: list[CustomerMerged] = []
        for record in records:
            try:
                item = decode(record.value or b"")
            except (ValueError, KeyError, TypeError) as exc:
                outputs.append(deadletter(record, stage=self.name, kind="undecodable",
                                          reason=f"not a customer event: {type(exc).__name__}: {exc}"))
                continue
            (markers if isinstance(item, CustomerMerged) else events).append(item)
        if not events and not markers:
            return outputs

        ids = {e.customer_id for e in events} | {m.survivor for m in markers} | {m.alias for m in markers}
        held: set[int] = set()
        aliases: dict[str, str] = {}
        while True:  # lock every customer touched (sorted: no deadlocks), then re-check the aliases
            aliases = self._aliases(cur, ids)
            wanted = sorted({_lock_id(c) for c in ids | set(aliases.values())} - held)
            if not wanted:
                break
            cur.execute("SELECT count(pg_advisory_xact_lock(h)) FROM unnest(%s::bigint[]) AS h", (wanted,))
            held.update(wanted)

        def resolve(cid: str) -> str:
            return aliases.get(cid, cid)

        targets = {resolve(c) for c in ids}
        views = self._load(cur, targets | {m.alias for m in markers})
        for m in sorted(markers, key=lambda m: (m.time, m.alias)):
            self._merge(cur, m, resolve(m.survivor), resolve(m.alias), views, aliases)

        # exactly-once guard: only events whose key is new get folded
        rows = {}
        for e in events:
            rows.setdefault(e.key, (e.key, resolve(e.customer_id), e.time, e.id, e.source, e.type, e.channel,
                                    summarize(e), orjson.dumps(e.data).decode()))
        fresh: set[str] = set()
        if rows:
            inserted = execute_values(cur, """
                INSERT INTO customer_timeline (event_key, customer_id, event_time, event_id, source, type, channel,
                                               summary, data)
                VALUES %s ON CONFLICT (event_key) DO NOTHING RETURNING event_key""",
                list(rows.values()), template="(%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                page_size=1000, fetch=True)
            fresh = {r[0] for r in inserted}
        by_customer: dict[str, list[CustomerEvent]] = defaultdict(list)
        for e in events:
            if e.key in fresh:
                by_customer[resolve(e.customer_id)].append(e)
                fresh.discard(e.key)  # a key twice in one batch applies once
        changed = set()
        identifiers = {}
        for cid, evs in by_customer.items():
            views[cid] = customer_view.apply_all(views.get(cid) or customer_view.empty(cid), evs)
            changed.add(cid)
            for e in evs:
                for key in e.identifiers:
                    identifiers[key] = (key, key.partition(":")[0], cid)
        changed |= {resolve(m.survivor) for m in markers}
        self._save(cur, {c: views[c] for c in changed if c in views})
        if identifiers:
            execute_values(cur, """
                INSERT INTO customer_view_identifier (key, kind, customer_id) VALUES %s
                ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id""",
                sorted(identifiers.values()), page_size=1000)
        return outputs

    @staticmethod
    def _aliases(cur, ids: set[str]) -> dict[str, str]:
        cur.execute("SELECT alias, survivor FROM customer_view_alias WHERE alias = ANY(%s)", (sorted(ids),))
        return dict(cur.fetchall())

    @staticmethod
    def _load(cur, customer_ids: set[str]) -> dict[str, customer_view.View]:
        cur.execute("SELECT customer_id, state FROM customer_view WHERE customer_id = ANY(%s)", (sorted(customer_ids),))
        return {cid: state for cid, state in cur.fetchall()}

    def _merge(self, cur, m: CustomerMerged, survivor: str, alias: str, views: dict, aliases: dict[str, str]) -> None:
        if survivor == alias:
            return  # already merged (a redelivered marker)
        base = views.get(survivor) or customer_view.empty(survivor)
        if alias in views:
            views[survivor] = customer_view.merge(base, views.pop(alias))
        else:
            views[survivor] = base
        cur.execute("DELETE FROM customer_view WHERE customer_id = %s", (alias,))
        cur.execute("UPDATE customer_timeline SET customer_id = %s WHERE customer_id = %s", (survivor, alias))
        cur.execute("UPDATE customer_view_identifier SET customer_id = %s WHERE customer_id = %s", (survivor, alias))
        cur.execute("UPDATE customer_view_alias SET survivor = %s WHERE survivor = %s", (survivor, alias))
        cur.execute("""INSERT INTO customer_view_alias (alias, survivor, event_id, identifier, rule)
                       VALUES (%s, %s, %s, %s, %s)
                       ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor""",
                    (alias, survivor, m.event_id, m.identifier, m.rule))
        for a, s in list(aliases.items()):
            if s == alias:
                aliases[a] = survivor
        aliases[alias] = survivor

    @staticmethod
    def _save(cur, views: dict[str, customer_view.View]) -> None:
        if not views:
            return
        rows = []
        for cid, view in sorted(views.items()):
            first = view["first_contact"]["at"] if view["first_contact"] else None
            rows.append((cid, orjson.dumps(view).decode(), customer_view.display_name(view), view["event_count"],
                         first, view["last_event_at"]))
        execute_values(cur, """
            INSERT INTO customer_view (customer_id, state, display_name, event_count, first_seen_at, last_event_at)
            VALUES %s ON CONFLICT (customer_id) DO UPDATE SET state = EXCLUDED.state,
                display_name = EXCLUDED.display_name, event_count = EXCLUDED.event_count,
                first_seen_at = EXCLUDED.first_seen_at, last_event_at = EXCLUDED.last_event_at, updated_at = now()""",
            rows, template="(%s, %s::jsonb, %s, %s, %s, %s)", page_size=1000)
