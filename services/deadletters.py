"""Dead letters: the records a stage could not decode, validate or process (``crm.deadletter``),
listed and re-driven after a fix (``crm deadletter list`` / ``crm deadletter redrive``).

A dead letter (``services.processors.records.deadletter``) keeps the stage, the kind of failure,
the reason, the raw key, value and headers and the source position. A redrive publishes those raw
bytes again to the source topic, with a ``crm-redrive-of: <partition>:<offset>`` header naming the
dead letter and the original record timestamp (the receive time of events without ``time``), so
the processors take it again with the fixed code. Re-publishing an event that already succeeded
changes nothing: the view stage deduplicates by the event's ``source`` + ``id`` and the identity
stage resolves it again to the same result.

Each redrive is recorded in PostgreSQL (``deadletter_redrive``, keyed by the dead letter's
position) *after* Kafka acknowledged it (acks=all): the new position exists only then, and a crash
in between can only mean the same bytes are published once more by the next redrive (duplicates
the processors absorb), never a dead letter marked re-driven that was not. One redrive runs at a
time per database (an advisory lock), and a record dead-lettered twice (its batch ran again after
a crash) is re-published once for both. A re-driven record that fails again is a new dead letter,
with its new source position, and can be re-driven later.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import orjson
from psycopg2.extras import execute_values

from events.asyncapi import DEADLETTER_KINDS
from services.common.db import connect, lock_id
from services.common.kafka_security import PLAINTEXT, KafkaSecurity
from services.common.settings import Settings
from services.common.topics import CUSTOMER_EVENTS, DEADLETTER, TOUCHPOINTS

REDRIVE_HEADER = "crm-redrive-of"
REDRIVE_LOCK = lock_id("crm-deadletter-redrive")
REDRIVABLE = {TOUCHPOINTS, CUSTOMER_EVENTS}
"""Topics a dead letter may go back to: their readers deduplicate on the event id."""
STATUSES = ("new", "redriven", "failed_again", "unreadable")
"""new: never re-driven; redriven: re-published (and not dead-lettered again since); failed_again:
re-published and dead-lettered again (the newer dead letter is ``new``); unreadable: the dead-letter
record itself cannot be read, so it cannot be re-driven."""

CHUNK = 200  # records published, acknowledged and recorded together
PROGRESS_FROM = 100  # redrives at least this large show a progress bar
READ_STALL_S = 30.0  # give up reading crm.deadletter when nothing arrives for this long


Position = tuple[int, int]  # (partition, offset) on crm.deadletter
Source = tuple[str, int, int]  # (topic, partition, offset) of the record that failed


def position_text(pos: Position) -> str:
    return f"{pos[0]}:{pos[1]}"


def parse_position(text: str) -> Position:
    """``P:O`` (a dead letter's partition and offset) as a pair; ArgumentTypeError when malformed."""
    try:
        partition, offset = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not PARTITION:OFFSET, e.g. 0:42") from None
    if partition < 0 or offset < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: partition and offset are never negative")
    return partition, offset


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-11-01T10:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Redrive:
    """What ``deadletter_redrive`` says about one dead letter's record."""

    deadletter: Position  # the dead letter the redrive was recorded for (its crm-redrive-of header)
    topic: str
    partition: int
    offset: int
    status: str
    at: datetime
    by: str

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "deadletter": position_text(self.deadletter), "topic": self.topic, "partition": self.partition, "offset": self.offset,
                "at": self.at.isoformat(), "by": self.by}


