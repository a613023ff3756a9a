"""Collector ingest: events/s through ``POST /v1/events`` (batched, acks=all) against a bare
kafka-python producer loop on the same broker, same run.

What is measured
----------------
**Collector.** ``crm-ingest`` is started on the bench stack (``ctx.platform.collector()``). The
workload is ``bench.workload.events(n, seed=101)``: simulated touchpoints as a channel system sends
them (raw CloudEvent dicts, identifiers written the many ways people write them), a different seed
from the processing log's (8) so the ids and identifiers are new. Before the clock starts they are
packed into JSON arrays of ``BATCH`` events (fewer when the array would pass the collector's
``max_batch_bytes``, 500 KiB) and encoded once with orjson, so the client costs next to nothing
while measured. ``CONCURRENCY`` client threads, each with its own keep-alive ``httpx.Client``,
post the arrays with an ``events:write`` key; an event counts as ingested only when its request
answered 202 with every event of the array accepted (the collector answers only after Kafka
acknowledged every accepted event, acks=all). One warm-up array per thread (extra events, not
counted) opens the connections and the collector's producer first. Figure: ingested events / wall
time from the first measured request to the last answer.

The collector is the real thing: validation, dedup within the request, sealing (a pseudonym and a
data key per identifier from the key vault in PostgreSQL, AES-GCM tokens for personal fields),
then kafka-python with acks=all. Only its rate limits are raised for the run
(``CRM_RATE_LIMIT_*``, ``CRM_SOURCE_RATE_LIMIT_*``: the defaults, 2,000 events/s per key and per
source, would measure the limiter, not the collector). Note it writes to ``crm.touchpoints`` of the
run (and new subjects into the run's key vault): run it after the processing benchmarks, or with no
processor that should not see these events.

**Baseline.** A bare ``KafkaProducer(acks="all")`` with the library's default batching sends the
same number of records: the same events' orjson encoding as values (the collector's sealed values
are somewhat larger), keyed like the collector keys them (``<kind>:psn-<32 hex>`` of the event's
primary identifier), with the same content-type header, to a scratch topic
``bench.ingest-<run_id>`` of the same partition count; ``send()`` in a loop, then ``flush()``; a
warm-up of a few hundred records first. Target: collector ≥ 70 % of the baseline's events/s.

The collector's peak RSS (its process and children) is sampled during its run, and the PostgreSQL
sessions opened on the run's database meanwhile are counted (``pg_stat_database.sessions``: the
vault's pool opens one per request when it does not keep its connections).
``CRM_BENCH_PROFILE=1`` also runs py-spy on the collector during an extra, unmeasured load phase
and puts its top functions (self and inclusive share of samples) in the details.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson
import psycopg2
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.common import Context, PeakRss, Result, console, progress_bar
from bench.workload import events as workload_events
from tests.processes import VENV_BIN

SEED = 101
BATCH = 500
CONCURRENCY = 4
TARGET_RATIO = 0.70
HEADERS = [("content-type", b"application/cloudevents+json; charset=utf-8")]
UNLIMITED = {"CRM_RATE_LIMIT_PER_S": "1e9", "CRM_RATE_LIMIT_BURST": "1000000000",
             "CRM_SOURCE_RATE_LIMIT_PER_S": "1e9", "CRM_SOURCE_RATE_LIMIT_BURST": "1000000000"}


# -- helpers shared with bench.query ------------------------------------------------------------
def pg_sessions(dsn: str) -> int:
    """Sessions ever opened on the database (``pg_stat_database.sessions``), this one's included."""
    conn = psycopg2.connect(dsn, application_name="crm-bench-sessions")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


WAIT_LEAVES = ("select (selectors.py)", "wait (threading.py)", "_worker (concurrent/futures/thread.py)",
               "WorkerThread.run (anyio/_backends/_asyncio.py)", "sleep")
"""Leaf frames that are a thread blocked waiting (py-spy's idle detection misses some)."""
PLUMBING = ("(threading.py)", "(asyncio/", "(concurrent/futures/", "(anyio/", "(uvicorn/", "(starlette/", "(fastapi/",
            "(contextlib.py)", "(h11/", "<module>", "(runpy.py)", "run (services/api/main.py)",
            "run (services/ingest/main.py)")
