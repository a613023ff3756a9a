"""Processing a loaded log: identity resolution and every projection, persisted in PostgreSQL.

The log (``bench.workload``: ``ctx.events`` sealed touchpoints of simulated customers) is written
to ``crm.touchpoints`` before any processor runs. Then ``crm-processor`` workers start (one, and
for the scaling figure two, each a process of its own with both stages) and the benchmark follows
``processor_offsets``, the positions the workers commit in the same PostgreSQL transaction as the
read model: an event counts as processed when the view stage has committed the customer event it
became, i.e. when it is in the customer view, the timeline, the indicators and the customer state.

Rate = events / (time the view stage committed the last one - time the first batch committed).
Memory: the peak RSS of each worker, sampled every half second, once 10 % of the log is done (the
figure "at 100,000 events" of a full run) and at the end ("at 1,000,000").
CPU: the CPU time the worker, PostgreSQL (the postmaster and its backends) and the broker used from
the first commit to the last, per event, against the budget the rate target leaves on this machine
(cores / 20,000 events/s): what bounds the rate, whatever the code's shape.

The baseline, same run, same log: a bare aiokafka consume-and-decode loop (``bench.peer``).
"""
from __future__ import annotations

import os
import time

import psycopg2
from kafka import KafkaConsumer, TopicPartition

from services.common.topics import CUSTOMER_EVENTS, TOUCHPOINTS

from bench.common import Context, CpuAccount, Result, console, progress_bar, rss_bytes, stack_pids