@dataclass
class DeadLetter:
    """One record of crm.deadletter, decoded."""

    partition: int
    offset: int
    time: datetime  # when it was dead-lettered (the record's Kafka timestamp)
    key: bytes | None
    stage: str = ""
    kind: str = ""
    reason: str = ""
    errors: list = field(default_factory=list)
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    record_time: str | None = None
    unreadable: str | None = None  # why the dead-letter record itself cannot be read
    redrive: Redrive | None = None
    failed_again_as: Position | None = None  # the newer dead letter of its re-driven copy

    @property
    def position(self) -> Position:
        return self.partition, self.offset

    @property
    def source(self) -> Source:
        return self.source_topic, self.source_partition, self.source_offset

    @property
    def redrive_of(self) -> Position | None:
        """The dead letter this record was a redrive of (its ``crm-redrive-of`` header)."""
        for name, value in self.headers:
            if name == REDRIVE_HEADER:
                try:
                    return parse_position(value.decode())
                except (UnicodeDecodeError, argparse.ArgumentTypeError):
                    return None
        return None

    @property
    def status(self) -> str:
        if self.unreadable is not None:
            return "unreadable"
        if self.redrive is None:
            return "new"
        return "failed_again" if self.failed_again_as is not None else "redriven"

    def as_dict(self) -> dict[str, Any]:
        of = self.redrive_of
        return {
            "deadletter": {"topic": DEADLETTER, "partition": self.partition, "offset": self.offset,
                           "time": self.time.isoformat()},
            "position": position_text(self.position),
            "status": self.status,
            "stage": self.stage, "kind": self.kind, "reason": self.reason, "errors": self.errors,
            "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset},
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "value_b64": base64.b64encode(self.value).decode() if self.value is not None else None,
            "headers": [[name, base64.b64encode(value).decode()] for name, value in self.headers],
            "record_time": self.record_time,
            "redrive": self.redrive.as_dict() if self.redrive else None,
            "redrive_of": position_text(of) if of else None,
            "failed_again_as": position_text(self.failed_again_as) if self.failed_again_as else None,
            "unreadable": self.unreadable,
        }

    def republished_headers(self) -> list[tuple[str, bytes]]:
        """The original headers, with ``crm-redrive-of`` naming this dead letter (replacing an older one)."""
        return [(n, v) for n, v in self.headers if n != REDRIVE_HEADER] + [
            (REDRIVE_HEADER, position_text(self.position).encode())]

    def record_timestamp_ms(self) -> int | None:
        """The original record's Kafka timestamp, kept on the re-published copy."""
        try:
            ms = round(datetime.fromisoformat(self.record_time).timestamp() * 1000) if self.record_time else 0
        except ValueError:
            return None
        return ms if ms > 0 else None


def decode(partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None) -> DeadLetter:
    """A crm.deadletter record as a ``DeadLetter``; ``unreadable`` says what is wrong with a broken one."""
    dead = DeadLetter(partition, offset, datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc), key)
    try:
        body = orjson.loads(value or b"")
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        source = body["source"]
        dead.stage, dead.kind = str(body["stage"]), str(body["kind"])
        dead.reason, dead.errors = str(body.get("reason") or ""), list(body.get("errors") or [])
        dead.source_topic = str(source["topic"])
        dead.source_partition, dead.source_offset = int(source["partition"]), int(source["offset"])
        raw = body.get("value_b64")
        dead.value = base64.b64decode(raw, validate=True) if raw is not None else None
        dead.headers = tuple((str(name), base64.b64decode(val or "", validate=True))
                             for name, val in body.get("headers") or [])
        dead.record_time = body.get("record_time")
        if key is None and body.get("key") is not None:  # the record's own key is the exact bytes
            dead.key = str(body["key"]).encode()
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        dead.unreadable = f"{type(exc).__name__}: {exc}"
    return dead


# -- reading crm.deadletter ---------------------------------------------------------------------

