"""Customer-view stage: crm.customer-events -> the unified customer view in PostgreSQL.

Events: each is inserted into ``customer_timeline`` first; its primary key (source + id) lets only
events not seen before through to the fold, in the same transaction that stores the offsets, so
every event changes the view exactly once whatever redeliveries happen.

Merge markers travel on the survivor's partition, so two markers can be processed in either order.
Each carries the merge's sequence number in the identity graph; the alias map keeps, per customer
id, the word of the latest marker about it (last-writer-wins), which converges to the identity
graph's final state whatever the order. In the common case (two live customers) the views are
merged with the commutative ``customer_view.merge``; otherwise (a marker that arrives after a later
one, or an id that becomes a survivor again after a late event re-anchored its customer) the
customers concerned are re-folded from their timeline rows. Per-customer advisory locks, taken in
a fixed order, keep concurrent workers apart.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass

import orjson
from psycopg2.extras import execute_values

from events.customer_events import CustomerEvent, CustomerMerged, decode
from projections import customer_view
from projections.timeline import summarize
from services.common.timeline import EVENT_COLUMNS, to_event
from services.common.topics import CUSTOMER_EVENTS
from services.processors.records import Output, Record, deadletter

log = logging.getLogger(__name__)


def _lock_id(customer_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big", signed=True)


@dataclass
class _AliasRow:
    survivor: str
    seq: int
    resolved: str


class _Batch:
    """The view stage's work on one batch, inside the runner's transaction."""

    def __init__(self, cur):
        self.cur = cur
        self.held: set[int] = set()
        self.views: dict[str, customer_view.View] = {}
        self.deleted: set[str] = set()
        self.dirty: set[str] = set()
        self.stored_terms: dict[str, set[str]] = {}  # search terms of views as loaded

    # -- locks and the alias map ------------------------------------------------------------------
    def lock(self, ids) -> None:
        wanted = sorted({_lock_id(c) for c in ids} - self.held)
        if wanted:
            self.cur.execute("SELECT count(pg_advisory_xact_lock(h)) FROM unnest(%s::bigint[]) AS h", (wanted,))
            self.held.update(wanted)

    def alias_rows(self, ids) -> dict[str, _AliasRow]:
        self.cur.execute("SELECT alias, survivor, seq, resolved FROM customer_view_alias WHERE alias = ANY(%s)",
                         (sorted(ids),))
        return {a: _AliasRow(s, q, r) for a, s, q, r in self.cur.fetchall()}

    def resolved(self, ids) -> dict[str, str]:
        rows = self.alias_rows(ids)
        return {c: rows[c].resolved if c in rows else c for c in ids}

    # -- views --------------------------------------------------------------------------------------
    def load(self, ids) -> None:
        missing = sorted(set(ids) - set(self.views) - self.deleted)
        if missing:
            self.cur.execute("SELECT customer_id, state FROM customer_view WHERE customer_id = ANY(%s)", (missing,))
            found = dict(self.cur.fetchall())
            for cid in missing:
                if cid in found:
                    self.views[cid] = found[cid]
                self.stored_terms.setdefault(cid, customer_view.search_terms(found[cid]) if cid in found else set())

    def view(self, cid: str) -> customer_view.View:
        self.load([cid])
        self.deleted.discard(cid)
        return self.views.get(cid) or customer_view.empty(cid)

    def set_view(self, cid: str, view: customer_view.View) -> None:
        self.views[cid] = view
        self.deleted.discard(cid)
        self.dirty.add(cid)

    def drop_view(self, cid: str) -> None:
        self.views.pop(cid, None)
        self.dirty.discard(cid)
        self.deleted.add(cid)

    def refold(self, owners: set[str]) -> None:
        """Rebuild these customers' views from their timeline rows."""
        self.cur.execute(f"SELECT {EVENT_COLUMNS} FROM customer_timeline WHERE customer_id = ANY(%s)",
                         (sorted(owners),))
        events: dict[str, list[CustomerEvent]] = defaultdict(list)
        for row in self.cur.fetchall():
            event = to_event(row)
            events[event.customer_id].append(event)
        for owner in owners:
            if events.get(owner):
                self.set_view(owner, customer_view.apply_all(customer_view.empty(owner), events[owner]))
            else:
                self.drop_view(owner)

    # -- merge markers ------------------------------------------------------------------------------
    def apply_marker(self, m: CustomerMerged) -> None:
        self.cur.execute("""INSERT INTO customer_view_merge (seq, survivor, alias, event_id, identifier, rule, event_time)
                            VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (seq) DO NOTHING""",
                         (m.seq, m.survivor, m.alias, m.event_id, m.identifier, m.rule, m.time))
        rows = self.alias_rows({m.alias, m.survivor})
        alias_row, survivor_row = rows.get(m.alias), rows.get(m.survivor)
        alias_news = alias_row is None or m.seq > alias_row.seq
        survivor_news = survivor_row is None or m.seq > survivor_row.seq
        if not alias_news and not survivor_news:
            return  # a marker older than what we know of both ids (redelivered or overtaken)
        alias_live = alias_row is None or alias_row.resolved == m.alias
        survivor_live = survivor_row is None or survivor_row.resolved == m.survivor
        if alias_news and survivor_news and alias_live and survivor_live:
            self._merge_live(m)
        else:
            self._rewire(m, alias_news, survivor_news)

    def _write_alias(self, cid: str, survivor: str, m: CustomerMerged) -> None:
        self.cur.execute("""
            INSERT INTO customer_view_alias (alias, survivor, seq, resolved) VALUES (%s, %s, %s, %s)
            ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor, seq = EXCLUDED.seq,
                merged_at = now()""", (cid, survivor, m.seq, survivor))

    def _merge_live(self, m: CustomerMerged) -> None:
        """Two live customers: fold the alias's view into the survivor's (exact: the fold is commutative)."""
        alias, survivor = m.alias, m.survivor
        self.lock([alias, survivor])
        self.load([alias, survivor])
        alias_view, survivor_view = self.views.get(alias), self.views.get(survivor)
        if alias_view is not None:
            self.set_view(survivor, customer_view.merge(survivor_view or customer_view.empty(survivor), alias_view))
            self.drop_view(alias)
        self._write_alias(survivor, survivor, m)
        self._write_alias(alias, survivor, m)
        self.cur.execute("UPDATE customer_view_alias SET resolved = %s WHERE resolved = %s", (survivor, alias))
        self.cur.execute("UPDATE customer_timeline SET customer_id = %s WHERE customer_id = %s", (survivor, alias))
        self.cur.execute("UPDATE customer_view_identifier SET customer_id = %s WHERE customer_id = %s",
                         (survivor, alias))

    def _rewire(self, m: CustomerMerged, alias_news: bool, survivor_news: bool) -> None:
        """The general case: update the map, re-resolve every id whose chain runs through these two,
        move their timeline rows and re-fold the customers that gained or lost events."""
        if alias_news:
            self._write_alias(m.alias, m.survivor, m)
        if survivor_news:
            self._write_alias(m.survivor, m.survivor, m)
        while True:  # find, lock, and look again until no concurrent change slipped in
            affected = self._chained_to({m.alias, m.survivor})
            links = self.alias_rows(affected)
            before = {cid: links[cid].resolved if cid in links else cid for cid in affected}
            after = {cid: self._follow(cid, links) for cid in affected}
            owners = set(before.values()) | set(after.values())
            held = set(self.held)
            self.lock(affected | owners)
            if self.held == held:
                break
        for cid, target in after.items():
            if cid in links:
                self.cur.execute("UPDATE customer_view_alias SET resolved = %s WHERE alias = %s", (target, cid))
        moved = sorted(cid for cid in affected if before[cid] != after[cid] or cid in (m.alias, m.survivor))
        for cid in moved:
            self.cur.execute("UPDATE customer_timeline SET customer_id = %s WHERE origin_customer_id = %s",
                             (after[cid], cid))
        self.views = {c: v for c, v in self.views.items() if c not in owners}
        self.refold(owners)
        self.upsert_identifiers({f"{kind}:{value}": owner for owner in owners if owner in self.views
                                 for kind, values in self.views[owner]["identities"].items() for value in values})
        log.info("customer ids rewired", extra={"survivor": m.survivor, "alias": m.alias, "seq": m.seq,
                                                "customers_refolded": len(owners)})

    def _chained_to(self, ids: set[str]) -> set[str]:
        """These ids and every id whose chain of survivors passes through one of them."""
        self.cur.execute("""
            WITH RECURSIVE chain(id) AS (
                SELECT unnest(%s::text[])
                UNION
                SELECT a.alias FROM customer_view_alias a JOIN chain c ON a.survivor = c.id AND a.alias <> a.survivor
            ) SELECT id FROM chain""", (sorted(ids),))
        return {r[0] for r in self.cur.fetchall()}

    def _follow(self, cid: str, links: dict[str, _AliasRow]) -> str:
        seen = set()
        while True:
            row = links.get(cid)
            if row is None:
                more = self.alias_rows({cid})
                if not more:
                    return cid
                links.update(more)
                row = more[cid]
            if row.survivor == cid or cid in seen:
                return cid
            seen.add(cid)
            cid = row.survivor

    def upsert_identifiers(self, owner_of: dict[str, str]) -> None:
        """Point these identifier keys at their customers."""
        if owner_of:
            execute_values(self.cur, """
                INSERT INTO customer_view_identifier (key, kind, customer_id) VALUES %s
                ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id""",
                sorted((key, key.partition(":")[0], cid) for key, cid in owner_of.items()), page_size=1000)

    # -- writing ------------------------------------------------------------------------------------
    def save(self) -> None:
        if self.deleted:
            self.cur.execute("DELETE FROM customer_view WHERE customer_id = ANY(%s)", (sorted(self.deleted),))
            self.cur.execute("DELETE FROM customer_view_search WHERE customer_id = ANY(%s)", (sorted(self.deleted),))
        self._save_terms()
        rows = []
        for cid in sorted(self.dirty):
            view = self.views[cid]
            first = view["first_contact"]["at"] if view["first_contact"] else None
            rows.append((cid, orjson.dumps(view).decode(), customer_view.display_name(view), view["event_count"],
                         first, view["last_event_at"]))
        if rows:
            execute_values(self.cur, """
                INSERT INTO customer_view (customer_id, state, display_name, event_count, first_seen_at, last_event_at)
                VALUES %s ON CONFLICT (customer_id) DO UPDATE SET state = EXCLUDED.state,
                    display_name = EXCLUDED.display_name, event_count = EXCLUDED.event_count,
                    first_seen_at = EXCLUDED.first_seen_at, last_event_at = EXCLUDED.last_event_at,
                    updated_at = now()""",
                rows, template="(%s, %s::jsonb, %s, %s, %s, %s)", page_size=1000)

    def _save_terms(self) -> None:
        """Rewrite the search terms of the customers whose name or company changed."""
        changed = {cid: customer_view.search_terms(self.views[cid]) for cid in self.dirty}
        changed = {cid: terms for cid, terms in changed.items() if terms != self.stored_terms.get(cid)}
        if not changed:
            return
        self.cur.execute("DELETE FROM customer_view_search WHERE customer_id = ANY(%s)", (sorted(changed),))
        rows = sorted((term, cid) for cid, terms in changed.items() for term in terms)
        if rows:
            execute_values(self.cur, "INSERT INTO customer_view_search (term, customer_id) VALUES %s "
                                     "ON CONFLICT DO NOTHING", rows, page_size=1000)


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

        batch = _Batch(cur)
        ids = {e.customer_id for e in events} | {m.survivor for m in markers} | {m.alias for m in markers}
        while True:  # lock every customer touched, then check that the aliases did not move meanwhile
            resolved = batch.resolved(ids)
            before = set(batch.held)
            batch.lock(ids | set(resolved.values()))
            if batch.held == before:
                break
        for m in sorted(markers, key=lambda m: m.seq):
            batch.apply_marker(m)
        # markers may have moved ids; without them the resolution above still holds
        self._apply_events(batch, events, batch.resolved(ids) if markers else resolved)
        batch.save()
        return outputs

    @staticmethod
    def _apply_events(batch: _Batch, events: list[CustomerEvent], owner: dict[str, str]) -> None:
        if not events:
            return
        batch.lock(owner[e.customer_id] for e in events)
        rows = {}
        for e in events:
            rows.setdefault(e.key, (e.key, owner[e.customer_id], e.customer_id, list(e.identifiers), e.time, e.id,
                                    e.source, e.type, e.channel, summarize(e), orjson.dumps(e.data).decode()))
        # the exactly-once guard: only events whose key is new get folded
        inserted = execute_values(batch.cur, """
            INSERT INTO customer_timeline (event_key, customer_id, origin_customer_id, identifiers, event_time,
                                           event_id, source, type, channel, summary, data)
            VALUES %s ON CONFLICT (event_key) DO NOTHING RETURNING event_key""",
            list(rows.values()), template="(%s, %s, %s, %s::text[], %s, %s, %s, %s, %s, %s, %s::jsonb)",
            page_size=1000, fetch=True)
        fresh = {r[0] for r in inserted}
        by_customer: dict[str, list[CustomerEvent]] = defaultdict(list)
        for e in events:
            if e.key in fresh:
                by_customer[owner[e.customer_id]].append(e)
                fresh.discard(e.key)  # a key twice in one batch applies once
        batch.load(by_customer)  # one query for every customer of the batch
        identifiers = {}
        for cid, evs in by_customer.items():
            batch.set_view(cid, customer_view.apply_all(batch.view(cid), evs))
            identifiers.update({key: cid for e in evs for key in e.identifiers})
        batch.upsert_identifiers(identifiers)