"""Frames left out of the inclusive list: the threads', event loop's and web framework's own."""


def _frame_name(frame: str) -> str:
    """``func (pkg/module.py:123)`` -> ``func (pkg/module.py)``: the lines of one function merged."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy's collapsed stacks (``--format raw``) -> the samples, those of threads blocked waiting,
    and the top functions as a share of the busy samples: by self time, and inclusive (the threads',
    event loop's and web framework's plumbing left out)."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += n
        if any(frames[-1].endswith(w) or w in frames[-1] for w in WAIT_LEAVES):
            waiting += n
            continue
        self_c[frames[-1]] += n
        for name in set(frames):
            if not any(p in name for p in PLUMBING):
                incl_c[name] += n
    busy = total - waiting
    pct = lambda c: [{"function": f, "pct": round(100 * v / busy, 1)} for f, v in c.most_common(top)] if busy else []
    return {"samples": total, "waiting_samples": waiting, "busy_samples": busy,
            "self": pct(self_c), "inclusive": pct(incl_c)}


def profile_while(pid: int, load: Callable[[], Any], rate_hz: int = 100) -> dict[str, Any]:
    """Runs ``load()`` with py-spy sampling ``pid`` (stopped by SIGINT when the load ends)."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        return {"error": "py-spy is not installed in the venv"}
    out = Path(tempfile.mkdtemp(prefix="crm-bench-profile-")) / "stacks.txt"
    proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate_hz),
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached
    try:
        load()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    summary = summarize_profile(out.read_text())
    summary["stacks_file"] = str(out)
    return summary


def print_profile(title: str, profile: dict[str, Any], top: int = 12) -> None:
    if "error" in profile:
        console.log(f"{title}: {profile['error']}")
        return
    console.log(f"{title}: {profile['busy_samples']} busy of {profile['samples']} samples, shares of the busy ones "
                f"({profile.get('stacks_file')})")
    for kind in ("self", "inclusive"):
        console.log(f"  top by {kind}:")
        for row in profile[kind][:top]:
            console.log(f"    {row['pct']:5.1f} %  {row['function']}")


