"""Freshness of the live indicator stream: how long after a touchpoint is accepted does its effect
reach a dashboard?

What is measured
----------------
**Freshness** is the time from the collector answering 2xx to ``POST /v1/events`` for one
touchpoint (the moment the platform has promised it is durable) to the arrival, on the query API's
Server-Sent Events stream ``GET /v1/stream/indicators?queue=<q>``, of the ``indicator`` update that
this touchpoint caused. The benchmark posts ``call.abandoned`` events for a queue of its own, one at
a time at a fixed, modest rate (default 10/s); each is a new caller, so every event also creates a
customer. After the k-th event's 2xx it waits for the update with indicator ``abandonment_rate``,
window ``5m`` and ``count == k`` (each event adds one sample). Waiting for each update before the
next event is due keeps every event in a batch of its own, so the k-th update exists and is caused
by the k-th event alone; when an update is late, the next event is sent as soon as it has arrived
(the achieved rate is reported). Everything runs on loopback.

Between the two ends the touchpoint crosses the whole pipeline: ``crm.touchpoints`` -> identity
stage (PostgreSQL) -> ``crm.customer-events`` -> view stage with the indicator projection
(PostgreSQL) -> ``crm.indicators`` -> the API's live hub (a Kafka consumer) -> the SSE stream.
The issue's target: p99 freshness under 1000 ms.

Why a baseline
--------------
Part of that time is Kafka itself, which the platform cannot make faster. The **baseline** is the
round trip through the same broker of a bare kafka-python producer (``acks=all``) to a consumer on
a scratch topic: from ``send()`` to the consumer holding the record, same count, same rate, same
pacing. The pipeline has three Kafka hops in series after the collector's acknowledgement (one
fetch, then two full produce-and-consume round trips), so a ratio freshness/baseline of about 2-3
would mean the stages themselves cost next to nothing; what is above that is processing,
PostgreSQL, batching and the SSE fan-out. The ratio also makes runs on different machines
comparable: a slow disk or CPU slows the baseline too.

Where the time goes
-------------------
After the run the benchmark reads the records back from the three topics and uses their CreateTime
(the producing process's clock, millisecond resolution, same host) to split each freshness sample
into three hops: 2xx -> identity stage published the resolved event; -> view stage published the
indicator update; -> update read on the SSE stream (the API's hub fetch plus the stream). This is
an approximation, good to about a millisecond.

The benchmark starts everything itself on its own ports and data folder, so a running demo or test
stack is never disturbed: ``CRM_HOME=<repo>/.crm/bench``, Kafka on 29092/29093 and PostgreSQL on
25432 (``CRM_BENCH_KAFKA_PORT``, ``CRM_BENCH_KAFKA_CONTROLLER_PORT``, ``CRM_BENCH_PG_PORT``), a fresh
broker log and a fresh database per run, the services started as ``tests.processes`` starts them.
It stops all of it at the end; ``CRM_BENCH_KEEP_STACK=1`` keeps the broker and the database running
(the services are always stopped). Figures are printed and written
to ``.crm/bench/freshness.json``.

    python -m bench.freshness [--events 200] [--rate 10] [--warmup 10] [--timeout 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import httpx
import orjson
import psycopg2
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common.topics import CUSTOMER_EVENTS, INDICATORS
from tests import http as keyed_http
from tests.processes import REPO, Platform, Stack
from tests.sse import SseReader

BENCH_HOME = REPO / ".crm" / "bench"
RESULTS = BENCH_HOME / "freshness.json"
TARGET_MS = 1000.0
MAX_EVENTS = 500
MAX_RATE = 50.0
# The 5m window is five whole minutes ending with the current one, so an event stays in it for at
# least four minutes; the measured events must all still count when the last one is sent.
MAX_RUN_S = 200.0
INDICATOR, WINDOW = "abandonment_rate", "5m"
# The hops of the breakdown: key in the JSON figures, label in the table.
HOPS = {"ack_to_identity_published": "hop 2xx -> identity out",
        "identity_to_view_published": "hop -> view stage out",
        "view_published_to_sse": "hop -> SSE client"}

console = Console()


# -- figures ------------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * p / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values), "min": min(values), "mean": statistics.fmean(values)}


@dataclass
class Series:
    """Latencies (ms) of one measurement; ``missed`` counts samples that never arrived."""

    name: str
    ms: list[float] = field(default_factory=list)
    missed: int = 0
    seconds: float = 0.0  # wall time of the measured part, for the achieved rate

    def stats(self) -> str:
        return f"last {self.ms[-1]:7.1f} ms  p50 {percentile(self.ms, 50):7.1f} ms" if self.ms else ""


def paced(n: int, rate: float) -> Iterator[int]:
    """Yields 1..n, the k-th at start + (k-1)/rate; a slot already past is yielded at once."""
    start = time.monotonic()
    for k in range(1, n + 1):
        delay = start + (k - 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield k


# -- the stack ----------------------------------------------------------------------------------
def start_stack() -> Stack:
    """The project's Kafka and PostgreSQL on the benchmark's ports under .crm/bench, fresh broker log."""
    stack = Stack.on_ports(BENCH_HOME, os.environ.get("CRM_BENCH_KAFKA_PORT", "29092"),
                           os.environ.get("CRM_BENCH_KAFKA_CONTROLLER_PORT", "29093"),
                           os.environ.get("CRM_BENCH_PG_PORT", "25432"))
    with console.status("starting PostgreSQL and Kafka under .crm/bench ..."):
        stack.fresh_start()
    env = stack.env
    console.log(f"PostgreSQL 127.0.0.1:{env['CRM_PG_PORT']}, Kafka {stack.kafka_bootstrap}, data {BENCH_HOME}")
    return stack


def stop_stack(stack: Stack, platform: Platform | None, keep: bool) -> None:
    """Stops the services; then, unless ``keep``, drops the run's database and stops Kafka and PostgreSQL."""
    with console.status("stopping the services" + ("" if keep else ", Kafka and PostgreSQL") + " ..."):
        if platform is not None:
            platform.stop_all()
        if keep:
            console.log(f"CRM_BENCH_KEEP_STACK=1: Kafka {stack.kafka_bootstrap} and PostgreSQL keep running")
            return
        if platform is not None:
            _drop_database(stack, platform.dsn)
        stack.script("kafka.sh", "stop", check=False)
        stack.script("postgres.sh", "stop", check=False)
    console.log("stopped the services, Kafka and PostgreSQL")


