"""A chaos run on the real platform: customer journeys posted through the collector, as a channel
posts them, while processor workers are killed (-9) and stopped (SIGTERM), the broker and PostgreSQL
are stopped and started again and the collector is restarted; then the read model must equal the
reference fold of the events the collector answered 2xx for, event for event.

``Chaos(platform, events=..., faults=[...]).run()`` returns the figures (events sent and accepted,
faults by kind, lost, duplicated, elapsed, ...) and writes them as JSON; the caller asserts on them.

The run has its own topics and database (tests/processes.Platform), so its read model holds its own
events only.
"""
from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx
import orjson
import psycopg2
import psycopg2.extras
from kafka import KafkaConsumer, TopicPartition

from events.envelope import event_key
from projections.indicators import MEASURES
from services.common.topics import CUSTOMER_EVENTS, TOUCHPOINTS
from services.simulator.journeys import JourneyGenerator
from tests import http
from tests.feed import assert_feed_matches_state
from tests.processes import VENV_BIN, Platform, Service, free_port, wait_for
from tests.oracle import read_model_differences, touchpoints_from
from tests.reference import opened_copies, reference_indicator_totals, reference_views, vault_opener

FAULTS = ("processor_kill9", "processor_sigterm", "broker_restart", "postgres_restart",
          "collector_sigterm", "collector_kill9")
"""Every kind of fault a run can inject."""


def journeys(seed: int, events: int) -> list[dict]:
    """The first ``events`` events of simulated customers, in event-time order (journeys cut short
    at the end are fine: the reference folds what was sent)."""
    gen = JourneyGenerator(seed=seed, start=datetime(2026, 10, 1, tzinfo=timezone.utc))
    out: list[dict] = []
    first = 0
    while len(out) < events:
        customers = max(10, (events - len(out)) // 12)
        out += gen.stream(customers, first_index=first)
        first += customers
    return out[:events]


def start_at_log_end(platform: Platform) -> dict[TopicPartition, int]:
    """Store the ends of the platform's crm.touchpoints and crm.customer-events as its processors'
    positions, so that its workers start there; returns the positions."""
    dsn, consumer = platform.dsn, platform.processor_id
    kafka = KafkaConsumer(bootstrap_servers=platform.stack.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(t, p) for t in (platform.topic(TOUCHPOINTS), platform.topic(CUSTOMER_EVENTS))
                 for p in kafka.partitions_for_topic(t)]
        ends = kafka.end_offsets(parts)
    finally:
        kafka.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, "INSERT INTO processor_offsets (consumer, topic, partition, next_offset) "
                                            "VALUES %s", [(consumer, tp.topic, tp.partition, n) for tp, n in ends.items()])
    conn.close()
    return ends


def read_log(bootstrap: str, starts: dict[TopicPartition, int], topic: str) -> list[dict | None]:
    """The values of ``topic`` from ``starts`` to its current end, decoded (None when not JSON)."""
    kafka = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    try:
        parts = [tp for tp in starts if tp.topic == topic]
        kafka.assign(parts)
        for tp in parts:
            kafka.seek(tp, starts[tp])
        ends = kafka.end_offsets(parts)
        out: list[dict | None] = []
        while any(kafka.position(tp) < ends[tp] for tp in parts):
            for records in kafka.poll(timeout_ms=1000).values():
                for r in records:
                    try:
                        out.append(orjson.loads(r.value))
                    except (orjson.JSONDecodeError, TypeError):
                        out.append(None)
        return out
    finally:
        kafka.close()


def batches_in_flight(worker: Service) -> float:
    """Batches the processor ``worker`` has taken and not yet committed, over its stages (/metrics)."""
    metrics = http.get(worker.health_url.replace("/healthz", "/metrics"), timeout=2).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("crm_processor_batches_in_flight{"))