# -- the workload --------------------------------------------------------------------------------
def _batches(events: list[dict], batch: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """(event count, body) of JSON arrays of up to ``batch`` events and ``max_bytes`` bytes."""
    out: list[tuple[int, bytes]] = []
    current: list[bytes] = []
    size = 2
    for event in events:
        encoded = orjson.dumps(event)
        if current and (len(current) >= batch or size + len(encoded) + 1 > max_bytes):
            out.append((len(current), b"[" + b",".join(current) + b"]"))
            current, size = [], 2
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        out.append((len(current), b"[" + b",".join(current) + b"]"))
    return out


def _baseline_records(events: list[dict]) -> list[tuple[bytes, bytes]]:
    """(key, value): keyed like the collector (``kind:psn-<hex>`` of the primary identifier, here a
    digest instead of a vault pseudonym), the value the event's orjson encoding."""
    from events.envelope import InvalidEvent, validate

    received = datetime.now(timezone.utc)
    out = []
    for event in events:
        try:
            ident = validate(event, received_at=received).primary_identifier
            key = f"{ident.kind}:psn-{hashlib.md5(ident.key.encode()).hexdigest()}".encode()
        except InvalidEvent:
            key = f"x:psn-{hashlib.md5(str(event.get('id')).encode()).hexdigest()}".encode()
        out.append((key, orjson.dumps(event)))
    return out


# -- the collector -------------------------------------------------------------------------------
class _Poster:
    """Posts the arrays from a shared cursor with ``concurrency`` threads; counts what went through."""

    def __init__(self, url: str, key: str, batches: list[tuple[int, bytes]], concurrency: int,
                 on_done: Callable[[int], None] | None = None):
        self.url, self.key, self.batches, self.concurrency = url, key, batches, concurrency
        self.on_done = on_done
        self.accepted = 0
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.request_ms: list[float] = []
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> tuple[int, bytes] | None:
        with self._lock:
            if self._next >= len(self.batches):
                return None
            item = self.batches[self._next]
            self._next += 1
            return item

    def _error(self, kind: str, sample: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(sample[:300])

    def _worker(self, client: httpx.Client) -> None:
        while (item := self._take()) is not None:
            count, body = item
            started = time.perf_counter()
            try:
                response = client.post("/v1/events", content=body)
            except httpx.HTTPError as exc:
                self._error(type(exc).__name__, repr(exc))
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 202:
                self._error(f"http {response.status_code}", response.text)
                continue
            answer = orjson.loads(response.content)
            if answer.get("rejected") or len(answer.get("accepted", ())) != count:
                self._error("rejected", str(answer.get("rejected"))[:300])
                continue
            with self._lock:
                self.accepted += count
                self.request_ms.append(elapsed)
            if self.on_done:
                self.on_done(count)

    def run(self) -> float:
        """Posts everything; returns the wall time in seconds."""
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        clients = [httpx.Client(base_url=self.url, headers=headers, timeout=60,
                                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
                   for _ in range(self.concurrency)]
        try:
            threads = [threading.Thread(target=self._worker, args=(c,), daemon=True) for c in clients]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - started
        finally:
            for c in clients:
                c.close()


def measure_collector(ctx: Context, batches: list[tuple[int, bytes]], warmup: list[tuple[int, bytes]],
                      concurrency: int, profile_batches: list[tuple[int, bytes]] | None) -> dict[str, Any]:
    service, url = ctx.platform.collector(**UNLIMITED)
    key = ctx.platform.keys["events:write"]
    total = sum(n for n, _ in batches)
    try:
        with PeakRss(service.proc.pid) as rss:
            _Poster(url, key, warmup, concurrency).run()  # opens the connections, the producer, the vault pool
            with progress_bar() as progress:
                task = progress.add_task("collector POST /v1/events", total=total, stats="")
                done = [0]
                started = time.perf_counter()

                def advance(n: int) -> None:
                    done[0] += n
                    rate = done[0] / max(time.perf_counter() - started, 1e-9)
                    progress.update(task, advance=n, stats=f"{rate:8,.0f} events/s")

                poster = _Poster(url, key, batches, concurrency, advance)
                sessions = pg_sessions(ctx.platform.dsn)
                seconds = poster.run()
                sessions = pg_sessions(ctx.platform.dsn) - sessions - 1
        profile = None
        if profile_batches:
            with console.status("profiling the collector under the same load (py-spy) ..."):
                profile = profile_while(service.proc.pid,
                                        lambda: _Poster(url, key, profile_batches, concurrency).run())
    finally:
        service.stop()
    return {"seconds": seconds, "accepted": poster.accepted, "errors": dict(poster.errors),
            "error_samples": poster.error_samples, "request_ms": poster.request_ms,
            "peak_rss_mib": rss.peak_mib, "profile": profile, "pg_sessions": sessions, "log": str(service.log_path)}


# -- the baseline --------------------------------------------------------------------------------
def measure_baseline(ctx: Context, records: list[tuple[bytes, bytes]], warmup: int = 500) -> dict[str, Any]:
    bootstrap = ctx.stack.kafka_bootstrap
    partitions = int(ctx.stack.env.get("CRM_PARTITIONS", "4"))
    topic = f"bench.ingest-{ctx.run_id}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bench-admin")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="crm-bench-ingest-baseline")
    failed = [0]

    def errback(_exc: Exception) -> None:
        failed[0] += 1

    try:
        for key, value in records[:warmup]:  # metadata, connections to the partition leaders
            producer.send(topic, key=key, value=value, headers=HEADERS)
        producer.flush(timeout=60)
        n = len(records)
        every = max(1, n // 200)
        with progress_bar() as progress:
            task = progress.add_task("bare kafka-python producer", total=n, stats="")
            started = time.perf_counter()
            for i, (key, value) in enumerate(records, 1):
                producer.send(topic, key=key, value=value, headers=HEADERS).add_errback(errback)
                if i % every == 0:
                    progress.update(task, completed=i,
                                    stats=f"{i / max(time.perf_counter() - started, 1e-9):8,.0f} sent/s")
            producer.flush(timeout=600)
            seconds = time.perf_counter() - started
            progress.update(task, completed=n, stats=f"{(n - failed[0]) / seconds:8,.0f} events/s (acked)")
    finally:
        producer.close(timeout=10)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bench-admin")
        try:
            admin.delete_topics([topic], timeout_ms=30_000)
        except Exception:  # left for the next run's empty_topics
            pass
        finally:
            admin.close()
    return {"seconds": seconds, "acked": len(records) - failed[0], "errors": failed[0], "topic": topic,
            "partitions": partitions}


# -- run -----------------------------------------------------------------------------------------
def run(ctx: Context) -> list[Result]:
    n = 20_000 if ctx.quick else 200_000
    batch = int(os.environ.get("CRM_BENCH_INGEST_BATCH", BATCH))
    concurrency = int(os.environ.get("CRM_BENCH_INGEST_CONCURRENCY", CONCURRENCY))
    max_bytes = int(ctx.platform.env().get("CRM_MAX_BATCH_BYTES", 500 * 1024))
    profile = os.environ.get("CRM_BENCH_PROFILE") == "1"
    extra = concurrency * batch  # the warm-up arrays: one per thread
    extra_profile = min(n, 10 * concurrency * batch) if profile else 0

    with console.status(f"preparing {n + extra + extra_profile:,} events (seed {SEED}), encoding the arrays ..."):
        events = list(workload_events(n + extra + extra_profile, seed=SEED))
        warmup = _batches(events[:extra], batch, max_bytes)
        measured_events = events[extra:extra + n]
        batches = _batches(measured_events, batch, max_bytes)
        profile_batches = _batches(events[extra + n:], batch, max_bytes) if profile else None
        records = _baseline_records(measured_events)
    body_bytes = sum(len(b) for _, b in batches)

    collector = measure_collector(ctx, batches, warmup, concurrency, profile_batches)
    baseline = measure_baseline(ctx, records)

    figure = collector["accepted"] / collector["seconds"]
    base = baseline["acked"] / baseline["seconds"]
    ratio = figure / base if base else 0.0
    errors = sum(collector["errors"].values())
    from bench.common import summary

    details = {
        "load_avg_at_end": os.getloadavg(), "events": n, "seed": SEED, "batch_size": batch, "max_batch_bytes": max_bytes,
        "requests": len(batches), "mean_body_bytes": round(body_bytes / len(batches)),
        "mean_event_bytes": round(sum(len(v) for _, v in records) / len(records)),
        "concurrency": concurrency, "warmup_events_per_side": extra,
        "collector_seconds": round(collector["seconds"], 3),
        "collector_events_accepted": collector["accepted"],
        "collector_errors": collector["errors"], "collector_error_samples": collector["error_samples"],
        "collector_request_ms": summary(collector["request_ms"]),
        "collector_peak_rss_mib": collector["peak_rss_mib"],
        "collector_pg_sessions_opened": collector["pg_sessions"],
        "collector_rate_limits": "raised for the run (CRM_RATE_LIMIT_*, CRM_SOURCE_RATE_LIMIT_* = 1e9)",
        "collector_log": collector["log"],
        "baseline_seconds": round(baseline["seconds"], 3), "baseline_events_acked": baseline["acked"],
        "baseline_errors": baseline["errors"], "baseline_topic": baseline["topic"],
        "baseline_partitions": baseline["partitions"],
        "baseline_producer": "KafkaProducer(acks='all'), library defaults otherwise",
    }
    if collector["profile"] is not None:
        details["collector_profile"] = collector["profile"]
        print_profile("collector profile (py-spy)", collector["profile"])
    met = ratio >= TARGET_RATIO and errors == 0 and collector["accepted"] == n
    console.log(f"collector {figure:,.0f} events/s vs bare producer {base:,.0f} events/s: {ratio:.1%} "
                f"(target >= {TARGET_RATIO:.0%}), errors {errors}, peak RSS {collector['peak_rss_mib']} MiB")
    return [Result(
        key="ingest.collector",
        what=f"collector POST /v1/events, JSON arrays of {batch} events, {concurrency} concurrent keep-alive "
             "clients, 2xx only once Kafka acknowledged (acks=all)",
        figure=round(figure, 1), unit="events/s", baseline=round(base, 1),
        baseline_what="bare kafka-python producer (acks=all, default batching), same events' JSON, "
                      "send() loop then flush(), same broker and partition count",
        target=">= 70 % of a bare kafka-python producer (acks=all)", met=met, ratio=round(ratio, 4),
        details=details)]
