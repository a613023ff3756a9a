"""``crm replay``: rebuild projections from the log beside the live ones, then swap them in.

A rebuild runs the processors' own stages, unchanged, over the log from its first record, writing
into the schema ``crm_rebuild`` of the same database: the migrations create every table there
under the same names, and the rebuild's connections put that schema first on their search path.
Its positions are stored in the rebuilt schema with its tables, batch by batch, so a rebuild that
stops resumes where it was. What the stages would publish is dropped: the log already holds it.

Scopes (a scope is the unit whose tables share one transaction and one position):

* ``identity``: the identity graph, from ``crm.touchpoints`` (or the archive of accepted events).
* ``view``: the customer view, timeline, satisfaction indicators and customer state, from
  ``crm.customer-events``.
* ``all``: both, from ``crm.touchpoints`` (or the archive): the identity stage's output goes
  straight into the view stage in the same transaction, so a fix in identity resolution reaches
  every projection.

Catching up and the swap. The rebuild follows the live workers' stored positions (never past
them). When it is close, one transaction locks the live positions of the scope's topic (``FOR
UPDATE``: live batches of that stage wait at their first statement; nothing else stops), the
rebuild consumes exactly up to them, the customer state is brought to the same clock on both sides,
and then, still in that transaction: the live tables move to a schema ``crm_retired_<time>``, the
rebuilt ones into ``public``, sequences and versions continue above the live ones, the customer
state keeps every published snapshot the rebuild agrees with and publishes the differences as
changes (``StateProjection.reconcile``), the rebuilt tables are compared with the replaced ones,
and for ``all`` the view stage's position jumps to the end of ``crm.customer-events`` (whatever the
old identity stage produced is already folded, rebuilt). Commit: the next live batch runs on the
rebuilt tables from exactly where the replaced ones ended. Readers never see a half-swapped state.

Live state that is not a fold of the log is kept as it is: the positions, the feed outbox, alert
states (``indicator_alert``), webhooks, the archive and the dead-letter bookkeeping.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import orjson
import psycopg2
import psycopg2.extras

from projections.indicators import MEASURES
from services.common import db
from services.common.kafka_security import PLAINTEXT, KafkaSecurity
from services.common.settings import Settings
from services.common.topics import CUSTOMER_EVENTS, DEADLETTER, TOUCHPOINTS
from services.processors.records import Output, Record

log = logging.getLogger(__name__)

REBUILD_SCHEMA = "crm_rebuild"

IDENTITY_TABLES = ("identity_identifier", "identity_customer", "identity_state", "identity_link", "identity_change",
                   "identity_refusal")
VIEW_TABLES = ("customer_view", "customer_view_identifier", "customer_view_alias", "customer_view_search",
               "customer_timeline", "customer_view_change", "indicator_minute", "indicator_hour", "indicator_thread",
               "customer_state", "customer_order")
KEPT_TABLES = ("schema_migrations", "processor_offsets", "feed_outbox", "indicator_alert", "event_archive",
               "replay_run", "deadletter_redrive", "webhook_subscription", "webhook_event", "webhook_delivery", "webhook_attempt",
               "privacy_subject", "privacy_erasure",
               "api_key", "audit_log",  # security: API keys and the audit log (008_security.sql)
               "operator",  # the dashboard's operators (011_dashboard.sql)
               "survey_response")  # which survey links were answered: single use (012_surveys.sql)
"""Tables that are not folds of the log, never rebuilt (a test checks every table is classified)."""

HISTORY = {"identity_change", "identity_state", "customer_view_change", "customer_view_alias"}
"""Tables whose rows record the path taken (intermediate merges, version counters): a rebuild that
batches differently takes another path to the same result, so they are compared only when the
scope reads them from the log (``view``)."""

VOLATILE = {"updated_at", "created_at", "recorded_at", "archived_at", "merged_at", "applied_at"}
ORDERING = {"identity_identifier": {"component", "version"}, "identity_link": {"component"},
            "identity_refusal": {"component"},
            "identity_customer": {"merged_into"}, "customer_view_identifier": {"version"},
            "customer_state": {"version", "snapshot", "as_of", "next_review_at"}, "indicator_thread": {"state"},
            # what a guard refused when the event was resolved: an event sent twice may be resolved
            # twice, before and after a link, and the first applied stays (README, identity guards)
            "customer_timeline": {"refused"}}
"""Columns that order or label things and depend on how the log was batched, not on what it says."""

_SUMS = f"dim <> 'segment' AND greatest({', '.join(f'abs({m})' for m in MEASURES)}) > 1e-9"
ROWS = {"customer_state": "live",  # ids merged away are history too
        "identity_customer": "customer_id IN (SELECT customer_id FROM {s}.identity_identifier)",
        "indicator_minute": _SUMS, "indicator_hour": _SUMS}
"""The rows compared: customers that own identifiers (transient ids depend on batching), and
indicator sums that are not zero (a sum that went up and down again is no sum), without the
segment dimension: an event is tagged with the customer's segment as known when it is processed,
and a rebuild, which knows every order already, may tag it otherwise."""

EXPRESSIONS = {"customer_state": [f"snapshot->'{k}'" for k in ("profile", "lifecycle", "value", "segments",
                                                                "satisfaction")],
               "indicator_thread": ["(SELECT jsonb_agg(m - 'segment') FROM jsonb_array_elements(state->'messages') m)",
                                    "state->'kind'"]}


@dataclass(frozen=True)
class Scope:
    name: str
    topic: str
    tables: tuple[str, ...]
    sequences: tuple[str, ...] = ()
    archive_ok: bool = False


SCOPES = {
    "identity": Scope("identity", TOUCHPOINTS, IDENTITY_TABLES, ("identity_component_seq",), archive_ok=True),
    "view": Scope("view", CUSTOMER_EVENTS, VIEW_TABLES),
    "all": Scope("all", TOUCHPOINTS, IDENTITY_TABLES + VIEW_TABLES, ("identity_component_seq",), archive_ok=True),
}


class ReplayError(Exception):
    """The rebuild cannot go on; the message says why and what to do."""


def rebuild_dsn(dsn: str, schema: str = REBUILD_SCHEMA) -> str:
    """The DSN whose sessions see the rebuilt tables (unqualified names resolve to ``schema``)."""
    return db.derive_dsn(dsn, options=f"-c search_path={schema}")  # keeps the password apart


# -- the stages, as the processor builds them --------------------------------------------------------
def _stages(cfg: Settings, scope: Scope):
    from projections import alerts
    from projections.business_hours import Calendar
    from projections.customer_state import load_rules
    from services.processors.identity_stage import IdentityStage
    from services.processors.indicator_stage import IndicatorProjection
    from services.processors.state_stage import StateProjection
    from services.processors.view_stage import ViewStage

    from services.common.vault import from_settings as vault_from_settings

    # the live vault: a rebuild skips what erasures shredded, and seals its search terms the same way
    vault = vault_from_settings(cfg)
    identity = IdentityStage(cfg.default_region, cfg.identity_limits, archive=False, vault=vault,
                             blocked=cfg.blocked)
    state = StateProjection(load_rules(cfg.customer_state_rules or None))
    view = ViewStage(IndicatorProjection(Calendar.from_config(cfg.business_hours), cfg.indicator_max_lateness_s,
                                         alerts.rules(cfg.indicator_alerts)), state, vault)
    if scope.name == "identity":
        return identity, None
    if scope.name == "view":
        return view, state
    return _Pipeline(identity, view), state


class _Pipeline:
    """Identity then view in one transaction: the resolved events go straight into the view stage."""

    name = "rebuild"
    topic = TOUCHPOINTS

    def __init__(self, identity, view):
        self.identity, self.view = identity, view

    def prepare(self, cur, records: list[Record]) -> list[Output]:
        outputs = self.identity.prepare(cur, records)
        stamp = max(r.timestamp_ms or 0 for r in records)
        resolved = [Record(CUSTOMER_EVENTS, 0, i, o.key, o.value, o.headers, o.timestamp_ms or stamp)
                    for i, o in enumerate(outputs) if o.topic == CUSTOMER_EVENTS]
        rest = [o for o in outputs if o.topic != CUSTOMER_EVENTS]
        return rest + (self.view.prepare(cur, resolved) if resolved else [])


# -- where the records come from ----------------------------------------------------------------------
class KafkaSource:
    """Reads one topic by position, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str, max_records: int, security: KafkaSecurity = PLAINTEXT):
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_poll_records=max_records,
                                      client_id="crm-replay", **security.kafka_python())
        partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            raise ReplayError(f"topic {topic} not found at {bootstrap}")
        self.tps = {p: TopicPartition(topic, p) for p in sorted(partitions)}
        self.consumer.assign(list(self.tps.values()))

    def partitions(self) -> list[int]:
        return list(self.tps)

    def end_offsets(self) -> dict[int, int]:
        return {tp.partition: o for tp, o in self.consumer.end_offsets(list(self.tps.values())).items()}

    def fetch(self, positions: dict[int, int], targets: dict[int, int], max_records: int
              ) -> tuple[list[Record], dict[int, int]]:
        """Records from ``positions`` up to (not including) ``targets``, and the positions after them."""
        active = [p for p in self.tps if positions.get(p, 0) < targets.get(p, 0)]
        if not active:
            return [], {}
        for p in active:
            if self.consumer.position(self.tps[p]) != positions.get(p, 0):
                self.consumer.seek(self.tps[p], positions.get(p, 0))
        self.consumer.pause(*[tp for p, tp in self.tps.items() if p not in active])
        self.consumer.resume(*[self.tps[p] for p in active])
        out = []
        for tp, records in self.consumer.poll(timeout_ms=1000, max_records=max_records).items():
            for r in records:
                if r.offset < targets[tp.partition]:
                    out.append(Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()),
                                      r.timestamp))
        # the consumer's position is past what it returned (and past control records, if any)
        return out, {p: min(self.consumer.position(self.tps[p]), targets[p]) for p in active}

    def close(self) -> None:
        self.consumer.close()


