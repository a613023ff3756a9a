"""Where a worker's time goes: the two stages run in this process, without faust or Kafka, over
sealed touchpoints against a real, fresh PostgreSQL database, batch by batch as a worker runs them
(the same ``BatchRunner._prepare`` and commit), optionally under a profiler.

    python -m bench.stages --events 20000 [--profile pyinstrument|cprofile] [--batch 1000]

It needs the bench stack's PostgreSQL (``make bench`` or ``CRM_BENCH_KEEP_STACK=1``; it starts it
when it is not running). The figures are per stage: events/s of the stage alone, and the share of
time in PostgreSQL (waiting for the server) against Python.
"""
from __future__ import annotations

import argparse
import time
import uuid

import orjson
import psycopg2
import psycopg2.extensions

from bench.common import bench_stack, console, drop_database, progress_bar
from bench import workload
from services.common.topics import CUSTOMER_EVENTS, TOUCHPOINTS
from services.processors.records import Record


def sealed_records(dsn: str, master_key: str, n: int, seed: int = 8) -> list[Record]:
    """``n`` simulated touchpoints sealed as the collector seals them, as consumed records."""
    out: list[Record] = []
    now_ms = int(time.time() * 1000)
    for records, _ in workload.sealed(dsn, master_key, n, seed=seed):
        out += [Record(TOUCHPOINTS, hash(key) % 4, len(out) + i, key, value, tuple(workload.HEADERS), now_ms)
                for i, (key, value) in enumerate(records)]
    return out


def stages(settings, vault):
    from projections import alerts
    from projections.business_hours import Calendar
    from projections.customer_state import load_rules
    from services.processors.identity_stage import IdentityStage
    from services.processors.indicator_stage import IndicatorProjection
    from services.processors.state_stage import StateProjection
    from services.processors.view_stage import ViewStage

    identity = IdentityStage(settings.default_region, settings.identity_limits, vault=vault)
    view = ViewStage(IndicatorProjection(Calendar.from_config(settings.business_hours), settings.indicator_max_lateness_s,
                                         alerts.rules(settings.indicator_alerts)),
                     StateProjection(load_rules(settings.customer_state_rules or None)), vault)
    return identity, view


SQL_TIME: dict[str, list[float]] = {}


class _TimingCursor(psycopg2.extensions.cursor):
    """Adds each statement's time (and count) to SQL_TIME under its first words."""

    def execute(self, query, vars=None):
        started = time.perf_counter()
        try:
            return super().execute(query, vars)
        finally:
            text = query.decode(errors="replace") if isinstance(query, bytes) else str(query)
            name = " ".join(text.split())[:70]
            slot = SQL_TIME.setdefault(name, [0.0, 0])
            slot[0] += time.perf_counter() - started
            slot[1] += 1


def run_stage(runner, records: list[Record], batch: int, label: str, *, sql: bool = False) -> tuple[list, float]:
    """Every record through ``runner`` in batches, committing each; returns the outputs and seconds."""
    if sql:
        runner._connection().cursor_factory = _TimingCursor
    outputs: list = []
    started = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task(label, total=len(records), stats="")
        for i in range(0, len(records), batch):
            chunk = records[i:i + batch]
            outputs += runner._prepare(chunk)
            runner._commit()
            progress.update(task, advance=len(chunk))
    return outputs, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--profile", choices=("pyinstrument", "cprofile"), default=None)
    parser.add_argument("--stage", choices=("identity", "view", "both"), default="both")
    parser.add_argument("--sql", action="store_true", help="time each kind of SQL statement")
    args = parser.parse_args(argv)

    from services.common import settings as settings_mod
    from services.common.vault import Vault, load_master_key
    from services.processors.runner import BatchRunner

    stack = bench_stack()
    if stack.script("postgres.sh", "status", check=False).returncode != 0:
        stack.script("postgres.sh", "start")
    dsn = stack.new_database()
    try:
        master = stack.env["CRM_MASTER_KEY"]
        with console.status(f"sealing {args.events:,} touchpoints ..."):
            records = sealed_records(dsn, master, args.events)
        settings = settings_mod.load()
        vault = Vault(load_master_key(master, None))
        identity, view = stages(settings, vault)
        consumer = "bench-stages-" + uuid.uuid4().hex[:6]
        profiler = None
        if args.profile == "pyinstrument":
            from pyinstrument import Profiler
            profiler = Profiler(interval=0.0005)
        elif args.profile == "cprofile":
            import cProfile
            profiler = cProfile.Profile()
        figures = {}
        runner = BatchRunner(identity, dsn, consumer, publish=None)
        if profiler and args.stage in ("identity", "both"):
            profiler.enable() if args.profile == "cprofile" else profiler.start()
        resolved, seconds = run_stage(runner, records, args.batch, "identity stage", sql=args.sql)
        if profiler and args.stage == "identity":
            profiler.disable() if args.profile == "cprofile" else profiler.stop()
        figures["identity"] = {"records": len(records), "seconds": round(seconds, 2), "rate": len(records) / seconds}
        view_records = [Record(CUSTOMER_EVENTS, hash(o.key) % 4, i, o.key, o.value, o.headers, o.timestamp_ms)
                        for i, o in enumerate(o for o in resolved if o.topic == CUSTOMER_EVENTS)]
        runner2 = BatchRunner(view, dsn, consumer, publish=None)
        if profiler and args.stage == "view":
            profiler.enable() if args.profile == "cprofile" else profiler.start()
        published, seconds = run_stage(runner2, view_records, args.batch, "view stage", sql=args.sql)
        if profiler and args.stage in ("view", "both"):
            profiler.disable() if args.profile == "cprofile" else profiler.stop()
        figures["view"] = {"records": len(view_records), "seconds": round(seconds, 2),
                           "rate": len(view_records) / seconds, "published": len(published)}
        console.print_json(orjson.dumps(figures).decode())
        if args.sql:
            for name, (seconds, count) in sorted(SQL_TIME.items(), key=lambda kv: -kv[1][0])[:25]:
                console.print(f"{seconds:7.3f} s {count:6d} x  {name}", highlight=False)
        if args.profile == "pyinstrument":
            console.print(profiler.output_text(unicode=True, color=False, show_all=False))
        elif args.profile == "cprofile":
            import pstats
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        runner.close()
        runner2.close()
        vault.close()
        return 0
    finally:
        drop_database(stack, dsn)


if __name__ == "__main__":
    raise SystemExit(main())
