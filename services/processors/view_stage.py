"""Customer-view stage: crm.customer-events -> the unified customer view in PostgreSQL.

Two facts decide where an event belongs, and the stage keeps both:

* every timeline row has a *home* identifier (the event's strongest, fixed for ever);
* the identifier map (``customer_view_identifier``) says which customer each identifier belongs
  to, as of which identity-graph version. Resolved events state it for their linked identifiers,
  identity markers (merged, unmerged, identified) for the identifiers that moved. The word of the
  highest version wins, so the map converges to the identity graph's final state whatever order
  the partitions are read in.

A row belongs to the customer its home maps to. When a statement moves an identifier, its rows
move with it and the customers concerned are folded again: a customer absorbed whole is merged
into the survivor's view with the commutative ``customer_view.merge``; any other change (a split,
an id that lost only some rows) is re-folded from the customer's timeline rows.

The timeline's primary key (source + id) lets only events not seen before into the fold, in the
same transaction that stores the offsets, so every event changes the view exactly once whatever
redeliveries happen. Advisory locks on identifiers, then on customers, each set taken at once in
a fixed order, keep concurrent workers apart.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

import orjson

from events.customer_events import MERGED, CustomerEvent, IdentityMarker, decode
from projections import customer_view, orders, satisfaction
from projections.identity import event_home, kind_of
from projections.timeline import summarize
from events import pii
from services.common.db import lock, execute_values
from services.common.vault import Vault
from services.common.timeline import EVENT_COLUMNS, to_event
from services.common.topics import CUSTOMER_EVENTS
from services.processors.indicator_stage import IndicatorProjection
from services.processors.records import Output, Record, deadletter
from services.processors.state_stage import StateProjection

log = logging.getLogger(__name__)

ERASURE = "customer.erasure_requested"


def _pseudonyms(keys) -> set[str]:
    return {k.partition(":")[2] for k in keys if pii.PSEUDONYM.match(k.partition(":")[2])}


def purge_copies(cur, cids: list[str]) -> None:
    """Delete the customers' rows from every copy of the read models outside ``public``: a
    rebuild in progress (``crm_rebuild``) and retired tables kept after a swap (``crm_retired_*``).
    Their tokens are unreadable already (the keys are shredded); this leaves not even the ids."""
    cur.execute("""SELECT table_schema, table_name, column_name FROM information_schema.columns
                   WHERE (table_schema = 'crm_rebuild' OR table_schema LIKE 'crm\_retired\_%%')
                     AND column_name IN ('customer_id', 'survivor', 'alias', 'target', 'source')
                     AND table_name NOT IN ('processor_offsets')""")
    by_table: dict[tuple[str, str], list[str]] = defaultdict(list)
    for schema, table, column in cur.fetchall():
        by_table[(schema, table)].append(column)
    for (schema, table), columns in sorted(by_table.items()):
        where = " OR ".join(f'"{c}" = ANY(%(c)s)' for c in sorted(columns))
        cur.execute(f'DELETE FROM "{schema}"."{table}" WHERE {where}', {"c": cids})


class _Batch:
    """The view stage's work on one batch, inside the runner's transaction."""

    def __init__(self, cur, vault: Vault | None = None):
        self.cur = cur
        self.vault = vault
        self.views: dict[str, customer_view.View] = {}
        self.deleted: set[str] = set()
        self.dirty: set[str] = set()
        self.stored_terms: dict[str, set[str]] = {}  # search terms of views as loaded
        self.loaded: dict[str, customer_view.View | None] = {}  # views as they were before the batch
        self.moved_into: dict[str, set[str]] = {}  # customer -> customers its identifiers moved to

    def lock(self, names) -> None:
        lock(self.cur, names)

    # -- views --------------------------------------------------------------------------------------
    def load(self, ids) -> None:
        missing = sorted(set(ids) - set(self.views) - self.deleted - set(self.stored_terms))
        if missing:
            self.cur.execute("SELECT customer_id, state FROM customer_view WHERE customer_id = ANY(%s)", (missing,))
            found = {cid: customer_view.upgrade(state) for cid, state in self.cur.fetchall()}
            for cid in missing:
                self.loaded[cid] = found.get(cid)
                if cid in found:
                    self.views[cid] = found[cid]
                self.stored_terms[cid] = self.terms(found[cid]) if cid in found else set()

    def view(self, cid: str) -> customer_view.View:
        self.load([cid])
        return self.views.get(cid) or customer_view.empty(cid)

    def set_view(self, cid: str, view: customer_view.View) -> None:
        self.views[cid] = view
        self.deleted.discard(cid)
        self.dirty.add(cid)

    def drop_view(self, cid: str) -> None:
        self.load([cid])
        self.views.pop(cid, None)
        self.dirty.discard(cid)
        self.deleted.add(cid)

    def refold(self, owners: set[str]) -> None:
        """Rebuild these customers' views from their timeline rows."""
        if not owners:
            return
        self.load(owners)
        self.cur.execute(f"SELECT {EVENT_COLUMNS} FROM customer_timeline WHERE customer_id = ANY(%s)",
                         (sorted(owners),))
        events: dict[str, list[CustomerEvent]] = defaultdict(list)
        rows = [to_event(row) for row in self.cur.fetchall()]
        for event in (self.vault.open_events(self.cur, rows) if self.vault is not None else rows):
            events[event.customer_id].append(event)
        for owner in owners:
            if events.get(owner):
                self.set_view(owner, customer_view.apply_all(customer_view.empty(owner), events[owner]))
            else:
                self.drop_view(owner)

    def terms(self, view: customer_view.View) -> set[str]:
        """Search terms as stored: with the vault, the HMAC of each term and of each of its
        prefixes (up to 40 characters), made from the opened name and company; no name is stored."""
        if self.vault is None:
            return customer_view.search_terms(view)
        traits = {t: view["traits"][t] for t in ("name", "company") if t in view["traits"]}
        if not traits:
            return set()
        opened = self.vault.open_text(self.cur, traits)
        terms = customer_view.search_terms({"traits": {t: v for t, v in opened.items()
                                                       if v.get("value") != pii.ERASED}})
        return {self.vault.search_digest(term[:n]) for term in terms for n in range(1, min(len(term), 40) + 1)}

    # -- writing ------------------------------------------------------------------------------------
    def save(self) -> None:
        if self.deleted:
            self.cur.execute("DELETE FROM customer_view WHERE customer_id = ANY(%s)", (sorted(self.deleted),))
        self._save_terms()
        rows = []
        for cid in sorted(self.dirty):
            view = self.views[cid]
            first = view["first_contact"]["at"] if view["first_contact"] else None
            sat = satisfaction.assess(view)
            rows.append((cid, orjson.dumps(view).decode(), customer_view.display_name(view), view["event_count"],
                         first, view["last_event_at"], sat["index"], sat["at_risk"],
                         [r["code"] for r in sat["reasons"]]))
        if rows:
            execute_values(self.cur, """
                INSERT INTO customer_view (customer_id, state, display_name, event_count, first_seen_at, last_event_at,
                                           satisfaction_index, at_risk, at_risk_reasons)
                VALUES %s ON CONFLICT (customer_id) DO UPDATE SET state = EXCLUDED.state,
                    display_name = EXCLUDED.display_name, event_count = EXCLUDED.event_count,
                    first_seen_at = EXCLUDED.first_seen_at, last_event_at = EXCLUDED.last_event_at,
                    satisfaction_index = EXCLUDED.satisfaction_index, at_risk = EXCLUDED.at_risk,
                    at_risk_reasons = EXCLUDED.at_risk_reasons, updated_at = now()""",
                rows, template="(%s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s::text[])", page_size=1000)

    def _save_terms(self) -> None:
        """Rewrite the search terms of the customers whose name or company changed (or who are gone)."""
        changed = {cid: self.terms(self.views[cid]) for cid in self.dirty}
        changed.update({cid: set() for cid in self.deleted})
        changed = {cid: terms for cid, terms in changed.items() if terms != self.stored_terms.get(cid)}
        if not changed:
            return
        self.cur.execute("DELETE FROM customer_view_search WHERE customer_id = ANY(%s)", (sorted(changed),))
        rows = sorted((term, cid) for cid, terms in changed.items() for term in terms)
        if rows:
            execute_values(self.cur, "INSERT INTO customer_view_search (term, customer_id) VALUES %s "
                                     "ON CONFLICT DO NOTHING", rows, page_size=1000)


