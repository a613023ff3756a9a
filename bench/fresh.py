"""Freshness at a fixed offered rate: collector 2xx -> visible in the query API, and -> on the live
indicator stream, while realistic background traffic is offered at 2,000 events/s (the README's Benchmarks:
p50 <= 50 ms, p99 <= 250 ms).

What is measured
----------------
**Background load.** ``bench.workload.events(n, seed=202)`` (simulated touchpoints of every channel,
identifiers written the many ways people write them) is posted to ``POST /v1/events`` in arrays of
``BATCH`` (20) on a fixed schedule, open loop: array *i* is due at ``t0 + i * BATCH / rate`` whether
or not earlier ones were answered, at most ``CONCURRENCY`` requests in flight (when all are busy the
schedule slips: ``schedule_slip_ms``, and the achieved rate falls below the offered one). Offered:
2,000 events/s (quick: 500/s). The events' times are shifted so the workload ends now (relative
timings kept, so they count in the live windows like real traffic) and their ids carry the run id
(nothing is deduplicated away). The load runs in a child process (``python -m bench.fresh
--load-child``, bodies encoded once beforehand) so it never holds the GIL of the measuring threads,
with the run's ``events:write`` key, as a channel system would. Achieved rate = events accepted
(202, listed in ``accepted``) by requests answered inside the measured window / its length;
refusals (per status, or the exception when no answer came) and validation rejections are counted.

**Warm-up.** The load runs at least ``WARMUP_S`` (quick ``QUICK_WARMUP_S``) before the window opens,
and then until the pipeline has settled: the last ``SETTLED_N`` warm-up probes (a queue of their
own) visible in the API within ``SETTLED_S`` (first batches pay connection set-up and lazy loading,
e.g. the sentiment dictionary), at most ``WARMUP_MAX_S`` (quick ``QUICK_WARMUP_MAX_S``); then the
measured window: 60 s (quick 15 s). ``details.warmup`` says how long and whether it settled.

**Probes.** At ``PROBE_RATE`` (10/s) through the window, one ``call.abandoned`` event with a new phone
number (a new customer) for the run's probe queue ``fresh-<run_id>`` is posted alone (admin key), each
on a worker thread of its own so a slow answer never delays the next. From its 2xx:

* **API**: the same thread polls ``GET /v1/customers?phone=<the phone>`` (the identifier lookup;
  it answers 200 with no item until the view stage has committed the customer) every
  ``POLL_INTERVAL_S`` (5 ms), or 5 % of the time waited so far when that is longer, until it lists a
  customer; the sample ends when that answer arrived. All lookups together are held to
  ``POLL_CAP_PER_S`` a second: each costs the API a few ms of CPU and an audit row, and the probing
  must not become the load (``details.cpu_share.api`` shows what it cost). Polls of different
  probes overlap. A probe not visible ``PROBE_TIMEOUT_S`` after its 2xx is missed.
* **SSE**: one stream ``GET /v1/stream/indicators?queue=<probe queue>&indicator=abandonment_rate&window=5m``
  is open all along; each ``indicator`` update's arrival is noted with its ``count`` (probes in the
  5-minute window). Probe *k* is on the stream when the first update with ``count >= k`` arrives
  (two probes in one batch give one update; a probe overtaken by the next one on another partition
  is credited with its successor's arrival and the successor with its own: the set of samples stays
  right). Missed: no such update ``PROBE_TIMEOUT_S`` after the window.

Figures: p50/p95/p99/max of each, missed, offered and achieved rate. The result's figure is the p99
with every missed probe counted as the timeout (``p99_with_missed``; the same as p99 when none was
missed). Met: p50 and p99 so counted <= 50 ms and <= 250 ms, and achieved >= 95 % of offered (a quick
run checks the thresholds at its own, lower rate and says so).

**Baseline** (same run, same window, under the same load): a bare kafka-python producer
(``acks=all``) sends to a consumer on a scratch topic ``bench.roundtrip-<run_id>-fresh``, one record
at a time at the probe rate; the sample is send() -> the consumer holds the record: one Kafka hop.
The API path crosses about two of them after the 2xx (the identity stage's fetch, then its output's
produce-and-consume round trip to the view stage) plus PostgreSQL; the SSE path a third
(``crm.indicators`` to the API's live hub).

**Where the time goes** (``details``):

* ``hops_ms``: each probe's sample split where its resolved event could first be read from
  ``crm.customer-events`` (a tap consumer in this process: the records' CreateTime cannot say,
  resolved events keep their touchpoint's Kafka timestamp) and at the CreateTime of the first
  ``crm.indicators`` update counting it (the view stage publishes its outputs just before it
  commits): 2xx -> identity stage out -> view stage out -> visible in the API (publish acks, commit,
  the lookup) / on the SSE stream (the hub's fetch, the fan-out).
* ``processor_batches``: per stage, from the processor's ``/metrics`` before and after the window:
  batches/s, mean records per batch, mean batch time (process + publish + commit). With
  ``take_events(CRM_BATCH_SIZE, within=CRM_BATCH_WITHIN_S)`` an agent that has not filled a batch
  waits ``within`` before each one, so each stage adds about ``within`` + a batch time, twice.
* ``records_per_s`` written to each topic, ``cpu_share`` (cores used by each process in the
  window), ``cpu_ms_per_event`` (collector, processor), ``machine`` (how busy all CPUs were: other
  work on the machine shows here).

Services: the collector, processor and API of ``ctx.platform`` are reused when running, otherwise
started and stopped again at the end. A processor started here gets ``PROCESSOR_ENV``:
``CRM_BATCH_WITHIN_S=0.01``, the platform's default (the test platform sets 0.05). Measured on the 2-core machine at 100
events/s it halves freshness (API p50 about 115 -> 55 ms, p99 about 190 -> 130 ms) for about the same
processor CPU; 0.005 was no better and cost more CPU, 0.02 was in between. Under a backlog the batches
fill to ``CRM_BATCH_SIZE`` and ``within`` plays no part, so throughput is unaffected.

    python -m bench.fresh [--quick] [--rate 2000] [--duration 60] [--processor-env CRM_BATCH_WITHIN_S=0.05]
        # by hand, on a stack of its own under CRM_BENCH_HOME (see bench.common), figures in <home>/fresh.json
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

import httpx
import orjson
import psutil
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from bench.common import Context, Result, console, percentile, progress_bar, summary
from services.common.topics import (CUSTOMER_CHANGES, CUSTOMER_EVENTS, CUSTOMER_STATE, DEADLETTER, INDICATORS,
                                    TOUCHPOINTS)
from tests.processes import REPO, Service
from tests.sse import SseReader

RATE, QUICK_RATE = 2000.0, 500.0            # background events/s offered
DURATION_S, QUICK_DURATION_S = 60.0, 15.0   # the measured window
WARMUP_S, QUICK_WARMUP_S = 10.0, 5.0        # load (and warm-up probes) before it, at least ...
WARMUP_MAX_S, QUICK_WARMUP_MAX_S = 30.0, 20.0  # ... and at most, until the pipeline has settled:
SETTLED_S, SETTLED_N = 1.0, 3               # the last 3 warm-up probes visible in the API within 1 s
BATCH = 20                                  # events per background request
CONCURRENCY = 32                            # background requests in flight at most
SEED = 202
PROBE_RATE = 10.0                           # probes/s (and baseline round trips/s)
POLL_INTERVAL_S = 0.005                     # each probe's lookup pace, at first ...
POLL_BACKOFF = 0.05                         # ... then 5 % of the time waited so far (resolution 5 %)
POLL_CAP_PER_S = 100.0                      # all lookups together at most
PROBE_TIMEOUT_S = 10.0
P50_MS, P99_MS = 50.0, 250.0
TARGET = "p50 <= 50 ms, p99 <= 250 ms at 2,000 events/s offered"
INDICATOR, WINDOW = "abandonment_rate", "5m"
# Environment of a processor this benchmark starts itself, over Platform.env (which sets
# CRM_BATCH_WITHIN_S=0.05): see the module docstring for why 0.01.
PROCESSOR_ENV: dict[str, str] = {"CRM_BATCH_WITHIN_S": "0.01"}
HOPS = {"ack_to_identity_out": "2xx -> identity stage out (readable)",
        "identity_to_view_out": "identity out -> view stage out",
        "view_out_to_api": "view out -> visible in the API",
        "view_out_to_sse": "view out -> on the SSE stream"}


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rounded(stats: dict[str, Any], digits: int = 1) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in stats.items()}


# -- background load: a child process ----------------------------------------------------------
def _background_bodies(n_batches: int, batch: int, seed: int, run_id: str) -> list[bytes]:
    """The workload as JSON arrays, encoded once: times shifted to end now, ids made the run's."""
    from bench.workload import events

    evs = list(events(n_batches * batch, seed))
    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in evs]
    shift = datetime.now(timezone.utc) - timedelta(seconds=1) - max(times)
    for e, t in zip(evs, times):
        e["time"] = _iso(t + shift)
        e["id"] = f"{e['id']}-{run_id}"
    return [orjson.dumps(evs[i:i + batch]) for i in range(0, len(evs), batch)]