def _drop_database(stack: Stack, dsn: str) -> None:
    conn = psycopg2.connect(stack.pg_admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]}")
    conn.close()


# -- freshness ----------------------------------------------------------------------------------
@dataclass
class Sent:
    """One touchpoint of the measured queue, monotonic times in seconds."""

    k: int
    event_id: str
    acked: float
    seen: float | None = None


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _touchpoints(http: httpx.Client, stream: SseReader, run: str, queue: str, n: int, rate: float,
                 timeout: float, progress: Progress, task, series: Series) -> list[Sent]:
    """Posts n call.abandoned events for ``queue``; after each 2xx waits for its update on ``stream``."""
    phone_base = int(uuid.uuid4().hex[:8], 16) % 10**7
    sent: list[Sent] = []
    started = time.monotonic()
    for k in paced(n, rate):
        event_id = f"{run}-{queue}-{k}"
        event = {"id": event_id, "source": "urn:crm:bench", "type": "call.abandoned", "time": _iso_now(),
                 "data": {"phone_number": f"+86139{phone_base * 10 + k:08d}", "call_id": event_id, "queue": queue,
                          "wait_seconds": 30}}
        response = http.post("/v1/events", json=event)
        acked = time.monotonic()
        if response.status_code // 100 != 2 or response.json().get("accepted") != [event_id]:
            raise RuntimeError(f"the collector refused event {k}: {response.status_code} {response.text}")
        item = Sent(k, event_id, acked)
        sent.append(item)
        try:
            item.seen, _, _ = stream.wait_for(
                lambda ev, d, k=k: ev == "indicator" and d["indicator"] == INDICATOR and d["window"] == WINDOW
                and d["dimension"] == "queue" and d["member"] == queue and d["count"] == k,
                timeout, f"{INDICATOR} {WINDOW} count {k} of queue {queue}")
            series.ms.append((item.seen - acked) * 1000)
        except AssertionError:
            series.missed += 1
        progress.update(task, advance=1, stats=series.stats() + (f"  missed {series.missed}" if series.missed else ""))
    series.seconds = time.monotonic() - started
    return sent