def read(bootstrap: str, positions: Iterable[Position] | None = None,
         security: KafkaSecurity = PLAINTEXT) -> list[DeadLetter]:
    """The dead letters from the beginning of crm.deadletter to its end when called (all, or
    only those at ``positions``), oldest first per partition. No consumer group: nothing is
    committed, nothing is left behind."""
    from kafka import KafkaConsumer, TopicPartition

    wanted = set(positions) if positions is not None else None
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="crm-deadletter", **security.kafka_python())
    try:
        partitions = consumer.partitions_for_topic(DEADLETTER)
        if not partitions:
            raise RuntimeError(f"no topic {DEADLETTER} at {bootstrap} (crm topics create)")
        tps = [TopicPartition(DEADLETTER, p) for p in sorted(partitions)]
        first, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        ranges: dict[Any, tuple[int, int]] = {}
        for tp in tps:
            lo, hi = first[tp], end[tp]
            if wanted is not None:
                offsets = [o for p, o in wanted if p == tp.partition and lo <= o < hi]
                if not offsets:
                    continue
                lo, hi = min(offsets), max(offsets) + 1
            if lo < hi:
                ranges[tp] = (lo, hi)
        if not ranges:
            return []
        consumer.assign(list(ranges))
        for tp, (lo, _) in ranges.items():
            consumer.seek(tp, lo)
        found: list[DeadLetter] = []
        pending = dict(ranges)
        last_progress = time.monotonic()
        while pending:
            polled = consumer.poll(timeout_ms=500)
            for tp, records in polled.items():
                for r in records:
                    if r.offset < ranges[tp][1] and (wanted is None or (tp.partition, r.offset) in wanted):
                        found.append(decode(tp.partition, r.offset, r.timestamp, r.key, r.value))
            if polled:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > READ_STALL_S:
                raise RuntimeError(f"reading {DEADLETTER} made no progress for {READ_STALL_S:g} s")
            for tp in list(pending):
                if consumer.position(tp) >= pending[tp][1]:
                    del pending[tp]
        return found
    finally:
        consumer.close()


# -- the redrive record in PostgreSQL -----------------------------------------------------------------

def load_redrives(cur, dead: list[DeadLetter] | None = None) -> list[tuple[Source, Redrive]]:
    """What ``deadletter_redrive`` holds: all of it, or what concerns these dead letters (by their
    position, or by their record's source position)."""
    sql = """SELECT deadletter_partition, deadletter_offset, source_topic, source_partition, source_offset,
                    target_partition, target_offset, status, redriven_at, redriven_by FROM deadletter_redrive"""
    if dead is None:
        cur.execute(sql)
    elif not dead:
        return []
    else:
        cur.execute(sql + """ WHERE (deadletter_partition, deadletter_offset) IN
                                    (SELECT * FROM unnest(%s::int[], %s::bigint[]))
                                 OR (source_topic, source_partition, source_offset) IN
                                    (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))""",
                    ([d.partition for d in dead], [d.offset for d in dead], [d.source_topic for d in dead],
                     [d.source_partition for d in dead], [d.source_offset for d in dead]))
    return [((topic, sp, so), Redrive((p, o), topic, tp, to, status, at, by))
            for p, o, topic, sp, so, tp, to, status, at, by in cur.fetchall()]


def annotate(dead: list[DeadLetter], redrives: list[tuple[Source, Redrive]]) -> None:
    """Attach each dead letter's redrive and, for a re-driven one, the newer dead letter of its copy.

    A record dead-lettered twice (a batch that published its dead letters and then crashed before
    its commit runs again) is one record: re-driven through either dead letter, it counts for both."""
    by_position = {r.deadletter: r for _, r in redrives}
    by_source = {source: r for source, r in redrives}
    for d in dead:
        if d.unreadable is None:
            d.redrive = by_position.get(d.position) or by_source.get(d.source)
    again = {d.redrive_of: d.position for d in dead if d.redrive_of is not None}
    for d in dead:
        if d.redrive is not None:
            d.failed_again_as = again.get(d.redrive.deadletter)


# -- selection ------------------------------------------------------------------------------------

def matches(d: DeadLetter, args: argparse.Namespace) -> bool:
    """Whether a dead letter passes the command's filters (each given one must hold)."""
    return ((not args.stage or d.stage == args.stage)
            and (not args.kind or d.kind == args.kind)
            and (not args.source_topic or d.source_topic == args.source_topic)
            and (args.since is None or d.time >= args.since)
            and (not getattr(args, "status", None) or d.status == args.status))


def _ordered(dead: list[DeadLetter]) -> list[DeadLetter]:
    return sorted(dead, key=lambda d: (d.time, d.partition, d.offset))