class ArchiveSource:
    """Reads the archive of accepted events (``event_archive``) by Kafka position. It holds every
    accepted record below the live identity stage's positions (written in the same transactions);
    dead-lettered records are not in it, so positions jump over them."""

    def __init__(self, dsn: str, topic: str):
        self.topic = topic
        self.conn = db.connect(dsn, application_name="crm-replay-archive", autocommit=True)

    def partitions(self) -> list[int]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT DISTINCT partition FROM public.event_archive WHERE topic = %s ORDER BY 1", (self.topic,))
            return [r[0] for r in cur.fetchall()]

    def end_offsets(self) -> dict[int, int]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT partition, max(kafka_offset) + 1 FROM public.event_archive WHERE topic = %s "
                        "GROUP BY 1", (self.topic,))
            return dict(cur.fetchall())

    def fetch(self, positions: dict[int, int], targets: dict[int, int], max_records: int
              ) -> tuple[list[Record], dict[int, int]]:
        out: list[Record] = []
        moved: dict[int, int] = {}
        active = [p for p, t in targets.items() if positions.get(p, 0) < t]
        share = max(1, max_records // max(1, len(active)))
        with self.conn.cursor() as cur:
            for p in active:
                cur.execute("""SELECT kafka_offset, key, value, headers, record_time FROM public.event_archive
                               WHERE topic = %s AND partition = %s AND kafka_offset >= %s AND kafka_offset < %s
                               ORDER BY kafka_offset LIMIT %s""", (self.topic, p, positions.get(p, 0), targets[p], share))
                rows = cur.fetchall()
                for offset, key, value, headers, at in rows:
                    out.append(Record(self.topic, p, offset, bytes(key) if key is not None else None, bytes(value),
                                      tuple((base64.b64decode(k).decode("utf-8", "surrogatepass"), base64.b64decode(v))
                                            for k, v in headers), int(at.timestamp() * 1000)))
                # fewer rows than asked: nothing else is archived below the target (the rest were dead letters)
                moved[p] = rows[-1][0] + 1 if len(rows) == share else targets[p]
        return out, moved

    def close(self) -> None:
        self.conn.close()


# -- the rebuild ----------------------------------------------------------------------------------------
@dataclass
class Report:
    scope: str
    source: str
    schema: str = REBUILD_SCHEMA
    records: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    swapped: bool = False
    retired: str | None = None
    paused_s: float = 0.0
    compare_s: float = 0.0  # of paused_s, the time the comparison took
    view_lag: int = 0  # scope all: live view records not folded yet when compared (0 unless it is stopped)
    tables: dict[str, dict] = field(default_factory=dict)
    state: dict[str, int] = field(default_factory=dict)

    @property
    def differences(self) -> int:
        return sum(t.get("live_only", 0) + t.get("rebuilt_only", 0) for t in self.tables.values())

    def as_dict(self) -> dict:
        return {"scope": self.scope, "source": self.source, "schema": self.schema, "records": self.records,
                "dead_letters": self.dead_letters, "seconds": round(self.seconds, 2), "swapped": self.swapped,
                "retired": self.retired, "paused_s": round(self.paused_s, 3), "compare_s": round(self.compare_s, 3), "view_lag": self.view_lag, "tables": self.tables,
                "state": self.state, "differences": self.differences}


class Replay:
    """One rebuild of one scope; see the module docstring."""

    def __init__(self, cfg: Settings, scope: str, *, source: str = "kafka", consumer: str | None = None,
                 batch_size: int = 2000, close_gap: int = 500, compare: bool = True, progress: Callable[[int, int], None] | None = None):
        if scope not in SCOPES:
            raise ReplayError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
        self.cfg = cfg
        self.scope = SCOPES[scope]
        if source not in ("kafka", "archive"):
            raise ReplayError(f"unknown source {source!r}; kafka or archive")
        if source == "archive" and not self.scope.archive_ok:
            raise ReplayError(f"the archive holds accepted touchpoints; scope {scope!r} reads {self.scope.topic} "
                              "(use --scope all to rebuild every projection from the archive)")
        self.source_name = source
        self.consumer = consumer or cfg.processor_id
        self.batch_size = batch_size
        self.close_gap = close_gap
        self.compare = compare
        self.progress = progress or (lambda done, total: None)
        self.report = Report(scope, source)
        self.admin = db.connect(cfg.pg_dsn, application_name="crm-replay", autocommit=True)

    # -- schema ----------------------------------------------------------------------------------
    def _claim(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (db.lock_id("crm-replay"),))
            if not cur.fetchone()[0]:
                raise ReplayError("another replay is running against this database")

    def prepare_schema(self, fresh: bool) -> None:
        """Create the rebuild schema (every table, empty) or resume the unfinished rebuild in it."""
        with self.admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (REBUILD_SCHEMA,))
            exists = cur.fetchone() is not None
            cur.execute("""SELECT id, scope, source FROM replay_run WHERE schema_name = %s AND swapped_at IS NULL
                           ORDER BY id DESC LIMIT 1""", (REBUILD_SCHEMA,))
            run = cur.fetchone()
            if exists and not fresh:
                if run and (run[1], run[2]) == (self.scope.name, self.source_name):
                    self.run_id = run[0]
                    log.info("resuming the unfinished rebuild", extra={"scope": self.scope.name, "run": run[0]})
                    return
                raise ReplayError(f"schema {REBUILD_SCHEMA} holds an unfinished rebuild "
                                  f"({'scope ' + run[1] + ' from ' + run[2] if run else 'of unknown scope'}); "
                                  "run again with that scope and source to resume, or with --fresh to discard it")
            if exists:
                cur.execute(f"DROP SCHEMA {REBUILD_SCHEMA} CASCADE")
        with db.connect(self.cfg.pg_dsn, application_name="crm-replay-schema") as conn, conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {REBUILD_SCHEMA}")
            cur.execute(f"SET LOCAL search_path TO {REBUILD_SCHEMA}")
            for _, sql in db.migrations():
                cur.execute(sql)
            cur.execute("""INSERT INTO public.replay_run (scope, source, schema_name) VALUES (%s, %s, %s)
                           RETURNING id""", (self.scope.name, self.source_name, REBUILD_SCHEMA))
            self.run_id = cur.fetchone()[0]
        conn.close()

    # -- positions -------------------------------------------------------------------------------
    def _live_positions(self, cur=None) -> dict[int, int]:
        c = cur or self.admin.cursor()
        c.execute("SELECT partition, next_offset FROM public.processor_offsets WHERE consumer = %s AND topic = %s",
                  (self.consumer, self.scope.topic))
        return dict(c.fetchall())

    def _rebuilt_positions(self) -> dict[int, int]:
        with self.admin.cursor() as cur:
            cur.execute(f"""SELECT partition, next_offset FROM {REBUILD_SCHEMA}.processor_offsets
                            WHERE consumer = %s AND topic = %s""", (self.consumer, self.scope.topic))
            return dict(cur.fetchall())

    # -- the run ---------------------------------------------------------------------------------
    def run(self, *, swap: bool = True, fresh: bool = False, require_equal: bool = False) -> Report:
        started = time.monotonic()
        self._claim()
        self.prepare_schema(fresh)
        db.set_lock_scope(REBUILD_SCHEMA)
        try:
            asyncio.run(self._run(swap, require_equal))
        finally:
            db.set_lock_scope("")
            self.report.seconds = time.monotonic() - started
            with self.admin.cursor() as cur:
                cur.execute("UPDATE replay_run SET records = records + %s, report = %s WHERE id = %s",
                            (self.report.records, orjson.dumps(self.report.as_dict()).decode(), self.run_id))
            self.admin.close()
        return self.report

    async def _run(self, swap: bool, require_equal: bool) -> None:
        from services.processors.runner import BatchRunner

        stage, self.state = _stages(self.cfg, self.scope)
        self.runner = BatchRunner(stage, rebuild_dsn(self.cfg.pg_dsn), self.consumer, self._discard)
        self.source = (KafkaSource(self.cfg.kafka_bootstrap, self.scope.topic, self.batch_size,
                                   KafkaSecurity.from_settings(self.cfg))
                       if self.source_name == "kafka" else ArchiveSource(self.cfg.pg_dsn, self.scope.topic))
        try:
            self.positions = self._rebuilt_positions()
            self.start_total = sum(self.positions.values())
            # catch up with the live workers while they run
            while True:
                targets = self._live_positions()
                remaining = sum(max(0, t - self.positions.get(p, 0)) for p, t in targets.items())
                self.progress(sum(self.positions.values()), sum(targets.values()))
                if remaining <= self.close_gap:
                    break
                await self._consume(targets, until_done=False)
            await self._swap(swap, require_equal)
        finally:
            self.source.close()
            self.runner.close()

    async def _discard(self, outputs: list[Output]) -> None:
        self.report.dead_letters += sum(1 for o in outputs if o.topic == DEADLETTER)

    async def _consume(self, targets: dict[int, int], *, until_done: bool) -> None:
        """Apply the log up to ``targets`` (all of it when ``until_done``, else one round)."""
        loop = asyncio.get_running_loop()
        while True:
            records, moved = await loop.run_in_executor(None, self.source.fetch, self.positions, targets,
                                                        self.batch_size)
            if records:
                await self.runner.run(records)
                self.report.records += len(records)
            for p, position in moved.items():
                self.positions[p] = max(self.positions.get(p, 0), position)
            self.progress(sum(self.positions.values()), sum(targets.values()))
            done = all(self.positions.get(p, 0) >= t for p, t in targets.items())
            if done or not until_done:
                return
            if not moved:
                await asyncio.sleep(0.2)

    async def _swap(self, swap: bool, require_equal: bool) -> None:
        loop = asyncio.get_running_loop()
        conn = db.connect(self.cfg.pg_dsn, application_name="crm-replay-swap")
        psycopg2.extras.register_default_jsonb(conn, loads=orjson.loads)
        try:
            cur = conn.cursor()
            cur.execute("SET LOCAL lock_timeout = '30s'")
            paused = time.monotonic()
            targets = await loop.run_in_executor(None, self._pause_live, cur)
            await self._consume(targets, until_done=True)
            if self.scope.name == "all":  # what the old identity stage produced is folded, rebuilt
                events_end = await loop.run_in_executor(None, self._customer_events_end, cur)
            if self.state is not None:
                await loop.run_in_executor(None, self._tick_both, cur)
            retired = "crm_retired_" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
            await loop.run_in_executor(None, self._move, cur, retired)
            if self.scope.name in ("identity", "all"):
                self._continue_identity(cur, retired)
            if self.state is not None:
                self.report.state = self.state.reconcile(cur, retired)
            if self.scope.name == "all":
                self._set_positions(cur, CUSTOMER_EVENTS, events_end)
            if self.compare or require_equal or not swap:
                started = time.monotonic()
                self.report.tables = await loop.run_in_executor(None, compare, cur, "public", retired, self.scope)
                self.report.compare_s = time.monotonic() - started
            if not swap or (require_equal and self.report.differences):
                conn.rollback()
                log.info("rebuild compared, not swapped", extra={"differences": self.report.differences})
                return
            cur.execute("UPDATE replay_run SET swapped_at = now(), retired = %s WHERE id = %s", (retired, self.run_id))
            conn.commit()
            self.report.paused_s = time.monotonic() - paused
            self.report.swapped, self.report.retired = True, retired
            with self.admin.cursor() as c:
                c.execute(f"DROP SCHEMA {REBUILD_SCHEMA} CASCADE")
            log.info("rebuild swapped in", extra={"scope": self.scope.name, "retired": retired,
                                                   "paused_s": round(self.report.paused_s, 3)})
        finally:
            conn.close()

    def _pause_live(self, cur) -> dict[int, int]:
        """Lock the live positions of the scope's topic (every partition, even those not consumed
        yet); live batches of that stage wait until the swap commits. Returns the positions."""
        partitions = sorted(set(self.source.partitions()) | set(self._live_positions()))
        if partitions:
            psycopg2.extras.execute_values(cur, """
                INSERT INTO public.processor_offsets (consumer, topic, partition, next_offset) VALUES %s
                ON CONFLICT DO NOTHING""", [(self.consumer, self.scope.topic, p, 0) for p in partitions])
        cur.execute("""SELECT partition, next_offset FROM public.processor_offsets WHERE consumer = %s AND topic = %s
                       ORDER BY partition FOR UPDATE""", (self.consumer, self.scope.topic))
        positions = dict(cur.fetchall())
        if self.state is not None:  # and the live clock tick, which would otherwise race the table move
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (db.lock_id("customer-state-tick", scope=""),))
        return positions

    def _customer_events_end(self, cur, wait_s: float = 60.0) -> dict[int, int]:
        """The end of crm.customer-events once the identity stage is paused. Waits (bounded) for
        the live view stage to fold it all, so both sides are compared at the same point, then
        locks the view stage's positions too."""
        source = KafkaSource(self.cfg.kafka_bootstrap, CUSTOMER_EVENTS, 1, KafkaSecurity.from_settings(self.cfg))
        try:
            end = source.end_offsets()
        finally:
            source.close()
        deadline = time.monotonic() + wait_s
        while True:
            with self.admin.cursor() as c:
                c.execute("SELECT partition, next_offset FROM public.processor_offsets WHERE consumer = %s "
                          "AND topic = %s", (self.consumer, CUSTOMER_EVENTS))
                folded = dict(c.fetchall())
            lag = sum(max(0, o - folded.get(p, 0)) for p, o in end.items())
            if lag == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.report.view_lag = lag
        cur.execute("""SELECT partition FROM public.processor_offsets WHERE consumer = %s AND topic = %s
                       ORDER BY partition FOR UPDATE""", (self.consumer, CUSTOMER_EVENTS))
        return end

    def _set_positions(self, cur, topic: str, positions: dict[int, int]) -> None:
        psycopg2.extras.execute_values(cur, """
            INSERT INTO public.processor_offsets (consumer, topic, partition, next_offset) VALUES %s
            ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                updated_at = now()""", [(self.consumer, topic, p, o) for p, o in sorted(positions.items())])

    def _tick_both(self, cur) -> None:
        """Evaluate the customers due by the clock on both sides at the same instant, so the clock
        does not show up as a difference. Without customer locks: the live view stage is paused by
        the positions this transaction holds, nothing but this command writes the rebuild, and
        every due customer's lock in one transaction overflowed PostgreSQL's lock table (a log of
        1,000,000 events: "out of shared memory")."""
        from services.processors.state_stage import StateProjection

        now = datetime.now(timezone.utc)
        at_now = StateProjection(self.state.rules, clock=lambda: now)
        with db.connect(rebuild_dsn(self.cfg.pg_dsn)) as c:
            psycopg2.extras.register_default_jsonb(c, loads=orjson.loads)
            with c.cursor() as rc:
                while at_now.tick(rc, exclusive=False, customer_locks=False):
                    pass
        c.close()
        db.set_lock_scope("")  # the live side's customer locks are the live workers' ones
        try:
            while at_now.tick(cur, exclusive=False, customer_locks=False):
                pass
        finally:
            db.set_lock_scope(REBUILD_SCHEMA)

    def _move(self, cur, retired: str) -> None:
        cur.execute(f"CREATE SCHEMA {retired}")
        for table in self.scope.tables:
            cur.execute(f"ALTER TABLE public.{table} SET SCHEMA {retired}")
            cur.execute(f"ALTER TABLE {REBUILD_SCHEMA}.{table} SET SCHEMA public")
        for seq in self.scope.sequences:
            cur.execute(f"ALTER SEQUENCE public.{seq} SET SCHEMA {retired}")
            cur.execute(f"ALTER SEQUENCE {REBUILD_SCHEMA}.{seq} SET SCHEMA public")

    @staticmethod
    def _continue_identity(cur, retired: str) -> None:
        """Versions, change numbers and component labels continue above the replaced graph's, so
        the view (which keeps the highest version's word) hears the rebuilt graph from now on."""
        cur.execute(f"""UPDATE public.identity_state SET version =
                            greatest(version, (SELECT max(version) FROM {retired}.identity_state)) + 1""")
        cur.execute(f"""SELECT setval(pg_get_serial_sequence('public.identity_change', 'id'),
                               greatest((SELECT coalesce(max(id), 0) FROM public.identity_change),
                                        (SELECT coalesce(max(id), 0) FROM {retired}.identity_change), 1))""")
        cur.execute(f"""SELECT setval('public.identity_component_seq',
                               greatest((SELECT last_value FROM public.identity_component_seq),
                                        (SELECT last_value FROM {retired}.identity_component_seq)))""")