def waiting_for_kafka(collector_url: str) -> float:
    """How many requests the collector at ``collector_url`` holds while Kafka acknowledges them."""
    for line in http.get(f"{collector_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("crm_ingest_requests_waiting_for_kafka "):
            return float(line.split()[1])
    raise AssertionError("the collector exports no crm_ingest_requests_waiting_for_kafka")


def keys_on_log(values: list[dict | None]) -> collections.Counter:
    """How many times each event (source + id) is on a topic."""
    return collections.Counter(event_key(v["source"], v["id"]) for v in values
                               if isinstance(v, dict) and "source" in v and "id" in v)


def json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def stopping_lines(service: Service) -> list[dict]:
    """The runner's log lines of a worker's stop: what it did with the batches in flight."""
    return [line for line in json_lines(service.log_path) if str(line.get("msg", "")).startswith("stopping:")]


class Sender(threading.Thread):
    """Posts events to the collector in batches, as a channel does: a 503 is retried after its
    Retry-After, a refused or broken connection after a short backoff, the same batch each time,
    until it is answered 2xx or ``give_up_s`` has passed. Records which events got a 2xx."""

    def __init__(self, url: Callable[[], str], events: list[dict], *, batch: int = 100,
                 rate: float | None = None, give_up_s: float = 600):
        super().__init__(name="chaos-sender", daemon=True)
        self.url, self.events, self.batch, self.rate, self.give_up_s = url, events, batch, rate, give_up_s
        self.sent = 0  # events posted at least once
        self.accepted: list[dict] = []  # events answered 2xx, in order
        self.unconfirmed: list[dict] = []  # events given up on
        self.rejected: list[dict] = []  # answered 4xx (none expected)
        self.answers: collections.Counter = collections.Counter()  # "202", "503", "connection error", ...
        self.retry_after: collections.Counter = collections.Counter()  # Retry-After values of the 503s
        self.error: BaseException | None = None
        self.in_flight = threading.Event()  # set while a request waits for its answer
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        next_at = time.monotonic()
        try:
            with http.Client(timeout=60) as client:
                for lo in range(0, len(self.events), self.batch):
                    if self._halt.is_set():
                        break
                    chunk = self.events[lo:lo + self.batch]
                    if self.rate:
                        # paced from the last request, never catching up after an outage: a burst
                        # would finish the stream before the faults scheduled later in it
                        ahead = next_at - time.monotonic()
                        if ahead > 0:
                            self._halt.wait(ahead)
                        next_at = max(next_at, time.monotonic()) + len(chunk) / self.rate
                    self.sent += len(chunk)
                    self._deliver(client, chunk)
        except BaseException as exc:  # reported by the run, never lost in the thread
            self.error = exc

    def _deliver(self, client: httpx.Client, chunk: list[dict]) -> None:
        deadline = time.monotonic() + self.give_up_s
        backoff = 0.2
        while not self._halt.is_set():
            if time.monotonic() > deadline:
                self.unconfirmed += chunk
                return
            self.in_flight.set()
            try:
                r = client.post(self.url() + "/v1/events", json=chunk)
            except httpx.TransportError:
                self.answers["connection error"] += 1
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            finally:
                self.in_flight.clear()
            self.answers[str(r.status_code)] += 1
            if r.status_code == 202:
                ids = set(r.json()["accepted"])
                self.accepted += [e for e in chunk if e["id"] in ids]
                self.rejected += [e for e in chunk if e["id"] not in ids]
                return
            if r.status_code == 503:
                value = r.headers.get("retry-after")
                self.retry_after[value] += 1
                self._halt.wait(min(float(value), 30.0) if value and value.isdigit() else 5.0)
                continue
            if r.status_code == 429:  # a rate limit (none expected with the defaults): wait as told
                value = r.headers.get("retry-after")
                self._halt.wait(min(float(value), 30.0) if value and value.isdigit() else 1.0)
                continue
            if r.status_code >= 500:
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.rejected += chunk
            return


@dataclass
class Fault:
    kind: str
    at_s: float
    accepted: int  # events answered 2xx when it began
    backlog: int  # of those, not yet applied
    took_s: float = 0.0
    detail: dict = field(default_factory=dict)


class Chaos:
    """One chaos run against ``platform``: see the module docstring."""

    def __init__(self, platform: Platform, *, events: int, faults: list[str], seed: int, workers: int = 2,
                 batch: int = 100, rate: float | None = None, out: Path | None = None,
                 broker_down_s: float = 5.0, postgres_down_s: float = 3.0, log=print):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.platform, self.faults, self.workers_wanted = platform, list(faults), workers
        self.events = journeys(seed, events)
        self.batch, self.rate, self.out = batch, rate, out
        self.broker_down_s, self.postgres_down_s, self.log = broker_down_s, postgres_down_s, log
        self.stack = platform.stack
        self.port = free_port()
        self.collector: Service | None = None
        self.workers: list[Service] = []
        self.sender = Sender(lambda: f"http://127.0.0.1:{self.port}", self.events, batch=batch, rate=rate)
        self.fault_log: list[Fault] = []
        self.sigterm_exits: list[int | None] = []
        self.collector_exits: list[int | None] = []
        self.starts: dict[TopicPartition, int] = {}
        self._t0 = 0.0
        self._applied = 0
        self._done = threading.Event()

    # -- the parts ----------------------------------------------------------------------------------
    def start_collector(self) -> Service:
        svc = Service("ingest", [str(VENV_BIN / "crm-ingest")],
                      self.platform.env(CRM_INGEST_PORT=str(self.port), CRM_KAFKA_ACK_TIMEOUT_S="5"),
                      f"http://127.0.0.1:{self.port}/healthz", self.platform.log_dir).start()
        self.platform.services.append(svc)
        self.collector = svc
        return svc

    def start_worker(self) -> Service:
        svc = self.platform.processor(CRM_BATCH_SIZE="500")
        self.workers.append(svc)
        return svc

    def _busy_worker(self, timeout_s: float = 120) -> tuple[Service, bool]:
        """A worker in the middle of a batch (its /metrics says so); fails if none is within ``timeout_s``
        (the fault would not test what it claims to)."""
        def busy() -> Service | None:
            found = next((worker for worker in self.workers if batches_in_flight(worker) > 0), None)
            if found is None and not self.sender.is_alive() and self.applied() >= len(self.sender.accepted):
                raise AssertionError("every event was applied before the fault: make the stream longer or slower")
            return found
        return wait_for(busy, timeout_s, "a worker in the middle of a batch", interval=0.005), True

    def _request_in_flight(self, timeout_s: float = 60) -> bool:
        """Wait until the collector holds a request of the sender that waits for Kafka (its
        ``crm_ingest_requests_waiting_for_kafka`` gauge says so); fail if that never happens."""
        url = f"http://127.0.0.1:{self.port}"
        def held() -> bool:
            if not self.sender.is_alive():
                raise AssertionError("the sender finished before the fault: make the stream longer or slower")
            return self.sender.in_flight.is_set() and waiting_for_kafka(url) >= 1
        return wait_for(held, timeout_s, "a request of the sender waiting for Kafka in the collector", interval=0.002)

    def applied(self) -> int:
        """Accepted events in the timeline (the exactly-once guard: one row per event)."""
        keys = [event_key(e["source"], e["id"]) for e in list(self.sender.accepted)]
        with psycopg2.connect(self.platform.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM customer_timeline WHERE event_key = ANY(%s)", (keys,))
            n = cur.fetchone()[0]
        conn.close()
        self._applied = n
        return n

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._t0, 1)

    def _progress(self) -> None:
        while not self._done.wait(5.0):
            try:
                applied = str(self.applied())
            except psycopg2.Error:
                applied = "? (PostgreSQL unavailable)"
            self.log(f"chaos {self._elapsed():7.1f}s  sent {self.sender.sent}/{len(self.events)}  "
                     f"accepted {len(self.sender.accepted)}  applied {applied}  "
                     f"faults {len(self.fault_log)}/{len(self.faults)}  answers {dict(self.sender.answers)}")

    # -- faults -------------------------------------------------------------------------------------
    def _inject(self, kind: str) -> dict:
        if kind == "processor_kill9":
            victim, mid_batch = self._busy_worker()
            victim.kill()
            self.workers.remove(victim)
            self.start_worker()
            return {"mid_batch": mid_batch}
        if kind == "processor_sigterm":
            victim, mid_batch = self._busy_worker()
            rc = victim.stop(timeout=120)
            self.workers.remove(victim)
            self.sigterm_exits.append(rc)
            lines = stopping_lines(victim)
            self.start_worker()
            return {"mid_batch": mid_batch, "exit_code": rc,
                    "stopping": [{k: line.get(k) for k in ("msg", "stage", "records")} for line in lines]}
        if kind == "broker_restart":
            self._request_in_flight()  # its records meet the broker's shutdown: retried, then expired
            self.stack.script("kafka.sh", "stop")
            time.sleep(self.broker_down_s)
            self.stack.script("kafka.sh", "start")
            return {}
        if kind == "postgres_restart":
            self.stack.script("postgres.sh", "stop")
            time.sleep(self.postgres_down_s)
            self.stack.script("postgres.sh", "start")
            return {}
        if kind in ("collector_sigterm", "collector_kill9"):
            self._request_in_flight()  # SIGTERM must answer it, kill -9 breaks it (the sender retries)
            if kind == "collector_sigterm":
                self.collector_exits.append(self.collector.stop(timeout=60))
            else:
                self.collector.kill()
            self.start_collector()
            return {"exit_code": self.collector_exits[-1]} if kind == "collector_sigterm" else {}
        raise ValueError(kind)

    def _schedule(self) -> None:
        """Each fault when its share of the events has been accepted (or the sender is done)."""
        total = len(self.events)
        for k, kind in enumerate(self.faults):
            due = (k + 1) * total // (len(self.faults) + 1)
            while len(self.sender.accepted) < due and self.sender.is_alive():
                time.sleep(0.1)
            fault = Fault(kind, self._elapsed(), len(self.sender.accepted), 0)
            try:
                fault.backlog = fault.accepted - self.applied()
            except psycopg2.Error:
                fault.backlog = -1
            self.log(f"chaos {fault.at_s:7.1f}s  fault {k + 1}/{len(self.faults)}: {kind} "
                     f"(accepted {fault.accepted}, backlog {fault.backlog})")
            started = time.monotonic()
            fault.detail = self._inject(kind)
            fault.took_s = round(time.monotonic() - started, 1)
            self.fault_log.append(fault)

    # -- the run ------------------------------------------------------------------------------------
    def run(self, catch_up_timeout_s: float | None = None) -> dict:
        """Send, inject the faults, wait for every accepted event, compare; returns the figures."""
        self.starts = start_at_log_end(self.platform)
        for _ in range(self.workers_wanted):
            self.start_worker()
        self.start_collector()
        self._t0 = time.monotonic()
        progress = threading.Thread(target=self._progress, name="chaos-progress", daemon=True)
        progress.start()
        self.sender.start()
        try:
            self._schedule()
            self.sender.join(timeout=3600)
        finally:
            self.sender.stop()
            self.sender.join(timeout=120)
        send_s = self._elapsed()
        if self.sender.error is not None:
            self._done.set()
            raise AssertionError(f"the sender failed: {self.sender.error!r}") from self.sender.error
        accepted = self.sender.accepted
        timeout = catch_up_timeout_s or 300 + len(accepted) / 50
        try:
            wait_for(lambda: self.applied() >= len(accepted), timeout, f"{len(accepted)} accepted events applied",
                     interval=1.0)
        except AssertionError as exc:
            self.log(f"chaos: {exc}")
        finally:
            self._done.set()
        catch_up_s = round(self._elapsed() - send_s, 1)
        self.log(f"chaos {self._elapsed():7.1f}s  caught up; comparing with the reference")
        figures = self.figures(send_s, catch_up_s)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(figures, indent=2) + "\n")
        self.log("chaos figures: " + json.dumps({k: figures[k] for k in (
            "events", "accepted", "faults", "lost", "duplicated", "customers_differing", "elapsed_s")}))
        return figures

    def feed_check(self, cids: set[str], timeout_s: float = 90) -> dict:
        """The feed on Kafka says what PostgreSQL holds (each change once, in order, the last one
        the stored version). The customer-state clock keeps changing customers while this reads
        (the journeys' customers come due for review), so a difference is looked at again, within
        ``timeout_s``, before it counts."""
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []  # what the looks that found a difference said
        while True:
            try:
                found = assert_feed_matches_state(self.platform, cids)
                return {**found, "attempts": len(seen) + 1, "differences_seen": seen}
            except AssertionError as exc:
                seen.append(str(exc).splitlines()[0])
                if time.monotonic() > deadline:
                    return {"error": seen[-1], "attempts": len(seen), "differences_seen": seen}
                time.sleep(2.0)

    def oracle_check(self, touchpoints, timeout_s: float = 90) -> list[str]:
        """How the read model differs from the oracle of the accepted events; looked at again
        within ``timeout_s`` while the customer-state clock re-evaluates customers."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = read_model_differences(self.platform.dsn, touchpoints, indicators=True)
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(2.0)

    def figures(self, send_s: float, catch_up_s: float) -> dict:
        """Compare the read model with the reference fold of the accepted events."""
        dsn, accepted = self.platform.dsn, self.sender.accepted
        keys = sorted({event_key(e["source"], e["id"]) for e in accepted})
        # the reference folds the events as the collector sealed them (pseudonyms, tokens), opening
        # the customer's words with this platform's keys as the processors do
        wanted = set(keys)
        sealed = [v for v in read_log(self.stack.kafka_bootstrap, self.starts, self.platform.topic(TOUCHPOINTS))
                  if v and event_key(v.get("source", ""), v.get("id", "")) in wanted]
        opener = vault_opener(dsn, self.platform.env()["CRM_MASTER_KEY"])
        reference = reference_views(sealed, opener=opener)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            psycopg2.extras.register_default_jsonb(cur, loads=orjson.loads)
            cur.execute("SELECT event_key FROM customer_timeline WHERE event_key = ANY(%s)", (keys,))
            applied = {r[0] for r in cur.fetchall()}
            # the database holds this run's events only: every fold of an event counts in one view
            cur.execute("SELECT coalesce(sum(event_count), 0) FROM customer_view")
            folded = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM customer_timeline")
            rows = cur.fetchone()[0]
            cur.execute("SELECT customer_id, state FROM customer_view")
            stored = dict(cur.fetchall())
            cur.execute(f"SELECT {', '.join(f'coalesce(sum({m}), 0)' for m in MEASURES)} "
                        "FROM indicator_minute WHERE dim = 'all'")
            sums = dict(zip(MEASURES, cur.fetchone()))
        conn.close()
        differing = sorted(cid for cid in set(reference) | set(stored) if stored.get(cid) != reference.get(cid))
        expected_sums = reference_indicator_totals(sealed, opener=opener)
        indicators_differing = {m: [sums[m], expected_sums[m]] for m in MEASURES
                                if abs(sums[m] - expected_sums[m]) > 1e-6 * max(1.0, abs(expected_sums[m]))}
        on_touchpoints = keys_on_log(read_log(self.stack.kafka_bootstrap, self.starts,
                                              self.platform.topic(TOUCHPOINTS)))
        on_customer_events = keys_on_log(read_log(self.stack.kafka_bootstrap, self.starts,
                                                  self.platform.topic(CUSTOMER_EVENTS)))
        feed = self.feed_check(set(reference))
        # and the independent oracle (tests/oracle.py), which shares no code with the folds
        touchpoints = touchpoints_from(opened_copies(dsn, self.platform.env()["CRM_MASTER_KEY"], sealed), sealed=True)
        oracle_differences = self.oracle_check(touchpoints)
        return {
            "events": len(self.events),
            "sent": self.sender.sent,
            "accepted": len(keys),
            "unconfirmed": len(self.sender.unconfirmed),
            "rejected": len(self.sender.rejected),
            "answers": dict(self.sender.answers),
            "retry_after": dict(self.sender.retry_after),
            "faults": dict(collections.Counter(f.kind for f in self.fault_log)),
            "fault_log": [vars(f) for f in self.fault_log],
            "workers": self.workers_wanted,
            "applied": len(applied),
            "lost": len(set(keys) - applied),
            "duplicated": max(0, folded - rows),
            "unconfirmed_applied": rows - len(applied),
            "timeline_rows": rows,
            "customers": len(reference),
            "customers_differing": len(differing),
            "customers_differing_examples": differing[:5],
            "indicators_differing": indicators_differing,
            "oracle_differences": len(oracle_differences),
            "oracle_differences_examples": oracle_differences[:8],
            "feed": feed,
            "touchpoint_records": sum(on_touchpoints.values()),
            "touchpoints_written_twice": sum(n - 1 for n in on_touchpoints.values() if n > 1),
            "customer_events_republished": sum(n - 1 for n in on_customer_events.values() if n > 1),
            "processor_sigterm_exits": self.sigterm_exits,
            "collector_sigterm_exits": self.collector_exits,
            "send_s": send_s,
            "catch_up_s": catch_up_s,
            "elapsed_s": round(send_s + catch_up_s, 1),
        }