class ViewStage:
    """The projections of crm.customer-events: the unified customer view and, in the same
    transaction, the satisfaction indicators and the customer state with its feed outbox
    (``indicators`` and ``state``; None leaves them out)."""

    name = "customer_view"
    topic = CUSTOMER_EVENTS

    def __init__(self, indicators: IndicatorProjection | None = None, state: StateProjection | None = None,
                 vault: Vault | None = None):
        self.indicators = indicators
        self.state = state
        self.vault = vault

    def prepare(self, cur, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        events: list[CustomerEvent] = []
        markers: list[IdentityMarker] = []
        arrived: dict[str, datetime] = {}
        for record in records:
            try:
                item = decode(record.value or b"")
            except (ValueError, KeyError, TypeError) as exc:
                outputs.append(deadletter(record, stage=self.name, kind="undecodable",
                                          reason=f"not a customer event: {type(exc).__name__}: {exc}"))
                continue
            (markers if isinstance(item, IdentityMarker) else events).append(item)
            if isinstance(item, CustomerEvent):
                arrived.setdefault(item.key, record.timestamp)
        events, markers, erasures = self._unerased(cur, events, markers)
        if erasures:
            self._purge(cur, erasures)
        if not events and not markers:
            return outputs
        if self.vault is not None:
            events = self.vault.open_events(cur, events)

        batch = _Batch(cur, self.vault)
        # what the batch says about identifiers: per identifier, the word of the highest version
        said: dict[str, tuple[str, int]] = {}
        for key, cid, version in ([(k, m.customer_id, m.version) for m in markers for k in m.identifiers]
                                  + [(k, e.customer_id, e.version) for e in events for k in e.linked]):
            if key not in said or version > said[key][1]:
                said[key] = (cid, version)
        homes = {e.key: event_home(e.type, e.identifiers) for e in events}
        keys = sorted(set(said) | set(homes.values()))
        batch.lock("i:" + k for k in keys)
        cur.execute("SELECT key, customer_id, version FROM customer_view_identifier WHERE key = ANY(%s)", (keys,))
        current = {k: (c, v) for k, c, v in cur.fetchall()}
        updates = {k: s for k, s in said.items() if k not in current or s[1] > current[k][1]}
        owner_of = {k: c for k, (c, _) in current.items()}
        owner_of.update({k: c for k, (c, _) in updates.items()})
        moves = {k: c for k, (c, _) in updates.items() if k in current and current[k][0] != c}
        owners = {owner_of[h] for h in homes.values()}
        batch.lock("c:" + c for c in owners | set(moves.values()) | {current[k][0] for k in moves})

        if updates:
            execute_values(cur, """
                INSERT INTO customer_view_identifier (key, kind, customer_id, version) VALUES %s
                ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id, version = EXCLUDED.version
                WHERE customer_view_identifier.version < EXCLUDED.version""",
                sorted((k, kind_of(k), c, v) for k, (c, v) in updates.items()), page_size=1000)
        fresh = self._insert(batch, events, homes, owner_of)
        refolded = self._move(batch, moves)  # after the insert, so a re-fold holds the new rows too
        self._fold(batch, fresh, homes, owner_of, refolded)
        self._orders(cur, fresh, set(moves))
        self._record(cur, markers)
        batch.save()
        if self.indicators is not None:
            touched = batch.dirty | batch.deleted
            outputs += self.indicators.apply(
                cur, fresh, arrived, {e.key: owner_of[homes[e.key]] for e in fresh},
                {c: batch.loaded.get(c) for c in touched}, {c: batch.views.get(c) for c in touched})
        if self.state is not None:
            self.state.apply(cur, {c: batch.views.get(c) for c in batch.dirty | batch.deleted}, batch.moved_into)
        return outputs

    def _unerased(self, cur, events: list[CustomerEvent], markers: list[IdentityMarker]):
        """The batch without erasure requests and without what concerns an erased customer (read
        again by a rebuild or redelivered), and the erasure requests by customer."""
        erasures = {e.customer_id: e for e in events if e.type == ERASURE}
        cids = sorted({e.customer_id for e in events} | {m.customer_id for m in markers}
                      | {m.source for m in markers if m.source})
        cur.execute("SELECT customer_id FROM public.privacy_erasure WHERE customer_id = ANY(%s)", (cids,))
        recorded = {r[0] for r in cur.fetchall()}
        # an event naming a pseudonym whose subject is gone (shredded after the event was resolved)
        # concerns an erased person too
        unknown: set[str] = set()
        if self.vault is not None:
            named = {p for item in (*events, *markers) for p in _pseudonyms(item.identifiers)}
            unknown = named - self.vault.existing(cur, named)
        # an erasure is carried out here when this database shredded the keys (recorded), or is shredding
        # them right now (the keys still there: the identity stage commits after publishing); one naming
        # keys this database never had is another platform's (tests share a broker among databases)
        erasures = {cid: e for cid, e in erasures.items()
                    if cid in recorded or not (_pseudonyms(e.identifiers) and _pseudonyms(e.identifiers) <= unknown)}
        gone = recorded | {e.customer_id for e in events if e.type == ERASURE}
        if not gone and not unknown:
            return events, markers, erasures
        return ([e for e in events if e.customer_id not in gone and not unknown.intersection(_pseudonyms(e.identifiers))],
                [m for m in markers if m.customer_id not in gone and m.source not in gone
                 and not unknown.intersection(_pseudonyms(m.identifiers))], erasures)

    def _purge(self, cur, erasures: dict[str, CustomerEvent]) -> None:
        """Remove erased customers from every read model (and from any rebuilt or retired copy of
        one), tell downstream systems and tombstone their state."""
        cids = sorted(erasures)
        lock(cur, ("c:" + c for c in cids))
        cur.execute("SELECT key FROM customer_view_identifier WHERE customer_id = ANY(%s)", (cids,))
        keys = [r[0] for r in cur.fetchall()]
        for sql in ("DELETE FROM customer_timeline WHERE customer_id = ANY(%(c)s) OR home = ANY(%(k)s)",
                    "DELETE FROM customer_view_search WHERE customer_id = ANY(%(c)s)",
                    "DELETE FROM customer_view_identifier WHERE customer_id = ANY(%(c)s) OR key = ANY(%(k)s)",
                    "DELETE FROM customer_view_alias WHERE survivor = ANY(%(c)s) OR alias = ANY(%(c)s)",
                    "DELETE FROM customer_view_change WHERE target = ANY(%(c)s) OR source = ANY(%(c)s)",
                    "DELETE FROM customer_view WHERE customer_id = ANY(%(c)s)",
                    "DELETE FROM customer_order WHERE customer_id = ANY(%(c)s)",
                    "DELETE FROM webhook_delivery WHERE event_id IN "
                    "(SELECT event_id FROM webhook_event WHERE customer_id = ANY(%(c)s))",
                    "DELETE FROM webhook_event WHERE customer_id = ANY(%(c)s)"):
            cur.execute(sql, {"c": cids, "k": keys})
        purge_copies(cur, cids)
        for cid, event in erasures.items():
            cur.execute("SELECT subjects, erased_at FROM public.privacy_erasure WHERE customer_id = %s", (cid,))
            row = cur.fetchone()
            if self.state is not None:
                self.state.erase(cur, cid, {"erased_at": customer_view.ts(row[1] if row else event.time),
                                            "event_id": event.id, "subjects": row[0] if row else 0})
        log.info("customers erased from the read models", extra={"customers": len(cids)})

    @staticmethod
    def _move(batch: _Batch, moves: dict[str, str]) -> set[str]:
        """Move the rows of identifiers that changed customer; fold the customers concerned again.
        Returns the customers re-folded from their timeline rows."""
        if not moves:
            return set()
        cur = batch.cur
        cur.execute("SELECT home, customer_id, count(*) FROM customer_timeline WHERE home = ANY(%s) "
                    "GROUP BY home, customer_id", (sorted(moves),))
        flows: dict[str, set[str]] = defaultdict(set)  # source customer -> targets it sent rows to
        for home_key, source, _ in cur.fetchall():
            if source != moves[home_key]:
                flows[source].add(moves[home_key])
        if not flows:
            return set()
        batch.moved_into = dict(flows)
        execute_values(cur, """UPDATE customer_timeline t SET customer_id = m.customer_id
                               FROM (VALUES %s) AS m(home, customer_id)
                               WHERE t.home = m.home AND t.customer_id <> m.customer_id""",
                       sorted(moves.items()), page_size=1000)
        sources = set(flows)
        targets = {t for ts in flows.values() for t in ts}
        cur.execute("SELECT DISTINCT customer_id FROM customer_timeline WHERE customer_id = ANY(%s)",
                    (sorted(sources),))
        remaining = {r[0] for r in cur.fetchall()}
        batch.load(sources | targets)
        # a target whose every source came over whole is the commutative merge of the views
        feeding: dict[str, set[str]] = defaultdict(set)
        for source, ts in flows.items():
            for t in ts:
                feeding[t].add(source)
        whole = {t for t, ss in feeding.items()
                 if t not in sources and all(s not in remaining and flows[s] == {t} for s in ss)}
        for target in sorted(whole):
            view = batch.view(target)
            for source in sorted(feeding[target]):
                if source in batch.views:
                    view = customer_view.merge(view, batch.views[source])
            view["customer_id"] = target
            batch.set_view(target, view)
        for source in sources - remaining:
            batch.drop_view(source)
        refold = (sources & remaining) | (targets - whole)
        batch.refold(refold)
        log.info("identifiers moved", extra={"identifiers": len(moves), "customers_merged_whole": len(whole),
                                             "customers_refolded": len(refold)})
        return refold

    @staticmethod
    def _insert(batch: _Batch, events: list[CustomerEvent], homes: dict[str, str], owner_of: dict[str, str]
                ) -> list[CustomerEvent]:
        """Add the events to the timeline; returns those not seen before (the exactly-once guard)."""
        if not events:
            return []
        rows = {}
        for e in events:
            h = homes[e.key]
            rows.setdefault(e.key, (e.key, owner_of[h], h, list(e.identifiers), list(e.refused), e.time, e.id,
                                    e.source, e.type, e.channel, summarize(e), orjson.dumps(e.data).decode()))
        inserted = execute_values(batch.cur, """
            INSERT INTO customer_timeline (event_key, customer_id, home, identifiers, refused, event_time,
                                           event_id, source, type, channel, summary, data)
            VALUES %s ON CONFLICT (event_key) DO NOTHING RETURNING event_key""",
            list(rows.values()), template="(%s, %s, %s, %s::text[], %s::text[], %s, %s, %s, %s, %s, %s, %s::jsonb)",
            page_size=1000, fetch=True)
        keys = {r[0] for r in inserted}
        fresh = []
        for e in events:
            if e.key in keys:
                keys.discard(e.key)  # a key twice in one batch applies once
                fresh.append(e)
        return fresh

    @staticmethod
    def _fold(batch: _Batch, fresh: list[CustomerEvent], homes: dict[str, str], owner_of: dict[str, str],
              refolded: set[str]) -> None:
        """Fold the new events into their customers' views (a re-folded view already holds them)."""
        by_customer: dict[str, list[CustomerEvent]] = defaultdict(list)
        for e in fresh:
            owner = owner_of[homes[e.key]]
            if owner not in refolded:
                by_customer[owner].append(e)
        batch.load(by_customer)  # one query for every customer of the batch
        for cid, evs in by_customer.items():
            batch.set_view(cid, customer_view.apply_all(batch.view(cid), evs))

    @staticmethod
    def _orders(cur, fresh: list[CustomerEvent], moved: set[str]) -> None:
        """Fold the new order events into their orders (``projections.orders``), and give every
        order touched, or spoken of by rows that moved, the customer of its latest timeline row."""
        new: dict[str, list[CustomerEvent]] = defaultdict(list)
        for e in fresh:
            if orders.is_order_event(e):
                new[str(e.data["order_id"])].append(e)
        ids = set(new)
        if moved:
            cur.execute("SELECT DISTINCT data->>'order_id' FROM customer_timeline "
                        "WHERE type LIKE 'order.%%' AND home = ANY(%s)", (sorted(moved),))
            ids |= {r[0] for r in cur.fetchall() if r[0]}
        if not ids:
            return
        wanted = sorted(ids)
        lock(cur, ("o:" + i for i in wanted))
        cur.execute("SELECT order_id, state FROM customer_order WHERE order_id = ANY(%s)", (wanted,))
        states = dict(cur.fetchall())
        for oid, evs in new.items():
            states[oid] = orders.apply_all(states.get(oid) or orders.empty(oid), evs)
        cur.execute("""SELECT DISTINCT ON (data->>'order_id') data->>'order_id', customer_id FROM customer_timeline
                       WHERE type LIKE 'order.%%' AND data->>'order_id' = ANY(%s)
                       ORDER BY data->>'order_id', event_time DESC, event_key DESC""", (wanted,))
        owner = dict(cur.fetchall())
        rows = [(oid, owner[oid], state["status"], state["placed_at"], state["updated_at"], state["late"],
                 orjson.dumps(state).decode()) for oid, state in sorted(states.items()) if oid in owner]
        if rows:
            execute_values(cur, """
                INSERT INTO customer_order (order_id, customer_id, status, placed_at, last_event_at, late, state)
                VALUES %s ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
                    status = EXCLUDED.status, placed_at = EXCLUDED.placed_at, last_event_at = EXCLUDED.last_event_at,
                    late = EXCLUDED.late, state = EXCLUDED.state, updated_at = now()""",
                rows, template="(%s, %s, %s, %s, %s, %s, %s::jsonb)", page_size=1000)

    @staticmethod
    def _record(cur, markers: list[IdentityMarker]) -> None:
        """Keep the explanation of every merge and split, and who each merged-away id answers to."""
        changes = [m for m in markers if m.seq]
        if changes:
            execute_values(cur, """
                INSERT INTO customer_view_change (seq, kind, target, source, identifiers, event_id, identifier, rule,
                                                  event_time, version)
                VALUES %s ON CONFLICT (seq, source, target) DO NOTHING""",
                [(m.seq, "merged" if m.type == MERGED else "unmerged", m.customer_id, m.source, list(m.identifiers),
                  m.event_id, m.identifier, m.rule, m.time, m.version) for m in changes])
        aliases = {}
        for m in markers:
            if m.type == MERGED and (m.source not in aliases or m.version > aliases[m.source][1]):
                aliases[m.source] = (m.customer_id, m.version)
        if aliases:
            execute_values(cur, """
                INSERT INTO customer_view_alias (alias, survivor, version) VALUES %s
                ON CONFLICT (alias) DO UPDATE SET survivor = EXCLUDED.survivor, version = EXCLUDED.version,
                    merged_at = now()
                WHERE customer_view_alias.version < EXCLUDED.version""",
                sorted((a, s, v) for a, (s, v) in aliases.items()))