# -- comparing two versions of the projections ---------------------------------------------------------
def compare(cur, rebuilt: str, live: str, scope: Scope) -> dict[str, dict]:
    """Rows of each table of the scope found on one side only, comparing what the rows say (see
    VOLATILE, ORDERING, HISTORY, ROWS); floating-point sums compared to 6 decimals."""
    out: dict[str, dict] = {}
    for table in scope.tables:
        if table in HISTORY and scope.name != "view":
            out[table] = {"compared": False, "why": "history of the path taken; depends on batching"}
            continue
        cur.execute("""SELECT column_name, data_type FROM information_schema.columns
                       WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position""", (rebuilt, table))
        skip = VOLATILE | ORDERING.get(table, set())
        cols = []
        for name, kind in cur.fetchall():
            if name in skip:
                continue
            cols.append(f"round({name}::numeric, 6)" if kind in ("double precision", "real") else name)
        cols += EXPRESSIONS.get(table, [])
        where = f" WHERE {ROWS[table]}" if table in ROWS else ""
        select = ", ".join(cols)
        counts = {}
        for label, a, b in (("rebuilt_only", rebuilt, live), ("live_only", live, rebuilt)):
            cur.execute(f"""SELECT count(*) FROM (SELECT {select} FROM {a}.{table}{where.format(s=a)}
                            EXCEPT ALL SELECT {select} FROM {b}.{table}{where.format(s=b)}) d""")
            counts[label] = cur.fetchone()[0]
        cur.execute(f"SELECT count(*) FROM {rebuilt}.{table}")
        out[table] = {"compared": True, "rows": cur.fetchone()[0], **counts}
    return out