def _print_json(rows: Iterable[dict[str, Any]]) -> None:
    out = sys.stdout
    for row in rows:
        out.write(orjson.dumps(row).decode() + "\n")
    out.flush()


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _status_text(d: DeadLetter) -> str:
    if d.status == "redriven":
        via = f" (with {position_text(d.redrive.deadletter)})" if d.redrive.deadletter != d.position else ""
        return f"redriven → {d.redrive.partition}:{d.redrive.offset}{via}"
    if d.status == "failed_again":
        return f"failed again → {position_text(d.failed_again_as)}"
    if d.status == "new" and d.redrive_of is not None:
        return f"new (redrive of {position_text(d.redrive_of)})"
    return d.status


# -- crm deadletter list ------------------------------------------------------------------------

def list_command(args: argparse.Namespace, cfg: Settings) -> int:
    dead = read(cfg.kafka_bootstrap, security=KafkaSecurity.from_settings(cfg))
    conn = connect(cfg.pg_dsn, application_name="crm-deadletter-list")
    try:
        with conn, conn.cursor() as cur:
            annotate(dead, load_redrives(cur))
    finally:
        conn.close()
    selected = _ordered([d for d in dead if matches(d, args)])
    shared = [d for d in selected if d.unreadable is None and d.source_topic not in REDRIVABLE]
    if shared:
        # crm.customer-changes is read by downstream systems that do not deduplicate for us: putting a
        # record back there would show it to every one of them twice
        print(f"crm deadletter redrive: {len(shared)} dead letters from "
              f"{', '.join(sorted({d.source_topic for d in shared}))} left alone: only records of "
              f"{' and '.join(sorted(REDRIVABLE))} are re-driven, whose readers count each event once",
              file=sys.stderr)
        left = {d.position for d in shared}
        selected = [d for d in selected if d.position not in left]
    shown = selected[-args.limit:] if args.limit else selected
    if args.json:
        _print_json(d.as_dict() for d in shown)
        return 0

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or a file gets whole rows
    table = Table(title=f"{DEADLETTER}: {len(selected)} dead letters"
                        + (f" (the latest {len(shown)}; --limit)" if len(shown) < len(selected) else ""),
                  title_justify="left")
    for name in ("dead letter", "time (UTC)", "stage", "kind", "source", "reason", "status"):
        wraps = name in ("source", "reason")
        table.add_column(name, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis",
                         min_width=30 if name == "reason" else None)
    for d in shown:
        source = f"{d.source_topic}:{d.source_partition}:{d.source_offset}" if d.unreadable is None else ""
        table.add_row(position_text(d.position), d.time.strftime("%Y-%m-%d %H:%M:%S"), escape(d.stage),
                      escape(d.kind), escape(source), escape(_short(d.unreadable or d.reason)), escape(_status_text(d)))
    console.print(table)

    summary = Table(title="by stage and kind", title_justify="left")
    for name in ("stage", "kind", "dead letters", *STATUSES):
        summary.add_column(name, justify="left" if name in ("stage", "kind") else "right")
    counts: Counter = Counter()
    for d in selected:
        counts[(d.stage, d.kind, d.status)] += 1
    for stage, kind in sorted({(s, k) for s, k, _ in counts}):
        per = [counts[(stage, kind, status)] for status in STATUSES]
        summary.add_row(escape(stage or "?"), escape(kind or "?"), str(sum(per)), *map(str, per))
    console.print(summary)
    return 0


# -- crm deadletter redrive -----------------------------------------------------------------------

