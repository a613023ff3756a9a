"""Customer state: snapshots and changes of the customers a batch touched, and the clock tick.

Runs inside the view stage's transaction (the customer advisory locks are held), or in its own
transaction for the clock tick. For each customer it evaluates ``customer_state.derive`` on the
new view, compares the result with the stored snapshot, and when the content changed stores the
new version and writes the changes and the snapshot to the feed outbox (``feed_outbox``), which
the relay publishes to Kafka. The outbox rows commit or roll back with the read model, so a
change is produced exactly when the state changed, once.

When a customer is evaluated: at its latest event time when events arrive (never moving back: a
late event does not rewind the clock of a customer), and at the wall clock when ``next_review_at``
passes, so a customer who fell silent still churns.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Callable

import orjson
import psycopg2
import psycopg2.extras
from prometheus_client import Counter

from events import feed
from projections import customer_state, customer_view
from projections.customer_state import Rules
from projections.satisfaction import at_time
from services.common.db import connect, lock, lock_id, execute_values
from services.common.topics import CUSTOMER_CHANGES, CUSTOMER_STATE

log = logging.getLogger(__name__)

CHANGES = Counter("crm_customer_changes_total", "customer changes written to the feed outbox", ["type"])
TICKED = Counter("crm_customer_state_ticks_total", "customers re-evaluated by the clock tick")

_CE_HEADERS = [["content-type", "application/cloudevents+json; charset=utf-8"]]
_SNAPSHOT_HEADERS = [["content-type", "application/json"]]


def _version_header(version: int) -> list[list[str]]:
    """Snapshots and tombstones say their version in a header, so a consumer can tell a stale change."""
    return [["crm-version", str(version)]]


FUTURE_SLACK = timedelta(minutes=5)
"""An event stamped further in the future than this does not move a customer's clock past now."""