async def _fire(cfg: dict, bodies: list[bytes], t0: float, out, stop: threading.Event) -> list[list]:
    """Posts ``bodies`` on the open-loop schedule until ``stop``; one record per request:
    [due, sent, answered, status, events, accepted, rejected, error] (monotonic seconds; status 0 and
    the exception's name when no answer came)."""
    interval = cfg["batch"] / cfg["rate"]
    limits = httpx.Limits(max_connections=cfg["concurrency"], max_keepalive_connections=cfg["concurrency"])
    headers = {"Authorization": f"Bearer {cfg['key']}", "content-type": "application/json"}
    records: list[list] = []
    counts = [0, 0, 0, 0]  # events sent, accepted, rejected, refused (non-2xx or no answer)
    slots = asyncio.Semaphore(cfg["concurrency"])
    done = asyncio.Event()

    async def report() -> None:
        while not done.is_set():
            out.write(f"progress {counts[0]} {counts[1]} {counts[2]} {counts[3]}\n")
            out.flush()
            try:
                await asyncio.wait_for(done.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    async with httpx.AsyncClient(base_url=cfg["collector"], headers=headers, limits=limits,
                                 timeout=httpx.Timeout(30.0)) as client:
        async def one(due: float, body: bytes, n: int) -> None:
            sent = time.monotonic()
            accepted = rejected = 0
            error = ""
            try:
                response = await client.post("/v1/events", content=body)
                status = response.status_code
                if status // 100 == 2:
                    answer = orjson.loads(response.content)
                    accepted, rejected = len(answer.get("accepted", ())), len(answer.get("rejected", ()))
            except Exception as exc:
                status, error = 0, type(exc).__name__
            finally:
                slots.release()
            records.append([due, sent, time.monotonic(), status, n, accepted, rejected, error])
            counts[1] += accepted
            counts[2] += rejected
            counts[3] += 0 if status // 100 == 2 else n

        reporter = asyncio.create_task(report())
        tasks = []
        for i, body in enumerate(bodies):
            due = t0 + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            await slots.acquire()
            n = cfg["batch"]
            counts[0] += n
            tasks.append(asyncio.create_task(one(due, body, n)))
        await asyncio.gather(*tasks)
        done.set()
        await reporter
    return records


def _load_child_main() -> int:
    """``python -m bench.fresh --load-child``: reads its configuration (one JSON line) on stdin,
    prepares the bodies, says ``ready``, waits for ``go <t0>``, posts until ``stop`` (or the
    bodies run out), then prints ``result <JSON>``."""
    cfg = orjson.loads(sys.stdin.readline())
    n_batches = int(round(cfg["total_s"] * cfg["rate"] / cfg["batch"]))
    bodies = _background_bodies(n_batches, cfg["batch"], cfg["seed"], cfg["run_id"])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        return 1
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    records = asyncio.run(_fire(cfg, bodies, float(line[1]), sys.stdout, stop))
    sys.stdout.write("result " + orjson.dumps(records).decode() + "\n")
    sys.stdout.flush()
    return 0


class _Load:
    """The parent's side of the load child: start, ready, go, live counts, records."""

    def __init__(self, cfg: dict, log_path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fresh", "--load-child"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1, start_new_session=True)
        self.proc.stdin.write(orjson.dumps(cfg).decode() + "\n")
        self.proc.stdin.flush()
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.counts = (0, 0, 0, 0)
        self.records: list[list] | None = None
        threading.Thread(target=self._read, daemon=True, name="bench-fresh-load-reader").start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                if line.startswith("progress "):
                    self.counts = tuple(int(x) for x in line.split()[1:5])
                elif line.startswith("ready"):
                    self.ready.set()
                elif line.startswith("result "):
                    self.records = orjson.loads(line[7:])
        finally:
            self.finished.set()

    def go(self, t0: float) -> None:
        self.proc.stdin.write(f"go {t0!r}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def _load_figures(records: list[list], start: float, end: float, rate: float) -> dict[str, Any]:
    """Offered and achieved in the window [start, end]: requests sent / answered inside it, and how
    late on the schedule the sent ones went (all slots busy: the collector answers too slowly)."""
    seconds = end - start
    sent = [r for r in records if start <= r[1] < end]
    answered = [r for r in records if start <= r[2] < end]
    statuses: dict[str, int] = {}
    for r in answered:
        if r[3] // 100 != 2:
            key = str(r[3]) if r[3] else f"no answer ({r[7]})"
            statuses[key] = statuses.get(key, 0) + r[4]
    accepted = sum(r[5] for r in answered)
    return {
        "offered_rate_per_s": rate,
        "sent_rate_per_s": round(sum(r[4] for r in sent) / seconds, 1),
        "achieved_rate_per_s": round(accepted / seconds, 1),
        "requests": len(answered), "events_accepted": accepted,
        "events_rejected": sum(r[6] for r in answered),
        "events_refused_by_status": statuses,
        "request_ms": _rounded(summary([(r[2] - r[1]) * 1000 for r in answered])),
        "schedule_slip_ms": _rounded(summary([(r[1] - r[0]) * 1000 for r in sent])),
        "all_requests": len(records), "all_events_accepted": sum(r[5] for r in records),
    }


# -- probes ----------------------------------------------------------------------------------------
@dataclass
class Probe:
    k: int                  # 1.. in the probe queue; 0 for warm-up probes
    event_id: str
    phone: str
    acked: float | None = None      # monotonic s of the collector's 2xx
    post_ms: float | None = None
    api_seen: float | None = None   # the lookup's answer listing the customer arrived
    sse_seen: float | None = None
    polls: int = 0
    refused: str | None = None
    done: bool = False              # posted and polled for (or given up)


class _Window:
    """The measured window: decided once the warm-up has settled (monotonic seconds)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def open(self, duration: float) -> None:
        self.end = time.monotonic() + 0.05 + duration
        self.start = self.end - duration

    def measured(self, slot: float) -> bool | None:
        """True inside the window, False before it, None after it."""
        start, end = self.start, self.end
        if start is None or slot < start:
            return False
        return True if slot < end else None

    def slots(self, t0: float, stop: threading.Event, *, never_bunch: bool = False) -> Iterator[bool]:
        """Waits for each slot, every 1/PROBE_RATE s from t0, and yields whether it is inside the
        window; ends when the window closes or ``stop`` is set. ``never_bunch``: a slot the caller
        was late for moves on from now instead of being caught up at once."""
        gap, slot = 1.0 / PROBE_RATE, t0
        while not stop.is_set():
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            inside = self.measured(slot)
            if inside is None:
                return
            yield inside
            slot = max(slot + gap, time.monotonic() - gap) if never_bunch else slot + gap


class _Pacer:
    """Spaces calls from every thread at least 1/rate apart (a shared budget of lookups)."""

    def __init__(self, rate: float):
        self.gap = 1.0 / rate
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.gap
        if slot > now:
            time.sleep(slot - now)


class _Lookup:
    """``GET /v1/customers?phone=`` on a keep-alive ``http.client`` connection per thread: a tenth
    of httpx's CPU per request, so the measuring side stays light."""

    def __init__(self, api: str, key: str):
        url = urlsplit(api)
        self.host, self.port = url.hostname, url.port
        self.headers = {"Authorization": f"Bearer {key}"}
        self.local = threading.local()

    def found(self, phone: str) -> bool:
        """True when the lookup lists a customer; raises OSError / HTTPException on transport errors."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", "/v1/customers?phone=" + quote(phone), headers=self.headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise
        return response.status == 200 and bool(orjson.loads(body).get("items"))


class _Probing:
    """Posts the probes on schedule and polls the API for each on a thread of its own."""

    def __init__(self, collector: str, api: str, key: str, run_id: str, queue: str):
        self.queue, self.run_id = queue, run_id
        headers = {"Authorization": f"Bearer {key}"}
        self.post_client = httpx.Client(base_url=collector, headers=headers, timeout=10)
        self.lookup = _Lookup(api, key)
        # a thread per probe in flight: up to PROBE_TIMEOUT_S of them a second, and the warm-up's
        self.pollers = ThreadPoolExecutor(max_workers=int(PROBE_RATE * PROBE_TIMEOUT_S) + 32,
                                          thread_name_prefix="bench-fresh-poll")
        self.pacer = _Pacer(POLL_CAP_PER_S)
        self.phone_base = int(uuid.uuid4().hex[:8], 16) % 9000 + 1000
        self.probes: list[Probe] = []
        self.warmup: list[Probe] = []
        self.poll_errors = 0

    def _new(self, k: int, warm: int) -> Probe:
        serial = k % 5000 if k else 5000 + warm % 5000  # a new caller each (139 + 8 digits)
        return Probe(k, f"fresh-{self.run_id}-{'w' + str(warm) if not k else k}",
                     f"+86139{self.phone_base:04d}{serial:04d}")

    def post(self, probe: Probe, queue: str) -> None:
        try:
            self._post(probe, queue)
        finally:
            probe.done = True

    def _post(self, probe: Probe, queue: str) -> None:
        event = {"id": probe.event_id, "source": "urn:crm:bench:fresh", "type": "call.abandoned",
                 "time": _iso(datetime.now(timezone.utc)),
                 "data": {"phone_number": probe.phone, "call_id": probe.event_id, "queue": queue, "wait_seconds": 30}}
        body = orjson.dumps(event)
        sent = time.monotonic()
        try:
            response = self.post_client.post("/v1/events", content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            probe.refused = type(exc).__name__
            return
        acked = time.monotonic()
        if response.status_code // 100 != 2 or response.json().get("accepted") != [probe.event_id]:
            probe.refused = f"{response.status_code} {response.text[:200]}"
            return
        probe.acked, probe.post_ms = acked, (acked - sent) * 1000
        self._poll(probe)

    def _poll(self, probe: Probe) -> None:
        deadline = probe.acked + PROBE_TIMEOUT_S
        while True:
            self.pacer.wait()
            started = time.monotonic()
            probe.polls += 1
            try:
                found = self.lookup.found(probe.phone)
                now = time.monotonic()
                if found:
                    probe.api_seen = now
                    return
            except (OSError, http.client.HTTPException):
                self.poll_errors += 1
                now = time.monotonic()
            if now >= deadline:
                return
            delay = started + max(POLL_INTERVAL_S, (now - probe.acked) * POLL_BACKOFF) - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def run(self, t0: float, window: _Window, stop: threading.Event) -> None:
        """Probes every 1/PROBE_RATE s from t0: warm-up probes (a queue of their own) until the
        window opens, then the measured ones (k = 1, 2, ...) until it closes."""
        warm_queue = f"{self.queue}-warmup"
        warm, k = 0, 0
        for inside in window.slots(t0, stop):
            if inside:
                k += 1
                probe = self._new(k, 0)
                self.probes.append(probe)
                self.pollers.submit(self.post, probe, self.queue)
            else:
                warm += 1
                probe = self._new(0, warm)
                self.warmup.append(probe)
                self.pollers.submit(self.post, probe, warm_queue)

    def close(self) -> None:
        self.pollers.shutdown(wait=True, cancel_futures=True)
        self.post_client.close()


def _sse_arrivals(stream: SseReader, queue: str, probes: list[Probe]) -> int:
    """Sets each probe's ``sse_seen``: the first update with count >= k. Returns the highest count."""
    updates = [(at, data["count"]) for at, event, data in list(stream.events)
               if event == "indicator" and data.get("indicator") == INDICATOR and data.get("window") == WINDOW
               and data.get("dimension") == "queue" and data.get("member") == queue]
    by_k = {p.k: p for p in probes}
    top = 0
    for at, count in updates:
        for k in range(top + 1, int(count) + 1):
            if k in by_k:
                by_k[k].sse_seen = at
        top = max(top, int(count))
    return top


# -- baseline: one Kafka hop -----------------------------------------------------------------------
class _Receiver(threading.Thread):
    """A kafka-python consumer of the scratch topic noting when each record (value = its sequence
    number) arrived."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True, name="bench-fresh-baseline-consumer")
        self.bootstrap, self.topic = bootstrap, topic
        self.arrived: dict[int, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._cond = threading.Condition()

    def run(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id="crm-bench-fresh-baseline")
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek_to_end(tp)
            consumer.position(tp)
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


class _Baseline:
    """Round trips (ms) of a bare producer (acks=all) to the receiver, one at a time at the probe
    rate: warm-up from t0, measured from ``start`` to ``end``."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bench-fresh-admin")
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        except Exception as exc:  # TopicAlreadyExistsError: a rerun with the same run id
            if "TopicAlreadyExists" not in type(exc).__name__:
                raise
        finally:
            admin.close()
        self.receiver = _Receiver(bootstrap, topic)
        self.receiver.start()
        if not self.receiver.ready.wait(30):
            raise RuntimeError(f"the baseline consumer could not position itself on {topic}")
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="crm-bench-fresh-baseline")
        self.ms: list[float] = []
        self.missed = 0

    def run(self, t0: float, window: _Window, stop: threading.Event) -> None:
        seq = 0
        for inside in window.slots(t0, stop, never_bunch=True):  # a slow round trip delays, never bunches
            seq += 1
            sent = time.monotonic()
            self.producer.send(self.topic, str(seq).encode()).get(timeout=PROBE_TIMEOUT_S)
            arrived = self.receiver.wait(seq, PROBE_TIMEOUT_S)
            if inside:
                if arrived is None:
                    self.missed += 1
                else:
                    self.ms.append((arrived - sent) * 1000)

    def close(self) -> None:
        self.producer.close()
        self.receiver.stop.set()
        self.receiver.join(10)
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="crm-bench-fresh-admin")
        try:
            admin.delete_topics([self.topic], timeout_ms=30_000)
        except Exception:
            pass
        finally:
            admin.close()