def retired_schemas(cur) -> list[str]:
    cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'crm\\_retired\\_%' ORDER BY 1")
    return [r[0] for r in cur.fetchall()]


# -- the command line --------------------------------------------------------------------------------
def _cmd_replay(args, cfg: Settings) -> int:
    if args.list:
        return _list(cfg)
    if args.drop_retired:
        with db.connect(cfg.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
            for schema in retired_schemas(cur):
                cur.execute(f"DROP SCHEMA {schema} CASCADE")
                print(f"dropped {schema}")
        return 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    interactive = sys.stderr.isatty()
    last_line = [0.0]
    with Progress(TextColumn("[bold]rebuild {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]} rec/s"), TimeRemainingColumn(), disable=not interactive,
                  transient=False) as bar:
        task = bar.add_task(args.scope, total=None, rate="-")
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = f"{replay.report.records / elapsed:,.0f}"
            bar.update(task, completed=done, total=max(total, done), rate=rate)
            if not interactive and time.monotonic() - last_line[0] > 5:
                last_line[0] = time.monotonic()
                print(f"rebuild {args.scope}: {done:,}/{total:,} positions, {replay.report.records:,} records, "
                      f"{rate} rec/s", file=sys.stderr, flush=True)

        replay = Replay(cfg, args.scope, source=args.source, consumer=args.consumer, batch_size=args.batch_size,
                        compare=not args.no_compare, progress=progress)
        report = replay.run(swap=not args.no_swap, fresh=args.fresh, require_equal=args.require_equal)
    if args.json:
        print(orjson.dumps(report.as_dict()).decode())
    else:
        _print_report(report)
    return 0 if report.swapped or args.no_swap else 2


def _print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"rebuild of {report.scope} from {report.source}: {report.records:,} records in "
                        f"{report.seconds:.1f} s, {report.dead_letters} dead letters")
    for col in ("table", "rows", "only rebuilt", "only live"):
        table.add_column(col, justify="right" if col != "table" else "left")
    for name, t in report.tables.items():
        if t.get("compared"):
            table.add_row(name, f"{t['rows']:,}", str(t["rebuilt_only"]), str(t["live_only"]))
        else:
            table.add_row(name, "-", "not compared", t["why"])
    console.print(table)
    if report.state:
        console.print(f"customer state: {report.state.get('adopted', 0):,} snapshots kept, "
                      f"{report.state.get('changed', 0):,} changed and {report.state.get('gone', 0):,} gone "
                      f"({report.state.get('changes', 0):,} changes published)")
    if report.swapped:
        console.print(f"swapped in (live batches of the scope paused {report.paused_s:.2f} s); the replaced tables "
                      f"are in schema {report.retired} (crm replay --drop-retired drops them)")
    else:
        console.print(f"not swapped: {report.differences} rows differ"
                      if report.differences else "not swapped (--no-swap); the rebuilt tables equal the live ones")


