"""Query API latency at a fixed request rate: ``GET /v1/customers/{id}`` and the identifier lookup
``GET /v1/customers?<kind>=<value>``, against a bare psycopg2 select of the same rows, same run.

What is measured
----------------
By the time this runs, ``ctx.platform.dsn`` holds the processed customers of the processing log.
``crm-api`` is started on the bench stack (``ctx.platform.api()``) and driven **open loop**: request
k is due at ``start + k / rate`` whatever happened to the earlier ones, and its latency is counted
from that due time to the end of its answer, so a server that falls behind shows its queueing
(no coordinated omission). At most ``CONNECTIONS`` keep-alive connections are open; a request due
while all are busy waits for one, and that wait is part of its latency. The client is a minimal
HTTP/1.1 client on asyncio (pre-built request bytes, Content-Length or chunked answers) so that it
costs the 2-core machine far less than the server it measures; the key sent is a
``customers:read`` one.

Two series, one after the other, after a short unmeasured warm-up of each:

* **customer**: ``GET /v1/customers/{id}`` for ids drawn at random (fixed seed) from the live
  customers of ``customer_view``; an answer counts when it is 200.
* **lookup**: ``GET /v1/customers?<kind>=<value>`` the way an agent finds a caller: the read models
  hold identifiers only as pseudonyms (``email:psn-...``), so the benchmark samples
  ``customer_view_identifier`` (every kind, in proportion) and opens each pseudonym with the run's
  key vault (``Vault.identifier_values``, the master key of the stack) to get the identifier's
  value as it was normalized on ingest (``+8613912345678``, ``li.na@163.com``, ``acct-42``); the
  API normalizes it again, finds the subject by its blind index, then the customer. An answer
  counts when it is 200 with at least one item.

Each series reports p50/p95/p99/max, offered and achieved rate (answers that count per second of
the run) and errors. Target: p99 ≤ 15 ms at 1,000 requests/s (the quick run offers 300/s).

**Baseline**: one psycopg2 connection (autocommit, read only, jsonb decoded with orjson as the API
does) paced at the same rate for the same time, latency measured the same way from the due time:
for the customer series the primary-key select of the view row (``SELECT customer_id, state,
updated_at FROM customer_view WHERE customer_id = %s``), for the lookup the select of the same row
through the identifier's stored key (``customer_view_identifier`` joined to ``customer_view``).
The API's peak RSS is sampled throughout, and the PostgreSQL sessions opened on the run's database
during each series are counted (``pg_sessions_per_request``: 0 for pools that keep their
connections; the psycopg2 pools of the services, made with ``minconn=0``, close every connection
they are given back, so each request then pays for new sessions). ``CRM_BENCH_PROFILE=1`` also profiles the API with
py-spy under each series' load (an extra, unmeasured phase) and adds the top functions to the details.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import orjson
import psycopg2
import psycopg2.extras

from bench.common import Context, CpuAccount, PeakRss, Result, console, percentile, progress_bar, stack_pids, summary
from bench.ingest import pg_sessions, print_profile, profile_while

TARGET_P99_MS = 15.0
CONNECTIONS = 32
SAMPLE_IDS = 20_000
SAMPLE_IDENTIFIERS = 5_000
SEED = 7
GRACE_S = 60.0  # after the last request is due, how long the ones still queued may take


# -- a small HTTP/1.1 client -------------------------------------------------------------------------
class _Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read one answer."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size + 2))
            body = b"".join(p[:-2] for p in parts)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Series:
    """Latencies (ms, from each request's due time) of one open-loop run."""

    name: str
    offered_rate: float
    ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0  # from the first due time to the last answer
    pg_sessions: int | None = None  # PostgreSQL sessions opened on the database during the run

    def error(self, kind: str, sample: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(sample[:300])

    @property
    def achieved_rate(self) -> float:
        return len(self.ms) / self.seconds if self.seconds else 0.0

    def report(self) -> dict[str, Any]:
        return {**summary(self.ms), "offered_rate": self.offered_rate, "achieved_rate": round(self.achieved_rate, 1),
                "sent": self.sent, "errors": self.errors, "error_samples": self.error_samples,
                "seconds": round(self.seconds, 3),
                **({"pg_sessions_opened": self.pg_sessions,
                    "pg_sessions_per_request": round(self.pg_sessions / max(1, self.sent - self.errors.get(
                        "unanswered", 0)), 2)} if self.pg_sessions is not None else {})}

    def stats(self) -> str:
        if not self.ms:
            return ""
        recent = self.ms[-500:]
        return f"p50 {percentile(recent, 50):6.1f} ms  p99 {percentile(recent, 99):6.1f} ms" + (
            f"  errors {sum(self.errors.values())}" if self.errors else "")


def _ok_customer(status: int, body: bytes) -> bool:
    return status == 200


def _ok_lookup(status: int, body: bytes) -> bool:
    return status == 200 and b'"items":[{' in body[:100]


async def _open_loop(url: str, key: str, paths: list[str], rate: float, duration: float,
                     ok: Callable[[int, bytes], bool], series: Series | None, connections: int,
                     on_answer: Callable[[], None] | None = None) -> None:
    """Request k is due at start + k/rate; latency is counted from the due time (see the docstring)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\nAccept: application/json\r\n\r\n".encode()
    raws = [b"GET " + p.encode() + b" HTTP/1.1\r\n" + head for p in paths]
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(_Connection(host, port))
    loop = asyncio.get_running_loop()
    n = int(rate * duration)
    last_done = [0.0]

    async def one(raw: bytes, due: float) -> None:
        conn = await pool.get()
        try:
            status, body = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            if series is not None:
                series.error(type(exc).__name__, repr(exc))
            return
        finally:
            pool.put_nowait(conn)
        done = loop.time()
        last_done[0] = max(last_done[0], done)
        if series is None:
            return
        if ok(status, body):
            series.ms.append((done - due) * 1000)
        else:
            series.error(f"http {status}" if status != 200 else "not found", body.decode(errors="replace"))
        if on_answer:
            on_answer()

    start = loop.time() + 0.05
    tasks = []
    for k in range(n):
        due = start + k / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(raws[k % len(raws)], due)))
    # a server far behind the offered rate still has requests queued here: give them a grace period,
    # then count the rest as unanswered (their latency would be at least the time waited)
    _, pending = await asyncio.wait(tasks, timeout=GRACE_S)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    while not pool.empty():
        pool.get_nowait().close()
    if series is not None:
        if pending:
            series.errors["unanswered"] = len(pending)
            last_done[0] = max(last_done[0], loop.time())
        series.sent = n
        series.seconds = max(last_done[0] - start, n / rate)


def drive(url: str, key: str, paths: list[str], rate: float, duration: float, ok: Callable[[int, bytes], bool],
          name: str | None, connections: int = CONNECTIONS, dsn: str | None = None) -> Series | None:
    """One open-loop run (with a progress bar when ``name`` is given; None: a warm-up). With ``dsn``,
    also counts the PostgreSQL sessions the server opened meanwhile (a pool that does not keep its
    connections opens one or more per request)."""
    if name is None:
        asyncio.run(_open_loop(url, key, paths, rate, duration, ok, None, connections))
        return None
    series = Series(name, rate)
    total = int(rate * duration)
    with progress_bar() as progress:
        task = progress.add_task(name, total=total, stats="")
        count = [0]

        def advance() -> None:
            count[0] += 1
            if count[0] % 100 == 0:
                progress.update(task, completed=count[0], stats=series.stats())

        before = pg_sessions(dsn) if dsn else None
        asyncio.run(_open_loop(url, key, paths, rate, duration, ok, series, connections, advance))
        if dsn:
            series.pg_sessions = pg_sessions(dsn) - before - 1
        progress.update(task, completed=total, stats=series.stats())
    return series


# -- the baseline --------------------------------------------------------------------------------
def bare_select(dsn: str, sql: str, args: list[tuple], rate: float, duration: float, name: str) -> Series:
    """One psycopg2 connection running ``sql`` at ``rate``/s, latency from each query's due time."""
    conn = psycopg2.connect(dsn, application_name="crm-bench-bare-select")
    conn.set_session(readonly=True, autocommit=True)
    psycopg2.extras.register_default_jsonb(conn, loads=orjson.loads)
    series = Series(name, rate)
    n = int(rate * duration)
    try:
        with conn.cursor() as cur, progress_bar() as progress:
            task = progress.add_task(name, total=n, stats="")
            for a in args[:50]:  # warm: plan cache, the pages of the rows
                cur.execute(sql, a)
                cur.fetchall()
            start = time.perf_counter() + 0.01
            last = start
            for k in range(n):
                due = start + k / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    cur.execute(sql, args[k % len(args)])
                    rows = cur.fetchall()
                except psycopg2.Error as exc:
                    series.error(type(exc).__name__, str(exc))
                    continue
                last = time.perf_counter()
                if rows:
                    series.ms.append((last - due) * 1000)
                else:
                    series.error("not found", str(args[k % len(args)]))
                if k % 100 == 99:
                    progress.update(task, completed=k + 1, stats=series.stats())
            progress.update(task, completed=n, stats=series.stats())
            series.sent = n
            series.seconds = max(last - start, n / rate)
    finally:
        conn.close()
    return series


# -- what to ask for -----------------------------------------------------------------------------
def _customer_ids(dsn: str, n: int) -> list[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT setseed(0.42)")
            cur.execute("SELECT customer_id FROM customer_view ORDER BY random() LIMIT %s", (n,))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def _identifiers(dsn: str, master_key: str, n: int) -> list[tuple[str, str, str]]:
    """(kind, value as normalized on ingest, stored key ``kind:psn-...``) of identifiers held by live
    customers, the values opened with the run's key vault."""
    from services.common.vault import Vault, load_master_key

    vault = Vault(load_master_key(master_key, None))
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT setseed(0.42)")
            cur.execute("""SELECT i.kind, i.key FROM customer_view_identifier i
                           JOIN customer_view v ON v.customer_id = i.customer_id
                           WHERE i.key LIKE '%%:psn-%%' ORDER BY random() LIMIT %s""", (n,))
            rows = cur.fetchall()
            hexes = [key.rpartition(":psn-")[2] for _, key in rows]
            # the data keys first: identifier_values() reads its rows after asking deks(), which, for keys
            # not cached yet, runs its own query on the same cursor (the API's reveal() asks deks() first too)
            vault.deks(cur, hexes)
            values = vault.identifier_values(cur, hexes)
    finally:
        conn.close()
        vault.close()
    return [(kind, values[h], key) for (kind, key), h in zip(rows, hexes) if h in values]


# -- run -----------------------------------------------------------------------------------------
def _result(key: str, what: str, series: Series, base: Series, base_what: str, extra: dict[str, Any]) -> Result:
    p99 = percentile(series.ms, 99) if series.ms else float("inf")
    b99 = percentile(base.ms, 99) if base.ms else None
    met = bool(series.ms) and p99 <= TARGET_P99_MS and series.achieved_rate >= 0.95 * series.offered_rate
    details = {"p50_ms": percentile(series.ms, 50) if series.ms else None,
               "p95_ms": percentile(series.ms, 95) if series.ms else None, "p99_ms": p99,
               "max_ms": max(series.ms) if series.ms else None,
               "offered_rate": series.offered_rate, "achieved_rate": round(series.achieved_rate, 1),
               "errors": series.errors, "api": series.report(), "baseline": base.report(), **extra}
    return Result(key=key, what=what, figure=round(p99, 2), unit="ms (p99)",
                  baseline=round(b99, 3) if b99 is not None else None,
                  baseline_what=base_what,
                  target="p99 <= 15 ms at 1,000 requests/s", met=met, details=details)


def run(ctx: Context) -> list[Result]:
    rate = float(os.environ.get("CRM_BENCH_QUERY_RATE", 300 if ctx.quick else 1000))
    duration = float(os.environ.get("CRM_BENCH_QUERY_SECONDS", 8 if ctx.quick else 30))
    connections = int(os.environ.get("CRM_BENCH_QUERY_CONNECTIONS", CONNECTIONS))
    warmup_s = 1.0 if ctx.quick else 3.0
    profile = os.environ.get("CRM_BENCH_PROFILE") == "1"
    dsn = ctx.platform.dsn
    rng = random.Random(SEED)
    n = int(rate * duration)

    with console.status("choosing customers and identifiers (opening pseudonyms with the run's vault) ..."):
        ids = _customer_ids(dsn, SAMPLE_IDS)
        idents = _identifiers(dsn, ctx.stack.env["CRM_MASTER_KEY"], SAMPLE_IDENTIFIERS)
    if not ids or not idents:
        raise RuntimeError(f"no processed customers in {dsn}: run the processing benchmark first")
    id_seq = [rng.choice(ids) for _ in range(n)]
    ident_seq = [rng.choice(idents) for _ in range(n)]
    customer_paths = [f"/v1/customers/{quote(c, safe='')}" for c in id_seq]
    lookup_paths = [f"/v1/customers?{kind}={quote(value, safe='')}" for kind, value, _ in ident_seq]
    kinds: dict[str, int] = {}
    for kind, _, _ in ident_seq:
        kinds[kind] = kinds.get(kind, 0) + 1

    key = ctx.platform.keys["customers:read"]
    service, url = ctx.platform.api()
    profiles: dict[str, Any] = {}
    try:
        with PeakRss(service.proc.pid) as rss:
            with console.status(f"warming up the API ({warmup_s:g} s of each series) ..."):
                drive(url, key, customer_paths[::-1], rate, warmup_s, _ok_customer, None, connections)
                drive(url, key, lookup_paths[::-1], rate, warmup_s, _ok_lookup, None, connections)
            # where the CPU goes per answered request: the API process, PostgreSQL, the rest
            cpu = CpuAccount({"api": [service.proc.pid], "postgresql": [stack_pids(ctx.stack)["postgresql"]]})
            cpu.start()
            customer = drive(url, key, customer_paths, rate, duration, _ok_customer,
                             "GET /v1/customers/{id}", connections, dsn)
            cpu.stop()
            lookup = drive(url, key, lookup_paths, rate, duration, _ok_lookup,
                           "GET /v1/customers?<kind>=", connections, dsn)
        if profile:
            seconds = min(duration, 8.0)
            for name, paths, ok in (("customer", customer_paths, _ok_customer), ("lookup", lookup_paths, _ok_lookup)):
                with console.status(f"profiling the API under the {name} load (py-spy) ..."):
                    profiles[name] = profile_while(
                        service.proc.pid, lambda: drive(url, key, paths, rate, seconds, ok, None, connections))
                print_profile(f"API profile, {name} series (py-spy)", profiles[name])
    finally:
        service.stop()

    base_customer = bare_select(dsn, "SELECT customer_id, state, updated_at FROM customer_view WHERE customer_id = %s",
                                [(c,) for c in id_seq], rate, duration, "bare psycopg2 pk select")
    base_lookup = bare_select(dsn, """SELECT v.customer_id, v.state, v.updated_at FROM customer_view_identifier i
                                      JOIN customer_view v ON v.customer_id = i.customer_id WHERE i.key = %s""",
                              [(k,) for _, _, k in ident_seq], rate, duration, "bare psycopg2 key select")

    common = {"duration_s": duration, "connections": connections, "warmup_s": warmup_s,
              "api_peak_rss_mib": rss.peak_mib, "api_log": str(service.log_path),
              "load_avg_at_end": os.getloadavg(),
              "client": "open loop, latency from each request's due time; minimal asyncio HTTP/1.1 keep-alive client",
              "customers_sampled": len(ids)}
    results = [
        _result("query.customer", "GET /v1/customers/{id} (the unified view) at a fixed rate, open loop",
                customer, base_customer, "bare psycopg2 primary-key select of the same customer_view rows, one "
                                         "connection, same rate, open loop",
                {**common, "cpu_seconds": {k: round(v, 2) for k, v in cpu.seconds.items()},
                 "cpu_ms_per_request": cpu.per_event_ms(len(customer.ms)),
                 **({"profile": profiles["customer"]} if "customer" in profiles else {})}),
        _result("query.lookup", "GET /v1/customers?<kind>=<value> (find a customer by an identifier) at a "
                                "fixed rate, open loop", lookup, base_lookup,
                "bare psycopg2 select of the same customer_view rows by the identifier's stored key "
                "(customer_view_identifier joined to customer_view), one connection, same rate, open loop",
                {**common, "identifiers_sampled": len(idents), "lookup_kinds": kinds,
                 "lookup_values": "identifier values as normalized on ingest, opened from the run's vault; "
                                  "the API finds them by blind index",
                 **({"profile": profiles["lookup"]} if "lookup" in profiles else {})}),
    ]
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for r in results:
        d = r.details
        console.log(f"{r.key}: p50 {ms(d['p50_ms'])} / p95 {ms(d['p95_ms'])} / p99 {ms(d['p99_ms'])} / max "
                    f"{ms(d['max_ms'])} ms at {d['achieved_rate']:.0f}/{d['offered_rate']:.0f} req/s, errors "
                    f"{sum(d['errors'].values())}, {d['api'].get('pg_sessions_per_request')} new PostgreSQL sessions per "
                    f"request; bare psycopg2 p99 {r.baseline} ms; "
                    f"{'met' if r.met else 'missed'}")
    console.log(f"API peak RSS {rss.peak_mib} MiB; CPU per GET /v1/customers/{{id}} (ms): "
                f"{results[0].details['cpu_ms_per_request']}")
    return results