# -- where the time goes ---------------------------------------------------------------------------
_METRIC = re.compile(r'^(crm_processor_(?:batch_seconds_count|batch_seconds_sum|records_total))\{stage="(\w+)"\} (\S+)$')


def _processor_metrics(url: str | None) -> dict[tuple[str, str], float]:
    if not url:
        return {}
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def _batch_figures(before: dict, after: dict, seconds: float) -> dict[str, dict]:
    """Per stage over the window: batches, mean records per batch, mean batch time, records/s."""
    stages = sorted({stage for _, stage in after})
    out = {}
    for stage in stages:
        def delta(name: str) -> float:
            return after.get((name, stage), 0.0) - before.get((name, stage), 0.0)
        batches, records = delta("crm_processor_batch_seconds_count"), delta("crm_processor_records_total")
        out[stage] = {"batches": int(batches), "records": int(records),
                      "records_per_s": round(records / seconds, 1),
                      "batches_per_s": round(batches / seconds, 1),
                      "mean_records_per_batch": round(records / batches, 1) if batches else None,
                      "mean_batch_ms": round(delta("crm_processor_batch_seconds_sum") / batches * 1000, 1)
                      if batches else None}
    return out


class _Tap(threading.Thread):
    """Notes when each probe's resolved event, the identity stage's output, can be read from
    ``crm.customer-events``: what the view stage's consumer gets, one fetch after the publish. (The
    records' CreateTime cannot say: resolved events keep their touchpoint's Kafka timestamp.)"""

    def __init__(self, bootstrap: str, marker: bytes):
        super().__init__(daemon=True, name="bench-fresh-tap")
        self.bootstrap, self.marker = bootstrap, marker
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id="crm-bench-fresh-tap", fetch_max_wait_ms=100)
        try:
            tps = [TopicPartition(CUSTOMER_EVENTS, p) for p in sorted(consumer.partitions_for_topic(CUSTOMER_EVENTS))]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:
                consumer.position(tp)
            self.ready.set()
            while not self.stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    now = time.monotonic()
                    for r in records:
                        if self.marker in r.value:
                            self.seen.setdefault(orjson.loads(r.value).get("id", ""), now)
        finally:
            consumer.close()