TARGET_RATE = 20_000
TARGET_SHARE = 0.25


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="crm-bench-ends")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def committed(dsn: str, consumer: str) -> dict[str, int]:
    """Records committed per topic by the workers of ``consumer``."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT topic, sum(next_offset) FROM processor_offsets WHERE consumer = %s GROUP BY topic",
                        (consumer,))
            return {t: int(n) for t, n in cur.fetchall()}
    finally:
        conn.close()


def window_rate(samples: list[tuple[float, int, int]], skip_s: float, window_s: float) -> float | None:
    """Customer events the view stage committed per second between ``skip_s`` and ``skip_s +
    window_s`` after the first commit (the steady state, start-up and tail left out)."""
    if not samples:
        return None
    started = next((t for t, a, b in samples if a or b), None)
    if started is None:
        return None
    inside = [(t, b) for t, _, b in samples if started + skip_s <= t <= started + skip_s + window_s]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def follow(ctx: Context, dsn: str, consumer: str, pids: list[int], total: int, label: str, *,
           since: dict[str, int] | None = None, timeout_s: float = 3600, budget_s: float | None = None) -> dict:
    """Waits until the workers of ``consumer`` have taken ``total`` touchpoints through both stages
    (or, with ``budget_s``, that long after the first commit); returns timings, the samples and
    memory."""
    bootstrap = ctx.stack.kafka_bootstrap
    since = since or {}
    start = None
    samples: list[tuple[float, int, int]] = []  # (t, touchpoints committed, customer events committed)
    peak_rss: dict[int, float] = {pid: 0.0 for pid in pids}
    rss_at_tenth: dict[int, float] | None = None
    deadline = time.monotonic() + timeout_s
    view_total = None
    cpu = CpuAccount({"worker": pids, **{name: [pid] for name, pid in stack_pids(ctx.stack).items()}})
    with progress_bar() as progress:
        task = progress.add_task(label, total=total, stats="")
        while time.monotonic() < deadline:
            now = time.monotonic()
            done = committed(dsn, consumer)
            tps = done.get(TOUCHPOINTS, 0) - since.get(TOUCHPOINTS, 0)
            ces = done.get(CUSTOMER_EVENTS, 0) - since.get(CUSTOMER_EVENTS, 0)
            for pid in pids:
                peak_rss[pid] = max(peak_rss[pid], rss_bytes(pid) / 2**20)
            if start is None and (tps or ces):
                start = now
                cpu.start()
            if budget_s is not None and start is not None and now - start >= budget_s:
                samples.append((now, tps, ces))
                break
            samples.append((now, tps, ces))
            if rss_at_tenth is None and tps >= total / 10:
                rss_at_tenth = dict(peak_rss)
            if tps >= total:
                if view_total is None:  # every customer event the identity stage will publish exists now
                    view_total = sum(end_offsets(bootstrap, CUSTOMER_EVENTS).values()) - since.get(CUSTOMER_EVENTS, 0)
                if ces >= view_total:
                    break
            rate = ""
            if len(samples) > 4:
                t0, a0, _ = samples[-5]
                rate = f"{(tps - a0) / max(now - t0, 1e-6):,.0f} ev/s now"
            rss = "  ".join(f"{m:,.0f} MB" for m in peak_rss.values())
            progress.update(task, completed=min(tps, total), stats=f"view {ces:,}  {rate}  rss {rss}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{label}: the workers did not finish within {timeout_s:.0f} s")
    end = time.monotonic()
    cpu.stop()
    seconds = end - (start or end) + 0.25  # the first commit was seen up to half a poll late
    done_tps = samples[-1][1] if samples else 0
    return {"events": total, "customer_events": view_total, "seconds": round(seconds, 2),
            "rate": done_tps / seconds, "samples": samples, "touchpoints_done": done_tps,
            "peak_rss_mb": list(peak_rss.values()),
            "peak_rss_mb_at_tenth": list((rss_at_tenth or peak_rss).values()),
            "cpu_seconds": {k: round(v, 2) for k, v in cpu.seconds.items()},
            "cpu_ms_per_event": cpu.per_event_ms(done_tps)}


WORKER_ENV = {"CRM_BATCH_WITHIN_S": "0.2"}
"""A worker of a loaded log takes full batches (CRM_BATCH_SIZE, 1000) anyway; the wait only
matters at the tail."""


def clone_database(ctx: Context, dsn: str) -> str:
    """A copy of the run's database (PostgreSQL's template copy; nothing may be connected to it)."""
    name = dsn.rsplit("/", 1)[1]
    twin = name + "_2"
    conn = psycopg2.connect(ctx.stack.pg_admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,))
        cur.execute(f"CREATE DATABASE {twin} TEMPLATE {name}")
    conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + twin


def run(ctx: Context) -> list[Result]:
    from bench import peer, workload

    stack, platform = ctx.stack, ctx.platform
    console.rule(f"processing a loaded log of {ctx.events:,} events")
    loaded = workload.load(stack.kafka_bootstrap, platform.dsn, ctx.events, stack.env["CRM_MASTER_KEY"])
    total = sum(end_offsets(stack.kafka_bootstrap, TOUCHPOINTS).values())
    console.log(f"log loaded: {loaded['written']:,} touchpoints sealed and written ({total:,} on crm.touchpoints)")

    # the second run (2 workers) needs the subjects the log names: a copy of the database as loaded
    twin = clone_database(ctx, platform.dsn)

    bare = peer.bare_consume_rate(stack.kafka_bootstrap, TOUCHPOINTS, total)
    ctx.shared["bare_rate"] = bare["rate"]
    console.log(f"baseline: bare aiokafka consume-and-decode {bare['rate']:,.0f} events/s")

    worker = platform.processor(**WORKER_ENV)
    one = follow(ctx, platform.dsn, platform.processor_id, [worker.proc.pid], total, "1 worker: identity + views")
    worker.stop()
    ctx.shared["processing_rate"] = one["rate"]
    console.log(f"1 worker: {one['rate']:,.0f} events/s ({one['seconds']} s), peak RSS {one['peak_rss_mb']}")

    ctx.shared["twin"] = twin
    ctx.shared["one_worker"] = one
    one = {k: v for k, v in one.items() if k != "samples"}  # kept for the scaling step, not the results
    ctx.shared["log_total"] = total

    results = [
        Result("processing.rate", f"processing a loaded log of {total:,} events: identity + every projection, "
               "persisted (1 worker)", one["rate"], "events/s", bare["rate"],
               "bare aiokafka consume-and-decode loop", f">= {TARGET_RATE:,} events/s and >= 25 % of the baseline",
               one["rate"] >= TARGET_RATE and one["rate"] >= TARGET_SHARE * bare["rate"],
               details={"one_worker": one, "baseline": bare, "loaded": loaded}),
    ]
    results.append(cpu_result(one, total))
    tenth, full = one["peak_rss_mb_at_tenth"][0], one["peak_rss_mb"][0]
    results.append(Result("memory.processor", f"crm-processor peak RSS after {total:,} events vs after {total // 10:,}",
                          full, "MB", tenth, f"peak RSS after {total // 10:,} events", "flat: <= 1.25 x",
                          full <= 1.25 * tenth))
    return results


def cpu_result(one: dict, total: int) -> Result:
    """What one event costs the machine's CPU while a worker takes the log through, by process:
    the worker, PostgreSQL, the broker. On 2 cores, 20,000 events/s leaves 0.1 ms per event for
    all of them together; the figure says how far each part alone is from that budget."""
    per = one["cpu_ms_per_event"]
    parts = {k: per.get(k, 0.0) for k in ("worker", "postgresql", "kafka")}
    spent = sum(parts.values())
    cores = os.cpu_count() or 1
    budget = 1000 * cores / TARGET_RATE
    ceiling = 1000 * cores / spent if spent else None
    return Result("processing.cpu", "CPU per event while 1 worker processes the log: worker + PostgreSQL + Kafka "
                  f"({', '.join(f'{k} {v:.3f}' for k, v in parts.items())} ms)", round(spent, 4), "ms/event",
                  round(budget, 4), f"the budget of {TARGET_RATE:,} events/s on {cores} cores",
                  f"<= {budget:.2f} ms/event (the rate target's CPU budget)", spent <= budget,
                  details={"cpu_ms_per_event": per, "cpu_seconds": one["cpu_seconds"],
                           "ceiling_events_per_s": ceiling and round(ceiling),
                           "ceiling_postgresql_alone": parts["postgresql"] and round(1000 * cores / parts["postgresql"])})


def run_scaling(ctx: Context) -> list[Result]:
    """The same log by 2 worker processes (4 partitions: 2 each), into the copy of the database made
    right after loading, for the scaling figure beside the one-worker rate.

    The stages' output topics are emptied first (the one-worker run's customer events are still on
    them, and a second platform reading them would fold twice the work); only crm.touchpoints, the
    log, stays. From here on the benchmarks run on this copy (``ctx.platform`` is its platform)."""
    from tests.processes import Platform

    from bench.common import empty_topics, ensure_topics

    stack, twin = ctx.stack, ctx.shared.get("twin")
    if twin is None:
        raise RuntimeError("the scaling step needs the processing step first (its log and database copy)")
    one, total = ctx.shared["one_worker"], ctx.shared["log_total"]
    with console.status("emptying every topic but crm.touchpoints ..."):
        empty_topics(stack.kafka_bootstrap, keep=(TOUCHPOINTS,))
        ensure_topics(stack)
    second = Platform(stack, twin, ctx.platform.log_dir)
    ctx.shared.setdefault("platforms", []).append(ctx.platform)
    ctx.platform = second
    workers = [second.processor(**WORKER_ENV) for _ in range(2)]
    # the steady state of both runs over the same window (a full log would take the 2 workers as
    # long again as the one-worker run): customer events the view stage committed per second
    skip, window = (5.0, 20.0) if ctx.quick else (20.0, 180.0)
    two = follow(ctx, twin, second.processor_id, [w.proc.pid for w in workers], total,
                 "2 workers: identity + views", budget_s=skip + window + 2)
    for w in workers:
        w.stop()
    second.services.clear()
    rate2 = window_rate(two.pop("samples"), skip, window)
    rate1 = window_rate(one["samples"], skip, window)
    if not rate1 or not rate2:
        raise RuntimeError("too few samples in the measured window")
    console.log(f"steady state, {window:.0f} s after the first {skip:.0f} s: 1 worker {rate1:,.0f}, "
                f"2 workers {rate2:,.0f} customer events/s")
    return [Result("processing.two_workers", "the same log by 2 worker processes (4 partitions), steady state "
                   f"({window:.0f} s window), view-stage commits/s", rate2, "events/s", rate1,
                   "1 worker, same log, same window", "informational (scaling out)", None,
                   details={"two_workers": two, "window_s": window, "skip_s": skip})]