def _list(cfg: Settings) -> int:
    with db.connect(cfg.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("""SELECT id, scope, source, started_at, swapped_at, retired, records,
                              (report->>'differences')::int FROM replay_run ORDER BY id""")
        for row in cur.fetchall():
            rid, scope, source, started, swapped, retired, records, diff = row
            status = f"swapped {swapped:%Y-%m-%d %H:%M:%S}, replaced tables in {retired}" if swapped else "not swapped"
            print(f"#{rid} {scope} from {source}, started {started:%Y-%m-%d %H:%M:%S}: {records:,} records, "
                  f"{diff if diff is not None else '?'} rows differ; {status}")
        print("retired schemas: " + (", ".join(retired_schemas(cur)) or "none"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("replay", help="rebuild projections from the log beside the live ones and swap them in",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--scope", choices=sorted(SCOPES), default="all",
                   help="identity (graph), view (customer view, timeline, indicators, state) or all (default)")
    p.add_argument("--source", choices=("kafka", "archive"), default="kafka",
                   help="read the topic (default) or the PostgreSQL archive of accepted events (identity, all)")
    p.add_argument("--consumer", default=None, help="the live processors' id (default: CRM_PROCESSOR_ID)")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--no-swap", action="store_true", help="rebuild and compare with the live tables, keep them")
    p.add_argument("--require-equal", action="store_true",
                   help="swap only if the rebuilt tables equal the live ones (a determinism check)")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the comparison with the live tables (it runs while the live stage waits)")
    p.add_argument("--fresh", action="store_true", help="discard an unfinished rebuild instead of resuming it")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--list", action="store_true", help="list past rebuilds and retired schemas")
    p.add_argument("--drop-retired", action="store_true", help="drop the schemas of replaced tables")
    p.set_defaults(fn=_cmd_replay)