def redrive_command(args: argparse.Namespace, cfg: Settings) -> int:
    if not (args.offset or args.stage or args.kind or args.source_topic or args.since or args.all):
        print("crm deadletter redrive: nothing selected; name dead letters with --offset P:O, filter them "
              "with --stage, --kind, --source-topic or --since, or pass --all", file=sys.stderr)
        return 2
    kafka_security = KafkaSecurity.from_settings(cfg)
    dead = read(cfg.kafka_bootstrap, args.offset or None, kafka_security)
    missing = set(args.offset) - {d.position for d in dead}
    if missing:
        print(f"crm deadletter redrive: no dead letter at {', '.join(map(position_text, sorted(missing)))} "
              f"on {DEADLETTER}; nothing re-driven", file=sys.stderr)
        return 2
    selected = _ordered([d for d in dead if matches(d, args)])

    conn = connect(cfg.pg_dsn, application_name="crm-deadletter-redrive", autocommit=True)
    try:
        with conn.cursor() as cur:
            if not args.dry_run:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (REDRIVE_LOCK,))
                if not cur.fetchone()[0]:
                    raise RuntimeError("another redrive is running against this database; try again when it ends")
            # read after taking the lock: what a redrive that just ended recorded counts
            annotate(selected, load_redrives(cur, selected))
        todo = [d for d in selected if d.status == "new"]
        skipped = [d for d in selected if d.status != "new"]
        published = {} if args.dry_run else _publish(conn, cfg.kafka_bootstrap, todo, kafka_security)
    finally:
        conn.close()  # also releases the advisory lock

    results = [{"position": position_text(d.position), "action": "would_redrive" if args.dry_run else "redriven",
                "stage": d.stage, "kind": d.kind,
                "source": {"topic": d.source_topic, "partition": d.source_partition, "offset": d.source_offset},
                "to": None if args.dry_run else {"topic": d.source_topic, "partition": published[d.position][0],
                                                 "offset": published[d.position][1]}}
               for d in todo]
    results += [{"position": position_text(d.position), "action": "skipped",
                 "why": d.unreadable if d.status == "unreadable" else f"already {_status_text(d)}",
                 "stage": d.stage, "kind": d.kind,
                 "source": {"topic": d.source_topic, "partition": d.source_partition, "offset": d.source_offset}}
                for d in skipped]
    if args.json:
        _print_json(results)
        return 0
    per_topic = Counter(group[0].source_topic for group in _records(todo))
    verb = "would re-drive" if args.dry_run else "re-driven"
    print(f"{verb}: {len(todo)} dead letters" + (f", {sum(per_topic.values())} records "
                                                 f"({', '.join(f'{t}: {n}' for t, n in sorted(per_topic.items()))})"
                                                 if todo else ""))
    if skipped:
        why = Counter(d.status for d in skipped)
        print(f"skipped: {len(skipped)} ({', '.join(f'{s}: {n}' for s, n in sorted(why.items()))})")
    for row in results[:20]:
        src, to = row["source"], row.get("to")
        print(f"  {row['position']}  {row['stage']}/{row['kind']}  {src['topic']}:{src['partition']}:{src['offset']}"
              + (f" → {to['partition']}:{to['offset']}" if to else "")
              + f"  {row['action']}" + (f" ({row['why']})" if "why" in row else ""))
    if len(results) > 20:
        print(f"  … and {len(results) - 20} more (--json lists all)")
    return 0


def _records(dead: list[DeadLetter]) -> list[list[DeadLetter]]:
    """The dead letters grouped by the record that failed (its source position), in order."""
    groups: dict[Source, list[DeadLetter]] = {}
    for d in dead:
        groups.setdefault(d.source, []).append(d)
    return list(groups.values())