def measure_freshness(collector: str, api: str, run: str, n: int, rate: float, warmup: int, timeout: float,
                      progress: Progress) -> tuple[Series, list[Sent], str]:
    """Freshness samples (ms), what was sent, and the measured queue. A warm-up on a queue of its own
    first lets the consumers join their groups and every connection open."""
    stream_url = f"{api}/v1/stream/indicators"
    with keyed_http.Client(base_url=collector, timeout=10) as http:
        if warmup:
            task = progress.add_task("warm-up pipeline", total=warmup, stats="")
            with SseReader(stream_url, {"queue": f"warmup-{run}"}) as stream:
                _touchpoints(http, stream, run, f"warmup-{run}", warmup, rate, timeout, progress, task,
                             Series("warm-up"))
        queue = f"bench-{run}"
        series = Series("freshness")
        task = progress.add_task("freshness", total=n, stats="")
        with SseReader(stream_url, {"queue": queue}) as stream:
            sent = _touchpoints(http, stream, run, queue, n, rate, timeout, progress, task, series)
    return series, sent, queue


# -- baseline -----------------------------------------------------------------------------------
class _Receiver(threading.Thread):
    """A kafka-python consumer of the scratch topic, noting when each record (value = its sequence
    number) arrived."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True, name="bench-baseline-consumer")
        self.bootstrap, self.topic = bootstrap, topic
        self.arrived: dict[int, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._cond = threading.Condition()

    def run(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id="crm-bench-baseline")
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek_to_end(tp)
            consumer.position(tp)  # fixed before anything is sent
            self.ready.set()
            while not self.stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    now = time.monotonic()
                    with self._cond:
                        for record in records:
                            self.arrived[int(record.value)] = now
                        self._cond.notify_all()
        finally:
            consumer.close()

    def wait(self, seq: int, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: seq in self.arrived, timeout)
            return self.arrived.get(seq)


def measure_baseline(bootstrap: str, run: str, n: int, rate: float, warmup: int, timeout: float,
                     progress: Progress) -> Series:
    """Round trips (ms) from a bare producer's send() (acks=all) to the consumer, paced like freshness."""
    topic = f"bench.roundtrip-{run}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bench-admin")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    receiver = _Receiver(bootstrap, topic)
    receiver.start()
    if not receiver.ready.wait(30):
        raise RuntimeError(f"the baseline consumer could not position itself on {topic}")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="crm-bench-baseline")
    try:
        seq = 0
        for name, count in (("warm-up broker", warmup), ("baseline", n)):
            if not count:
                continue
            series = Series(name)
            task = progress.add_task(name, total=count, stats="")
            started = time.monotonic()
            for _ in paced(count, rate):
                seq += 1
                sent = time.monotonic()
                producer.send(topic, str(seq).encode()).get(timeout=timeout)
                arrived = receiver.wait(seq, timeout)
                if arrived is None:
                    series.missed += 1
                else:
                    series.ms.append((arrived - sent) * 1000)
                progress.update(task, advance=1, stats=series.stats())
            series.seconds = time.monotonic() - started
        return series
    finally:
        producer.close()
        receiver.stop.set()
        receiver.join(10)