def _hop_breakdown(bootstrap: str, probes: list[Probe], tap: _Tap, queue: str, since_ms: int) -> dict[str, dict]:
    """Splits each sample where the probe's resolved event could be read (the tap) and at the
    CreateTime of the first ``crm.indicators`` update counting it (the view stage publishes its
    outputs just before it commits): {hop: summary in ms}."""
    key = f"{INDICATOR}|{WINDOW}|queue={queue}".encode()
    counted: list[tuple[int, int]] = []  # (CreateTime, count) of the probe queue's updates
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="crm-bench-fresh-hops", max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        partitions = sorted(consumer.partitions_for_topic(INDICATORS) or ())
        if partitions:  # the producers' default partitioner puts every update of the key on one partition
            from aiokafka.partitioner import DefaultPartitioner

            partitions = [DefaultPartitioner()(key, partitions, partitions)]
        tps = [TopicPartition(INDICATORS, p) for p in partitions]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=20000).values():
                for r in records:
                    if r.key == key:
                        counted.append((r.timestamp, int(orjson.loads(r.value)["count"])))
    finally:
        consumer.close()
    counted.sort()
    view_out: dict[int, int] = {}
    top = 0
    for at, count in counted:
        for k in range(top + 1, count + 1):
            view_out[k] = at
        top = max(top, count)
    to_wall = time.time() - time.monotonic()
    hops: dict[str, list[float]] = {name: [] for name in HOPS}
    for p in probes:
        a, b = tap.seen.get(p.event_id), view_out.get(p.k)
        if p.acked is None or a is None or b is None:
            continue
        a_ms = (a + to_wall) * 1000
        hops["ack_to_identity_out"].append((a - p.acked) * 1000)
        hops["identity_to_view_out"].append(b - a_ms)
        if p.api_seen is not None:
            hops["view_out_to_api"].append((p.api_seen + to_wall) * 1000 - b)
        if p.sse_seen is not None:
            hops["view_out_to_sse"].append((p.sse_seen + to_wall) * 1000 - b)
    return {name: _rounded(summary(ms)) for name, ms in hops.items()}