def _publish(conn, bootstrap: str, todo: list[DeadLetter],
             security: KafkaSecurity = PLAINTEXT) -> dict[Position, tuple[int, int]]:
    """Re-publish each record to its source topic, once however many dead letters it has, and
    record the acknowledged ones. Returns the new (partition, offset) per dead letter."""
    if not todo:
        return {}
    from kafka import KafkaConsumer, KafkaProducer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    meta = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         client_id="crm-deadletter-redrive", **security.kafka_python())
    try:
        partitions = {}
        for topic in sorted({d.source_topic for d in todo}):
            found = meta.partitions_for_topic(topic)
            if not found:
                raise RuntimeError(f"source topic {topic} does not exist at {bootstrap}; nothing re-driven")
            partitions[topic] = found
    finally:
        meta.close()

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             client_id="crm-deadletter-redrive", linger_ms=5, **security.kafka_python())
    operator = getpass.getuser()
    done: dict[Position, tuple[int, int]] = {}
    records = _records(todo)
    progress = Progress(TextColumn("re-driving records"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=len(records) < PROGRESS_FROM)
    try:
        with progress:
            task = progress.add_task("redrive", total=len(records))
            for start in range(0, len(records), CHUNK):
                chunk = records[start:start + CHUNK]
                # the source partition keeps the record where its key's records are
                futures = [(group, producer.send(d.source_topic, key=d.key, value=d.value,
                                                 headers=d.republished_headers(),
                                                 partition=d.source_partition if d.source_partition in partitions[
                                                     d.source_topic] else None,
                                                 timestamp_ms=d.record_timestamp_ms()))
                           for group in chunk for d in group[:1]]
                producer.flush()
                acked, failures = [], []
                for group, future in futures:
                    try:
                        md = future.get(timeout=30)
                    except Exception as exc:  # recorded below; the acknowledged ones are kept
                        failures.append(f"{position_text(group[0].position)}: {exc!r}")
                        continue
                    acked += [(d, md.partition, md.offset) for d in group]
                with conn.cursor() as cur:
                    execute_values(cur, """
                        INSERT INTO deadletter_redrive (deadletter_partition, deadletter_offset, stage, kind,
                            source_topic, source_partition, source_offset, target_partition, target_offset,
                            status, redriven_by)
                        VALUES %s ON CONFLICT DO NOTHING""",
                        [(d.partition, d.offset, d.stage, d.kind, d.source_topic, d.source_partition,
                          d.source_offset, p, o, "published", operator) for d, p, o in acked], page_size=CHUNK)
                done.update((d.position, (p, o)) for d, p, o in acked)
                progress.advance(task, len(chunk))
                if failures:
                    raise RuntimeError(f"Kafka did not acknowledge {len(failures)} record(s) ({failures[0]}); "
                                       f"{len(done)} re-driven and recorded; run the same redrive again")
    finally:
        producer.close()
    return done


# -- the command group ------------------------------------------------------------------------------

def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", help="only this stage's dead letters (identity, customer_view, webhooks)")
    parser.add_argument("--kind", choices=DEADLETTER_KINDS, help="only this kind of failure")
    parser.add_argument("--source-topic", metavar="TOPIC", help="only records read from this topic")
    parser.add_argument("--since", type=parse_time, metavar="ISO",
                        help="only dead letters written at or after this time (ISO 8601; UTC without an offset)")


def register(subparsers) -> None:
    """Add the ``deadletter`` command group (``list``, ``redrive``) to the ``crm`` parser."""
    group = subparsers.add_parser("deadletter", help=f"inspect and re-drive failed records ({DEADLETTER})")
    commands = group.add_subparsers(dest="deadletter_command", required=True)

    ls = commands.add_parser("list", help="the dead letters, with their redrive status and a summary by stage "
                                          "and kind")
    _filters(ls)
    ls.add_argument("--status", choices=STATUSES, help="only dead letters in this redrive status")
    ls.add_argument("--limit", type=int, default=None, metavar="N",
                    help="show the latest N that match (the summary counts all of them)")
    ls.add_argument("--json", action="store_true", help="one JSON object per dead letter and line, raw bytes "
                                                        "included (base64)")
    ls.set_defaults(fn=list_command)

    rd = commands.add_parser("redrive", help="re-publish dead letters' records to their source topic after a fix; "
                                             "each dead letter once")
    rd.add_argument("--offset", action="append", type=parse_position, default=[], metavar="P:O",
                    help="the dead letter at this partition:offset of crm.deadletter (repeatable)")
    _filters(rd)
    rd.add_argument("--all", action="store_true", help="every dead letter the filters select (all of them without "
                                                       "filters); required when neither --offset nor a filter is given")
    rd.add_argument("--dry-run", action="store_true", help="say what would be re-driven; publish nothing")
    rd.add_argument("--json", action="store_true", help="one JSON object per selected dead letter and line")
    rd.set_defaults(fn=redrive_command)