# -- hop breakdown --------------------------------------------------------------------------------
def hop_breakdown(bootstrap: str, sent: list[Sent], queue: str) -> dict[str, dict]:
    """Splits each freshness sample at the CreateTime of the records the touchpoint caused (see the
    module docstring): {hop: summary in ms}."""
    ids = {s.event_id: s for s in sent if s.seen is not None}
    key = f"{INDICATOR}|{WINDOW}|queue={queue}".encode()
    resolved: dict[str, int] = {}  # event id -> CreateTime (ms) of its crm.customer-events record
    updated: dict[int, int] = {}   # count -> CreateTime (ms) of the first crm.indicators update with it
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="crm-bench-hops")
    try:
        tps = [TopicPartition(t, p) for t in (CUSTOMER_EVENTS, INDICATORS)
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                for r in records:
                    if tp.topic == CUSTOMER_EVENTS:
                        event_id = orjson.loads(r.value).get("id")
                        if event_id in ids:
                            resolved.setdefault(event_id, r.timestamp)
                    elif r.key == key:
                        updated.setdefault(int(orjson.loads(r.value)["count"]), r.timestamp)
    finally:
        consumer.close()
    to_wall = time.time() - time.monotonic()  # the run lasts minutes: drift between the clocks is negligible
    hops: dict[str, list[float]] = {name: [] for name in HOPS}
    for event_id, s in ids.items():
        if event_id in resolved and s.k in updated:
            acked, seen = (s.acked + to_wall) * 1000, (s.seen + to_wall) * 1000
            a, b = resolved[event_id], updated[s.k]
            for name, ms in zip(hops, (a - acked, b - a, seen - b)):
                hops[name].append(ms)
    return {name: summary(ms) for name, ms in hops.items()}


# -- report ---------------------------------------------------------------------------------------
def report(freshness: Series, baseline: Series, hops: dict[str, dict], args: argparse.Namespace) -> dict:
    f, b = summary(freshness.ms), summary(baseline.ms)
    ratio = {p: f[p] / b[p] for p in ("p50", "p99")} if f["n"] and b["n"] else {}
    met = bool(f["n"]) and not freshness.missed and f["p99"] < TARGET_MS
    table = Table(title=f"Freshness of the live indicator stream ({args.events} events at {args.rate:g}/s)")
    table.add_column("ms", style="bold")
    for p in ("p50", "p95", "p99", "max"):
        table.add_column(p, justify="right")
    table.add_column("n / missed", justify="right")
    for name, s, series in (("freshness (2xx -> SSE)", f, freshness), ("baseline (Kafka round trip)", b, baseline)):
        table.add_row(name, *(f"{s[p]:.1f}" if s["n"] else "-" for p in ("p50", "p95", "p99", "max")),
                      f"{s['n']} / {series.missed}")
    if ratio:
        table.add_row("ratio freshness/baseline", f"{ratio['p50']:.1f}x", "", f"{ratio['p99']:.1f}x", "", "")
    for name, s in hops.items():
        if s["n"]:
            table.add_row(HOPS[name], *(f"{s[p]:.1f}" for p in ("p50", "p95", "p99", "max")), str(s["n"]),
                          style="dim")
    console.print(table)
    verdict = "[green]met[/]" if met else "[red]missed[/]"
    console.print(f"target p99 freshness < {TARGET_MS:.0f} ms: {verdict}"
                  + (f" (p99 {f['p99']:.1f} ms)" if f["n"] else ""))
    return {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {"events": args.events, "rate_per_s": args.rate, "warmup": args.warmup, "timeout_s": args.timeout,
                   "indicator": INDICATOR, "window": WINDOW},
        "freshness_ms": {**f, "missed": freshness.missed,
                         "achieved_rate_per_s": (len(freshness.ms) + freshness.missed) / freshness.seconds},
        "baseline_ms": {**b, "missed": baseline.missed,
                        "achieved_rate_per_s": (len(baseline.ms) + baseline.missed) / baseline.seconds},
        "ratio": ratio,
        "hops_ms": hops,
        "target": {"p99_under_ms": TARGET_MS, "met": met},
    }


# -- main -----------------------------------------------------------------------------------------
def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("CRM_BENCH_EVENTS", 200)),
                        help=f"measured touchpoints, and baseline round trips (default 200, at most {MAX_EVENTS})")
    parser.add_argument("--rate", type=float, default=float(os.environ.get("CRM_BENCH_RATE", 10)),
                        help=f"events offered per second (default 10, at most {MAX_RATE:g})")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured events first, on each path (default 10)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one update (default 30)")
    args = parser.parse_args(argv)
    if not 1 <= args.events <= MAX_EVENTS:
        parser.error(f"--events must be between 1 and {MAX_EVENTS}")
    if not 0 < args.rate <= MAX_RATE:
        parser.error(f"--rate must be above 0 and at most {MAX_RATE:g}")
    if args.events / args.rate > MAX_RUN_S:
        parser.error(f"--events / --rate must be at most {MAX_RUN_S:.0f} s: the {WINDOW} window must still hold "
                     "every measured event when the last one is sent")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    run = uuid.uuid4().hex[:8]
    keep = os.environ.get("CRM_BENCH_KEEP_STACK") == "1"
    stack = start_stack()
    platform: Platform | None = None
    try:
        with console.status("starting crm-ingest, crm-processor and crm-api ..."):
            platform = Platform(stack, stack.new_database(), BENCH_HOME / "logs" / f"bench-{run}")
            keyed_http.use_key(platform.admin_key)  # the collector and the stream need an API key
            _, collector = platform.collector()
            platform.processor()
            _, api = platform.api()
        console.log(f"collector {collector}, API {api}, logs {platform.log_dir}")
        columns = (TextColumn("{task.description:<16}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            freshness, sent, queue = measure_freshness(collector, api, run, args.events, args.rate, args.warmup,
                                                       args.timeout, progress)
            baseline = measure_baseline(stack.kafka_bootstrap, run, args.events, args.rate, args.warmup,
                                        args.timeout, progress)
        with console.status("reading the topics back for the hop breakdown ..."):
            hops = hop_breakdown(stack.kafka_bootstrap, sent, queue)
        figures = report(freshness, baseline, hops, args)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"figures written to {RESULTS.relative_to(REPO)}")
        return 1 if freshness.missed or baseline.missed else 0
    finally:
        stop_stack(stack, platform, keep)


if __name__ == "__main__":
    sys.exit(main())