class _TopicSizes:
    """End offsets of the platform's topics, summed over partitions: what each stage wrote."""

    TOPICS = (TOUCHPOINTS, CUSTOMER_EVENTS, INDICATORS, CUSTOMER_STATE, CUSTOMER_CHANGES, DEADLETTER)

    def __init__(self, bootstrap: str):
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      client_id="crm-bench-fresh-sizes")
        self.tps = [TopicPartition(t, p) for t in self.TOPICS for p in sorted(self.consumer.partitions_for_topic(t) or ())]

    def now(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            for tp, end in self.consumer.end_offsets(self.tps).items():
                out[tp.topic] = out.get(tp.topic, 0) + end
        except Exception:
            pass
        return out

    def close(self) -> None:
        self.consumer.close()


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process, with its children except for
    this one (the services are its children)."""
    out = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            total = 0.0
            for p in [proc, *(proc.children(recursive=True) if pid != os.getpid() else ())]:
                t = p.cpu_times()
                total += t.user + t.system
            out[name] = total
        except psutil.Error:
            pass
    return out


# -- services --------------------------------------------------------------------------------------
def _base_url(svc: Service) -> str | None:
    return svc.health_url.rsplit("/healthz", 1)[0] if svc.health_url else None


def _running(ctx: Context, name: str) -> Service | None:
    for svc in ctx.platform.services:
        if svc.name == name and svc.proc is not None and svc.proc.poll() is None:
            return svc
    return None


def _services(ctx: Context, started: list[Service]) -> tuple[str, str, str | None, dict]:
    """Collector, API and processor URLs; starts what is not running (noted in ``started``)."""
    info: dict[str, Any] = {}
    urls = {}
    for name, start, env in (("ingest", ctx.platform.collector, {}), ("processor", ctx.platform.processor, PROCESSOR_ENV),
                             ("api", ctx.platform.api, {})):
        svc = _running(ctx, name)
        if svc is None:
            with console.status(f"starting {name} ..."):
                made = start(**env)
            svc = made[0] if isinstance(made, tuple) else made
            started.append(svc)
            info[name] = {"started": True, "env": env, "log": str(svc.log_path)}
        else:
            info[name] = {"started": False, "log": str(svc.log_path)}
        urls[name] = _base_url(svc)
        info[name]["pid"] = svc.proc.pid
        if name == "processor":
            info[name].update({k: svc.env.get(k) for k in ("CRM_BATCH_WITHIN_S", "CRM_BATCH_SIZE")})
    return urls["ingest"], urls["api"], urls["processor"], info


# -- the benchmark ---------------------------------------------------------------------------------
def _with_missed(ms: list[float], missed: int) -> dict[str, float | None]:
    """p50 and p99 with each missed probe counted as the timeout (a floor of what it took): what the
    verdict and the figure use, so that probes never seen cannot flatter the percentiles."""
    values = ms + [PROBE_TIMEOUT_S * 1000] * missed
    if not values:
        return {"p50_with_missed": None, "p99_with_missed": None}
    return {"p50_with_missed": round(percentile(values, 50), 1), "p99_with_missed": round(percentile(values, 99), 1)}


def _busy(before, after) -> float:
    """Share of the machine's CPU time (all cores) not idle between two ``psutil.cpu_times()``."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
    return round(1 - idle / total, 3) if total > 0 else 0.0


def _settled(warmup: list[Probe]) -> bool:
    """The last SETTLED_N warm-up probes that finished were visible in the API within SETTLED_S."""
    finished = [p for p in list(warmup) if p.done][-SETTLED_N:]
    return len(finished) == SETTLED_N and all(p.api_seen is not None and p.api_seen - p.acked <= SETTLED_S
                                              for p in finished)


def measure(ctx: Context) -> dict[str, Any]:
    rate = QUICK_RATE if ctx.quick else RATE
    duration = QUICK_DURATION_S if ctx.quick else DURATION_S
    warmup_min = QUICK_WARMUP_S if ctx.quick else WARMUP_S
    warmup_max = QUICK_WARMUP_MAX_S if ctx.quick else WARMUP_MAX_S
    run_id = ctx.run_id
    queue = f"fresh-{run_id}"
    started: list[Service] = []
    figures: dict[str, Any] = {"quick": ctx.quick, "duration_s": duration, "batch_events": BATCH,
                               "concurrency": CONCURRENCY, "probe_rate_per_s": PROBE_RATE,
                               "poll_interval_ms": POLL_INTERVAL_S * 1000, "poll_backoff": POLL_BACKOFF,
                               "poll_cap_per_s": POLL_CAP_PER_S, "probe_timeout_s": PROBE_TIMEOUT_S}
    try:
        collector, api, processor_url, figures["services"] = _services(ctx, started)
        pids = {name: svc["pid"] for name, svc in figures["services"].items()}
        admin_key = ctx.platform.keys["admin"]
        load = _Load({"collector": collector, "key": ctx.platform.keys["events:write"], "rate": rate, "batch": BATCH,
                      "total_s": warmup_max + duration + 5, "run_id": run_id, "seed": SEED,
                      "concurrency": CONCURRENCY}, ctx.platform.log_dir / f"fresh-load-{run_id}.log")
        probing = _Probing(collector, api, admin_key, run_id, queue)
        baseline = _Baseline(ctx.stack.kafka_bootstrap, f"bench.roundtrip-{run_id}-fresh")
        tap = _Tap(ctx.stack.kafka_bootstrap, f"fresh-{run_id}-".encode())
        tap.start()
        sizes = _TopicSizes(ctx.stack.kafka_bootstrap)
        window = _Window()
        stop = threading.Event()
        stream: SseReader | None = None
        try:
            with progress_bar() as progress:
                prep = progress.add_task("prepare background load", total=1,
                                         stats=f"{rate * (warmup_max + duration):,.0f} events")
                while not load.ready.wait(0.2):
                    if load.finished.is_set() or load.proc.poll() is not None:
                        raise RuntimeError(f"the load process ended early (exit {load.proc.poll()}), see its log")
                progress.update(prep, completed=1)
                stream = SseReader(f"{api}/v1/stream/indicators",
                                   {"queue": queue, "indicator": INDICATOR, "window": WINDOW, "access_token": admin_key})
                stream.__enter__()
                if not tap.ready.wait(30):
                    raise RuntimeError("the tap on crm.customer-events could not position itself")
                pids.update(bench=os.getpid(), load=load.proc.pid)
                t0 = time.monotonic() + 0.2
                load.go(t0)
                threads = [threading.Thread(target=probing.run, args=(t0, window, stop), daemon=True,
                                            name="bench-fresh-probes"),
                           threading.Thread(target=baseline.run, args=(t0, window, stop), daemon=True,
                                            name="bench-fresh-baseline")]
                for t in threads:
                    t.start()
                # warm-up: at least warmup_min, then until the pipeline keeps up (or warmup_max)
                warm = progress.add_task(f"warm-up at {rate:,.0f}/s", total=None, stats="")
                while True:
                    time.sleep(0.2)
                    elapsed = time.monotonic() - t0
                    recent = [f"{(p.api_seen - p.acked) * 1000:.0f}" if p.api_seen else "-"
                              for p in list(probing.warmup) if p.done][-SETTLED_N:]
                    progress.update(warm, stats=f"{load.counts[1]:,} accepted, last probes {' '.join(recent)} ms")
                    settled = _settled(probing.warmup)
                    if elapsed >= warmup_max or (elapsed >= warmup_min and settled):
                        break
                figures["warmup"] = {"seconds": round(time.monotonic() - t0, 1), "settled": settled,
                                     "probes": len(probing.warmup)}
                progress.update(warm, total=1, completed=1)
                metrics_before, sizes_before = _processor_metrics(processor_url), sizes.now()
                cpu_before, load_before, machine_before = _cpu_seconds(pids), os.getloadavg(), psutil.cpu_times()
                accepted_at_start = load.counts[1]
                window.open(duration)
                start, end = window.start, window.end
                task = progress.add_task(f"freshness at {rate:,.0f}/s", total=int(round(duration * PROBE_RATE)),
                                         stats="")
                while time.monotonic() < end:
                    time.sleep(0.25)
                    elapsed = max(time.monotonic() - start, 1e-3)
                    api_ms = [(p.api_seen - p.acked) * 1000 for p in list(probing.probes) if p.api_seen]
                    stats = f"{(load.counts[1] - accepted_at_start) / elapsed:,.0f} ev/s accepted"
                    if api_ms:
                        stats += f"  API p50 {percentile(api_ms, 50):.0f} p99 {percentile(api_ms, 99):.0f} ms"
                    if load.counts[3]:
                        stats += f"  refused {load.counts[3]:,}"
                    progress.update(task, completed=len(probing.probes), stats=stats)
                metrics_after, sizes_after = _processor_metrics(processor_url), sizes.now()
                cpu_after, load_after, machine_after = _cpu_seconds(pids), os.getloadavg(), psutil.cpu_times()
                load.stop()
                for t in threads:
                    t.join(PROBE_TIMEOUT_S + 5)
                drain = progress.add_task("drain (late probes)", total=len(probing.probes), stats="")
                deadline = time.monotonic() + 2 * PROBE_TIMEOUT_S + 5
                while time.monotonic() < deadline:
                    top = _sse_arrivals(stream, queue, probing.probes)
                    finished = sum(p.done for p in probing.probes)
                    want = max((p.k for p in probing.probes if p.acked is not None), default=0)
                    progress.update(drain, completed=finished, stats=f"API done {finished}, SSE count {top}/{want}")
                    if finished >= len(probing.probes) and (top >= want or time.monotonic() > end + PROBE_TIMEOUT_S):
                        break
                    time.sleep(0.2)
                load.finished.wait(60)
        finally:
            stop.set()
            tap.stop.set()
            if stream is not None:
                stream.__exit__(None, None, None)
            probing.close()
            baseline.close()
            load.close()
            sizes.close()
        if load.records is None:
            raise RuntimeError("the load process gave no result; see " + str(ctx.platform.log_dir))
        figures["background"] = _load_figures(load.records, start, end, rate)
        probes = probing.probes
        acked = [p for p in probes if p.acked is not None]
        api_ms = [(p.api_seen - p.acked) * 1000 for p in acked if p.api_seen is not None]
        sse_ms = [(p.sse_seen - p.acked) * 1000 for p in acked if p.sse_seen is not None]
        figures["probes"] = {"sent": len(probes), "refused": len(probes) - len(acked),
                             "refusals": sorted({p.refused for p in probes if p.refused})[:5],
                             "post_ms": _rounded(summary([p.post_ms for p in acked]))}
        figures["api_ms"] = {**_rounded(summary(api_ms)), "missed": len(acked) - len(api_ms),
                             **_with_missed(api_ms, len(acked) - len(api_ms)),
                             "polls": sum(p.polls for p in acked),
                             "polls_per_probe": round(sum(p.polls for p in acked) / max(len(acked), 1), 1),
                             "poll_errors": probing.poll_errors}
        figures["sse_ms"] = {**_rounded(summary(sse_ms)), "missed": len(acked) - len(sse_ms),
                             **_with_missed(sse_ms, len(acked) - len(sse_ms))}
        figures["baseline_ms"] = {**_rounded(summary(baseline.ms)), "missed": baseline.missed}
        figures["processor_batches"] = _batch_figures(metrics_before, metrics_after, duration)
        figures["records_per_s"] = {t: round((sizes_after.get(t, 0) - sizes_before.get(t, 0)) / duration, 1)
                                    for t in sizes_after}  # written to each topic in the window
        figures["cpu_share"] = {name: round((cpu_after[name] - cpu_before[name]) / duration, 2)
                                for name in cpu_after if name in cpu_before}  # cores used in the window
        ingest_cores, processor_cores = figures["cpu_share"].get("ingest"), figures["cpu_share"].get("processor")
        processed = figures["processor_batches"].get("identity", {}).get("records_per_s")
        figures["cpu_ms_per_event"] = {
            "ingest": round(ingest_cores * 1000 / figures["background"]["achieved_rate_per_s"], 3)
            if ingest_cores and figures["background"]["achieved_rate_per_s"] else None,
            "processor": round(processor_cores * 1000 / processed, 3) if processor_cores and processed else None}
        figures["machine"] = {"cpus": os.cpu_count(), "busy": _busy(machine_before, machine_after),
                              "load_avg_start": [round(x, 2) for x in load_before],
                              "load_avg_end": [round(x, 2) for x in load_after]}
        with console.status("reading the probes' records back for the hop breakdown ..."):
            since_ms = int((time.time() - (time.monotonic() - start)) * 1000) - 2000
            figures["hops_ms"] = _hop_breakdown(ctx.stack.kafka_bootstrap, acked, tap, queue, since_ms)
        tap.join(5)
        return figures
    finally:
        for svc in reversed(started):
            svc.stop()
            if svc in ctx.platform.services:
                ctx.platform.services.remove(svc)


def _verdict(stats: dict, achieved: float, offered: float) -> bool:
    return stats.get("p99_with_missed") is not None and stats["p50_with_missed"] <= P50_MS \
        and stats["p99_with_missed"] <= P99_MS and achieved >= 0.95 * offered


def _print(figures: dict) -> None:
    from rich.table import Table

    bg = figures["background"]
    table = Table(title=f"Freshness at {bg['offered_rate_per_s']:,.0f} events/s offered "
                        f"({bg['achieved_rate_per_s']:,.0f}/s achieved, {figures['duration_s']:.0f} s)")
    table.add_column("ms", style="bold")
    for p in ("p50", "p95", "p99", "max"):
        table.add_column(p, justify="right")
    table.add_column("n / missed", justify="right")
    for name, key in (("2xx -> visible in the API", "api_ms"), ("2xx -> on the SSE stream", "sse_ms"),
                      ("baseline: Kafka round trip", "baseline_ms")):
        s = figures[key]
        table.add_row(name, *(f"{s[p]:.1f}" if s.get("n") else "-" for p in ("p50", "p95", "p99", "max")),
                      f"{s.get('n', 0)} / {s['missed']}")
    for key, label in HOPS.items():
        s = figures["hops_ms"].get(key, {})
        if s.get("n"):
            table.add_row(f"  hop {label}", *(f"{s[p]:.1f}" for p in ("p50", "p95", "p99", "max")), str(s["n"]),
                          style="dim")
    console.print(table)
    m = figures["machine"]
    console.print("  cores used in the window: " + ", ".join(f"{k} {v}" for k, v in figures["cpu_share"].items())
                  + f"; the machine's {m['cpus']} CPUs {m['busy']:.0%} busy (load average {m['load_avg_end'][0]:.1f})")
    console.print("  records/s written in the window: " + ", ".join(f"{t} {n:,.0f}" for t, n in figures["records_per_s"].items()))
    console.print(f"  CPU per event: collector {figures['cpu_ms_per_event']['ingest']} ms, "
                  f"processor {figures['cpu_ms_per_event']['processor']} ms")
    for stage, b in figures["processor_batches"].items():
        console.print(f"  processor {stage}: {b['batches_per_s']} batches/s of {b['mean_records_per_batch']} records, "
                      f"{b['mean_batch_ms']} ms each, {b['records_per_s']:,} records/s")


def run(ctx: Context) -> list[Result]:
    figures = measure(ctx)
    _print(figures)
    bg = figures["background"]
    offered, achieved = bg["offered_rate_per_s"], bg["achieved_rate_per_s"]
    base = figures["baseline_ms"]
    shared = {k: v for k, v in figures.items() if k not in ("api_ms", "sse_ms")}
    rate_words = f"{offered:,.0f} events/s offered"
    baseline_what = ("bare kafka-python producer (acks=all) -> consumer round trip on a scratch topic, "
                     f"{PROBE_RATE:g}/s under the same load, p99")
    results = []
    missed_words = f"a probe never seen counts as {PROBE_TIMEOUT_S:g} s"
    for key, what, stats in (
            ("freshness.api", f"collector 2xx -> visible in the API (lookup by phone), p99, at {rate_words} "
                              f"({missed_words})", figures["api_ms"]),
            ("freshness.sse", f"collector 2xx -> indicator update on the SSE stream, p99, at {rate_words} "
                              f"({missed_words})", figures["sse_ms"])):
        met = _verdict(stats, achieved, offered)
        figure = stats["p99_with_missed"] if stats["p99_with_missed"] is not None else float("nan")
        results.append(Result(
            key, what, figure, "ms", base.get("p99"), baseline_what,
            TARGET + (" (same thresholds for the stream)" if key.endswith("sse") else "")
            + (f"; quick run: at {offered:,.0f}/s" if figures["quick"] else ""),
            met, details={"samples_ms": stats, **shared}))
    return results


# -- by hand ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    global RATE, QUICK_RATE, DURATION_S, QUICK_DURATION_S
    from bench.common import bench_stack, ensure_topics, start_stack, stop_stack
    from tests.processes import Platform

    parser = argparse.ArgumentParser(prog="python -m bench.fresh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RATE:.0f}/s for {QUICK_DURATION_S:.0f} s")
    parser.add_argument("--rate", type=float, help="background events/s offered instead")
    parser.add_argument("--duration", type=float, help="seconds of the measured window instead")
    parser.add_argument("--processor-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the processor it starts, e.g. CRM_BATCH_WITHIN_S=0.01")
    parser.add_argument("--load-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        return _load_child_main()
    if args.rate:
        RATE = QUICK_RATE = args.rate
    if args.duration:
        DURATION_S = QUICK_DURATION_S = args.duration
    PROCESSOR_ENV.update(item.split("=", 1) for item in args.processor_env)
    run_id = uuid.uuid4().hex[:8]
    stack = bench_stack()
    start_stack(stack)
    platform = None
    try:
        platform = Platform(stack, stack.new_database(), stack.home / "logs" / f"fresh-{run_id}")
        ensure_topics(stack)
        ctx = Context(stack, platform, quick=args.quick, events=20_000 if args.quick else 1_000_000, run_id=run_id)
        results = run(ctx)
        out = stack.home / "fresh.json"
        out.write_bytes(orjson.dumps([r.as_json() for r in results], option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"results written to {out}")
        for result in results:
            console.print(f"{result.key}: {result.figure:.1f} {result.unit} (baseline {result.baseline or 0:.1f}), "
                          f"target {result.target}: {'met' if result.met else 'missed'}")
    finally:
        stop_stack(stack, [platform] if platform else [], os.environ.get("CRM_BENCH_KEEP_STACK") == "1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