class StateProjection:
    def __init__(self, rules: Rules, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.rules = rules
        self.clock = clock

    # -- within the view stage's batch --------------------------------------------------------------
    def apply(self, cur, views: dict[str, dict | None], moved_into: dict[str, set[str]]) -> None:
        """Evaluate the customers whose views the batch changed (None: the view is gone)."""
        if not views:
            return
        cids = sorted(views)
        stored = self._stored(cur, cids)
        now = self.clock()
        gone = [c for c in cids if views[c] is None and c in stored and stored[c]["live"]]
        born = [c for c in cids if views[c] is not None and not (c in stored and stored[c]["live"])]
        merges = self._merge_causes(cur, gone, moved_into)
        splits = self._split_causes(cur, born)
        rows, outbox = [], []
        for cid in cids:
            view = views[cid]
            old = stored.get(cid)
            if view is None:
                if cid in gone:
                    version = old["version"] + 1
                    rows.append((cid, version, False, None, old["as_of"], None, None, None, []))
                    outbox.append(self._change(cid, version, "customer.merged", customer_view.ts(now),
                                               merges.get(cid, {"into": None}), None))
                    outbox.append((CUSTOMER_STATE, cid, None, _version_header(version)))
                continue
            latest = min(at_time(view["last_event_at"]), now + FUTURE_SLACK)
            as_of = max(old["as_of"], latest) if old else latest
            rows_out = self._evaluate(cid, view, as_of, old, splits.get(cid))
            rows.append(rows_out[0])
            outbox += rows_out[1]
        self._write(cur, rows, outbox)

    def erase(self, cur, cid: str, data: dict) -> None:
        """The customer was erased: its state row goes, downstream systems are told
        (``customer.erased``) and its snapshot is tombstoned on crm.customer-state."""
        stored = self._stored(cur, [cid]).get(cid)
        version = (stored["version"] if stored else 0) + 1
        cur.execute("DELETE FROM customer_state WHERE customer_id = %s", (cid,))
        self._write(cur, [], [self._change(cid, version, "customer.erased", data["erased_at"], data, None),
                              (CUSTOMER_STATE, cid, None, _version_header(version))])

    # -- the clock ----------------------------------------------------------------------------------
    def tick(self, cur, limit: int = 500, *, exclusive: bool = True, customer_locks: bool = True) -> int:
        """Re-evaluate at the clock the customers whose review time has come; returns how many.
        One worker ticks at a time (unless not ``exclusive``); the customer locks keep it apart from
        the view stage (``customer_locks=False``: the caller holds the view stage still some other
        way, and ticks many times in one transaction, where a lock per customer would fill
        PostgreSQL's lock table)."""
        if exclusive:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id("customer-state-tick"),))
            if not cur.fetchone()[0]:
                return 0
        now = self.clock()
        cur.execute("""SELECT customer_id FROM customer_state WHERE live AND next_review_at <= %s
                       ORDER BY next_review_at LIMIT %s""", (now, limit))
        cids = [r[0] for r in cur.fetchall()]
        if not cids:
            return 0
        if customer_locks:
            lock(cur, ("c:" + c for c in cids))
        stored = self._stored(cur, cids)
        cur.execute("SELECT customer_id, state FROM customer_view WHERE customer_id = ANY(%s)", (cids,))
        views = dict(cur.fetchall())
        rows, outbox = [], []
        for cid in cids:
            old = stored.get(cid)
            view = views.get(cid)
            if not old or not old["live"] or view is None or (old["next_review_at"] and old["next_review_at"] > now):
                continue  # changed meanwhile; the view stage has evaluated it
            row, out = self._evaluate(cid, customer_view.upgrade(view), max(old["as_of"], now), old, None)
            rows.append(row)
            outbox += out
        self._write(cur, rows, outbox)
        TICKED.inc(len(rows))
        return len(rows)

    # -- after a rebuild -----------------------------------------------------------------------------
    def reconcile(self, cur, retired: str) -> dict[str, int]:
        """After a rebuilt customer state took the place of the published one (``crm replay``; the
        replaced table is ``{retired}.customer_state``).

        The state is a function of the view, the time it is evaluated at and the previous snapshot
        (a stage's ``since``), and live workers evaluate at times a rebuild cannot repeat (clock
        ticks). So each rebuilt customer is judged as the live worker would judge it: its rebuilt
        view, evaluated at the published snapshot's time, after the published snapshot. Where that
        says the same, the published row stays as it is, version included; every difference is
        published as changes with a version above the published one. Ids published as gone keep
        their rows, so their versions keep growing if they come back."""
        columns = "customer_id, version, live, snapshot, as_of, next_review_at, lifecycle, tier, segments"
        cur.execute(f"""INSERT INTO customer_state ({columns}) SELECT {columns} FROM {retired}.customer_state o
                        WHERE NOT o.live AND NOT EXISTS (SELECT 1 FROM customer_state n
                                                         WHERE n.customer_id = o.customer_id)""")
        keys = [f"{{t}}.snapshot->'{k}'" for k in customer_state.CONTENT if k != "lifecycle"]
        keys.append("({t}.snapshot->'lifecycle') - 'since'")
        same = (f"jsonb_build_array({', '.join(keys).format(t='n')}) = "
                f"jsonb_build_array({', '.join(keys).format(t='o')})")
        adopt = """UPDATE customer_state n SET version = o.version, snapshot = o.snapshot, as_of = o.as_of,
                       next_review_at = o.next_review_at, lifecycle = o.lifecycle, tier = o.tier, segments = o.segments
                   FROM {retired}.customer_state o WHERE n.customer_id = o.customer_id AND {where}"""
        cur.execute(adopt.format(retired=retired, where=f"n.live = o.live AND (NOT n.live OR {same})"))
        counts = {"adopted": cur.rowcount, "changed": 0, "gone": 0, "changes": 0}
        cur.execute(f"""
            SELECT coalesce(n.customer_id, o.customer_id), n.live, v.state, n.as_of, o.version, o.live, o.snapshot,
                   o.as_of
            FROM customer_state n FULL JOIN {retired}.customer_state o ON n.customer_id = o.customer_id
            LEFT JOIN customer_view v ON v.customer_id = n.customer_id
            WHERE n.customer_id IS NULL OR o.customer_id IS NULL OR n.live <> o.live
               OR n.version <> o.version OR n.snapshot IS DISTINCT FROM o.snapshot""")
        rows, outbox, kept = [], [], []
        for cid, live, view, as_of, old_version, old_live, old_snapshot, old_as_of in cur.fetchall():
            version = (old_version or 0) + 1
            if live and view is not None:
                view = customer_view.upgrade(view)
                at = max(as_of, old_as_of) if old_as_of else as_of
                previous = old_snapshot if old_live else None
                after = customer_state.derive(view, at, self.rules, previous)
                if previous is not None and customer_state.same(previous, after):
                    kept.append(cid)
                    continue
                after = {**after, "version": version}
                found = customer_state.changes(previous, after)
                outbox += [self._change(cid, version, kind, after["as_of"], data, after, detail)
                           for kind, detail, data in found]
                outbox.append((CUSTOMER_STATE, cid, orjson.dumps(after), _SNAPSHOT_HEADERS + _version_header(version)))
                rows.append((cid, version, True, orjson.dumps(after).decode(), at,
                             customer_state.next_review(view, at, self.rules), after["lifecycle"]["stage"],
                             after["value"]["tier"], after["segments"]))
                counts["changed"] += 1
                counts["changes"] += len(found)
            elif old_live:  # published as live, gone in the rebuild
                outbox.append(self._change(cid, version, "customer.merged", customer_view.ts(old_as_of),
                                           {"into": None}, None))
                outbox.append((CUSTOMER_STATE, cid, None, _version_header(version)))
                rows.append((cid, version, False, None, old_as_of, None, None, None, []))
                counts["gone"] += 1
                counts["changes"] += 1
        if kept:
            cur.execute(adopt.format(retired=retired, where="n.customer_id = ANY(%s)"), (kept,))
            counts["adopted"] += len(kept)
        self._write(cur, rows, outbox)
        return counts

    # -- pieces -------------------------------------------------------------------------------------
    def _evaluate(self, cid: str, view: dict, as_of: datetime, old: dict | None, split: dict | None):
        """(customer_state row, outbox rows) of one live customer evaluated at ``as_of``."""
        previous = old["snapshot"] if old and old["live"] else None
        after = customer_state.derive(view, as_of, self.rules, previous)
        review = customer_state.next_review(view, as_of, self.rules)
        outbox = []
        if previous is not None and customer_state.same(previous, after):
            version = old["version"]
            after = previous  # nothing to say: the published snapshot stands (its as_of too)
        else:
            version = (old["version"] if old else 0) + 1
            after = {**after, "version": version}
            found = customer_state.changes(previous, after)
            if split is not None:
                found.insert(0, ("customer.unmerged", "", split))
            for kind, detail, data in found:
                outbox.append(self._change(cid, version, kind, after["as_of"], data, after, detail))
            outbox.append((CUSTOMER_STATE, cid, orjson.dumps(after), _SNAPSHOT_HEADERS + _version_header(version)))
        row = (cid, version, True, orjson.dumps(after).decode(), as_of, review, after["lifecycle"]["stage"],
               after["value"]["tier"], after["segments"])
        return row, outbox

    @staticmethod
    def _change(cid, version, kind, time, data, state, detail=""):
        CHANGES.labels(kind).inc()
        event = feed.change_event(cid, version, kind, time, data, state, detail)
        return (CUSTOMER_CHANGES, cid, orjson.dumps(event), _CE_HEADERS)

    @staticmethod
    def _stored(cur, cids: list[str]) -> dict[str, dict]:
        cur.execute("""SELECT customer_id, version, live, snapshot, as_of, next_review_at FROM customer_state
                       WHERE customer_id = ANY(%s)""", (cids,))
        return {r[0]: {"version": r[1], "live": r[2], "snapshot": r[3], "as_of": r[4], "next_review_at": r[5]}
                for r in cur.fetchall()}

    @staticmethod
    def _merge_causes(cur, gone: list[str], moved_into: dict[str, set[str]]) -> dict[str, dict]:
        """Why each gone customer went: the latest merge recorded for it, else where its rows moved."""
        causes: dict[str, dict] = {}
        if not gone:
            return causes
        cur.execute("""SELECT DISTINCT ON (source) source, target, identifiers, rule, event_id
                       FROM customer_view_change WHERE kind = 'merged' AND source = ANY(%s)
                       ORDER BY source, seq DESC""", (gone,))
        for source, target, identifiers, rule, event_id in cur.fetchall():
            causes[source] = {"into": target, "identifiers": list(identifiers), "rule": rule, "event_id": event_id}
        for cid in gone:
            if cid not in causes:
                targets = sorted(moved_into.get(cid, ()))
                causes[cid] = {"into": targets[0] if len(targets) == 1 else None}
        return causes

    @staticmethod
    def _split_causes(cur, born: list[str]) -> dict[str, dict]:
        """For customers appearing now: the split that made them, if one is recorded."""
        if not born:
            return {}
        cur.execute("""SELECT DISTINCT ON (target) target, source, identifiers, rule, event_id
                       FROM customer_view_change WHERE kind = 'unmerged' AND target = ANY(%s) AND source <> target
                       ORDER BY target, seq DESC""", (born,))
        return {target: {"from": source, "identifiers": list(identifiers), "rule": rule, "event_id": event_id}
                for target, source, identifiers, rule, event_id in cur.fetchall()}

    @staticmethod
    def _write(cur, rows: list[tuple], outbox: list[tuple]) -> None:
        if rows:
            execute_values(cur, """
                INSERT INTO customer_state (customer_id, version, live, snapshot, as_of, next_review_at, lifecycle,
                                            tier, segments)
                VALUES %s ON CONFLICT (customer_id) DO UPDATE SET version = EXCLUDED.version, live = EXCLUDED.live,
                    snapshot = EXCLUDED.snapshot, as_of = EXCLUDED.as_of, next_review_at = EXCLUDED.next_review_at,
                    lifecycle = EXCLUDED.lifecycle, tier = EXCLUDED.tier, segments = EXCLUDED.segments,
                    updated_at = now()""",
                rows, template="(%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s::text[])", page_size=1000)
        if outbox:
            execute_values(cur, "INSERT INTO feed_outbox (topic, key, value, headers) VALUES %s",
                           [(t, k, v, orjson.dumps(h).decode()) for t, k, v, h in outbox],
                           template="(%s, %s, %s, %s::jsonb)", page_size=1000)


class StateTicker:
    """Runs ``StateProjection.tick`` in its own transactions, on its own connection and thread,
    until no customer is due (bounded per run, so a backlog drains over several ticks)."""

    def __init__(self, state: StateProjection, dsn: str, max_per_run: int = 20_000):
        self.state = state
        self.dsn = dsn
        self.max_per_run = max_per_run
        self._conn = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-tick")
        self._stopping = False

    def stop(self) -> None:
        """A run in progress ends after its current transaction (the worker is stopping)."""
        self._stopping = True

    def _run(self) -> int:
        total = 0
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.dsn, application_name="crm-state-tick")
                psycopg2.extras.register_default_jsonb(self._conn, loads=orjson.loads)
            while total < self.max_per_run and not self._stopping:
                with self._conn, self._conn.cursor() as cur:
                    n = self.state.tick(cur)
                total += n
                if n == 0:
                    break
        except psycopg2.Error as exc:
            log.warning("customer state tick failed; the next one retries", extra={"error": str(exc).strip()})
            if self._conn is not None:
                self._conn.close()
            self._conn = None
        if total:
            log.info("customer state tick", extra={"customers": total})
        return total

    async def run(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run)
