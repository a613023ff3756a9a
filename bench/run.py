"""``make bench``: every benchmark of the README's Benchmarks in one run, each against its baseline measured in
the same run, written to ``bench/results.json`` and ``docs/benchmarks.md``.

    python -m bench.run [--quick] [--events N] [--only ingest,processing,...] [--skip ...]

The order matters and is fixed: the log of ``--events`` touchpoints is loaded and processed by one
worker (a copy of the database is taken as loaded); the quixstreams peer folds what that worker
resolved; the replay rebuilds every projection from the log; the query API is measured against the
processed database; the same log is processed again by 2 workers into the copy (scaling); then
freshness with the whole platform running, and the collector last (what it writes would otherwise
be part of the log). Every step starts the services it needs and stops them after, so each has the
machine to itself.

The stack is the project's own Kafka and PostgreSQL under ``.crm/bench`` on ports of their own
(``CRM_BENCH_KAFKA_PORT`` 29092, ``CRM_BENCH_KAFKA_CONTROLLER_PORT`` 29093, ``CRM_BENCH_PG_PORT``
25432): a running demo or test stack is never touched. A bench stack left running by an earlier
run (``CRM_BENCH_KEEP_STACK=1``) is used as it is, its topics emptied first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from bench.common import (BENCH_HOME, Context, Result, bench_stack, console, ensure_topics, machine, start_stack,
                          stop_stack)
from tests.processes import REPO, Platform

RESULTS_JSON = REPO / "bench" / "results.json"
RESULTS_MD = REPO / "docs" / "benchmarks.md"
STEPS = ("processing", "peer", "replay", "query", "scaling", "freshness", "ingest")


STEP_FUNCTIONS = {"processing": ("processing", "run"), "peer": ("peer", "run"), "replay": ("replay", "run"),
                  "query": ("query", "run"), "scaling": ("processing", "run_scaling"),
                  "freshness": ("fresh", "run"), "ingest": ("ingest", "run")}


def _step(name: str):
    """The ``run(ctx)`` of a step (imported when the step runs)."""
    import importlib

    module, function = STEP_FUNCTIONS[name]
    return getattr(importlib.import_module(f"bench.{module}"), function)


def relative_paths(value: Any) -> Any:
    """``value`` with this checkout's absolute paths made relative to it (no machine paths in the
    committed results)."""
    root = str(REPO) + "/"
    if isinstance(value, str):
        return value.replace(root, "")
    if isinstance(value, dict):
        return {k: relative_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_paths(v) for v in value]
    return value


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def markdown(results: list[dict], meta: dict) -> str:
    """The table of docs/benchmarks.md."""
    m = meta["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `{meta['command']}` on {meta['finished_at']} ({meta['seconds'] / 60:.1f} min), "
        f"{'quick size' if meta['quick'] else 'full size'}: a log of {meta['events']:,} events.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}; Python {m['python']}, "
        f"{m['java']}, {m['postgresql']}; kafka-python {m['kafka_python']}, faust {m['faust']}. "
        f"Load average at the start: {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}.",
        "",
        "Every figure is measured beside its baseline in the same run on the same machine; the ratio is "
        "figure / baseline. How each is measured: `bench/README.md`; what bounds the figures that miss "
        "their target: the analysis below the table.",
        "",
        "| benchmark | figure | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        base = f"{_fmt(r['baseline'], r['unit'])} ({r['baseline_what']})" if r["baseline"] is not None else "–"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "–"
        lines.append(f"| {r['what']} | {_fmt(r['figure'], r['unit'])} | {base} | {ratio} | {r['target'] or '–'} | {met} |")
    if meta.get("failed"):
        lines += ["", "Steps that failed in this run (see the log of `make bench`):", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in meta["failed"].items()]
    analysis = REPO / "bench" / "ANALYSIS.md"
    if analysis.exists():
        lines += ["", analysis.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version, a few minutes")
    parser.add_argument("--events", type=int, default=None,
                        help="size of the processing log (default 1,000,000; 20,000 with --quick)")
    parser.add_argument("--only", default="", help=f"comma-separated steps of: {', '.join(STEPS)}")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results.json and the docs alone")
    parser.add_argument("--render", action="store_true",
                        help="only write docs/benchmarks.md again from bench/results.json (after editing bench/ANALYSIS.md)")
    args = parser.parse_args(argv)
    if args.render:
        saved = orjson.loads(RESULTS_JSON.read_bytes())
        RESULTS_MD.write_text(markdown(saved["results"], saved["meta"]))
        console.print(f"written {RESULTS_MD.relative_to(REPO)} from {RESULTS_JSON.relative_to(REPO)}")
        return 0
    steps = [s for s in STEPS if (not args.only or s in args.only.split(",")) and s not in args.skip.split(",")]
    events = args.events or (20_000 if args.quick else 1_000_000)
    run_id = uuid.uuid4().hex[:8]
    keep = os.environ.get("CRM_BENCH_KEEP_STACK") == "1"
    started = time.monotonic()
    meta: dict[str, Any] = {"command": "make bench-quick" if args.quick else "make bench", "quick": args.quick,
                            "events": events, "run_id": run_id, "steps": steps, "machine": machine(),
                            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    console.rule(f"benchmarks: {', '.join(steps)} ({'quick' if args.quick else 'full'}, log of {events:,} events)")
    stack = bench_stack()
    start_stack(stack)
    platform = Platform(stack, stack.new_database(), BENCH_HOME / "logs" / f"run-{run_id}")
    ensure_topics(stack)
    ctx = Context(stack, platform, args.quick, events, run_id)
    results: list[Result] = []
    failed: dict[str, str] = {}
    try:
        for name in steps:
            console.rule(f"[bold]{name}")
            t0 = time.monotonic()
            try:
                got = _step(name)(ctx)
            except Exception as exc:  # one benchmark failing leaves the others' figures standing
                traceback.print_exc()
                lines = [line for line in str(exc).splitlines() if line.strip()]
                failed[name] = f"{type(exc).__name__}: " + " … ".join(lines[:1] + lines[-2:] if len(lines) > 3 else lines)
                console.print(f"[red]{name} failed: {exc}")
                continue
            finally:
                for svc in platform.services:  # whatever a step left running
                    svc.stop()
                platform.services.clear()
            results += got
            for r in got:
                verdict = {True: "[green]met", False: "[red]missed", None: ""}[r.met]
                console.print(f"  {r.key}: {_fmt(r.figure, r.unit)}  baseline {_fmt(r.baseline, r.unit)}"
                              f"  ratio {r.ratio:.2f}  target {r.target}  {verdict}" if r.ratio is not None else
                              f"  {r.key}: {_fmt(r.figure, r.unit)}  {r.target}  {verdict}")
            console.log(f"{name} took {time.monotonic() - t0:.0f} s")
    finally:
        stop_stack(stack, list({id(p): p for p in [platform, ctx.platform, *ctx.shared.get("platforms", [])]}.values()),
                   keep)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["failed"] = failed
    rows = [r.as_json() for r in results]
    if not args.no_write:
        RESULTS_JSON.write_bytes(orjson.dumps(relative_paths({"meta": meta, "results": rows}),
                                              option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        RESULTS_MD.write_text(markdown(rows, meta))
        console.print(f"written {RESULTS_JSON.relative_to(REPO)} and {RESULTS_MD.relative_to(REPO)}")
    console.print(Path(RESULTS_MD).read_text() if not args.no_write else markdown(rows, meta))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
