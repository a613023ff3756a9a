"""Against a Python peer: the customer-view fold written with quixstreams, and the bare baseline.

The peer
--------
The same per-event work our view stage does to the unified customer view, written the way a
quixstreams user would write it: an ``Application`` (its own consumer group ``bench-peer-...``,
``auto_offset_reset="earliest"``, quixstreams' defaults otherwise: at-least-once, a checkpoint
every 5 s, RocksDB state with its changelog topic), ``app.topic("crm.customer-events")`` read as
bytes, and ``sdf.update(fold, stateful=True)`` where ``fold`` decodes the record with the view
stage's own ``events.customer_events.decode`` (orjson + ``CustomerEvent``), then
``state.get`` -> ``customer_view`` fold -> ``state.set`` on the customer's view, held in
quixstreams' State (RocksDB, keyed by the message key, the customer id). What the view stage
leaves out of the fold the peer leaves out too: an undecodable record (dead-lettered there,
skipped here), identity markers (they move identifiers between customers' timelines there, which a
per-key fold has no timeline for: skipped here), an erasure request (the view is deleted).

Fair to the peer: ``state.get`` hands out a freshly deserialized view, so the peer folds into it in
place (``customer_view.upgrade`` + the fold's one-event step) rather than through ``apply``, whose
deep copy protects a caller's view the peer does not have; the view stage copies once per customer
and batch, not per event. Not in the peer: the vault (sealed text fields are not opened, so
sentiment is scored on the sealed token, as a fold without the keys would), PostgreSQL, the
timeline, the identifier map, indicators and customer state: the peer is the fold alone, with
quixstreams' state, checkpoints and changelog around it.

The peer runs in a process of its own (``python -m bench.peer --bootstrap ... --topic ...
--expected N --state-dir DIR``) so its CPU and memory are its own. It prints a JSON line every half
second (records processed) and stops itself with ``app.stop()`` once it has processed ``expected``
records; the rate is records / (time the last record was folded - time the first was). The time
quixstreams takes to start (group join, topic checks, state recovery) and its final checkpoint are
not in it (reported as details). Its changelog topic
(``changelog__bench-peer-...--crm.customer-events--default``), its consumer group and its state
folder (under the bench home) are deleted afterwards.

The bare baseline
-----------------
``bare_consume_rate(bootstrap, topic, expected)``: an ``AIOKafkaConsumer`` assigned every partition
of ``topic``, from the beginning to the end offsets taken at the start, ``orjson.loads`` of every
value and nothing else. Rate = records / (last record read - first record read).

    python -m bench.peer --bootstrap 127.0.0.1:29092 --topic crm.customer-events --expected N --state-dir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.common import BENCH_HOME, Context, Result, console, progress_bar

CUSTOMER_EVENTS = "crm.customer-events"
PEER_PYTHON = Path(os.environ.get("CRM_BENCH_PEER_PYTHON") or Path(__file__).resolve().parents[1] / ".venv-peer" / "bin" / "python")
"""quixstreams pins an older pydantic than the platform's, so the peer has a virtualenv of its own
(``make bench`` makes it: the platform's package and quixstreams)."""
TARGET_RATIO = 1.5
REPO = Path(__file__).resolve().parents[1]
PROGRESS_EVERY_S = 0.5


# -- the bare baseline --------------------------------------------------------------------------
def bare_consume_rate(bootstrap: str, topic: str, expected: int, *, timeout_s: float = 1800) -> dict:
    """A bare aiokafka consume-and-decode loop over ``topic`` from the beginning to its end offsets
    (``orjson.loads`` of every value, nothing else); returns events, seconds, rate (events/s)."""
    import asyncio

    return asyncio.run(_bare(bootstrap, topic, expected, timeout_s))


async def _bare(bootstrap: str, topic: str, expected: int, timeout_s: float) -> dict:
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", client_id="crm-bench-bare")
    started = time.monotonic()
    cpu0 = time.process_time()
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # what consumer.topics() reads
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            raise RuntimeError(f"bare consumer: no partitions for {topic}")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        available = sum(ends[tp] - begins[tp] for tp in tps)
        total = min(expected, available) if expected else available
        remaining = {tp for tp in tps if ends[tp] > begins[tp]}
        n = 0
        first = last = None
        deadline = time.monotonic() + timeout_s
        with progress_bar() as progress:
            task = progress.add_task(f"bare aiokafka: {topic}", total=total, stats="")
            shown = time.monotonic()
            while remaining and n < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bare consumer: {n:,} of {total:,} records within {timeout_s:.0f} s")
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        orjson.loads(record.value)
                    n += len(records)
                    if records:
                        last = time.monotonic()
                        if first is None:
                            first = last
                        if records[-1].offset + 1 >= ends[tp]:
                            remaining.discard(tp)
                now = time.monotonic()
                if now - shown >= PROGRESS_EVERY_S:
                    shown = now
                    rate = n / (now - first) if first and now > first else 0
                    progress.update(task, completed=min(n, total), stats=f"{rate:,.0f} ev/s")
            progress.update(task, completed=min(n, total), stats="done")
    finally:
        await consumer.stop()
    seconds = (last - first) if first is not None and last > first else 1e-9
    return {"events": n, "seconds": round(seconds, 3), "rate": n / seconds,
            "cpu_s": round(time.process_time() - cpu0, 2), "wall_s_with_start": round(time.monotonic() - started, 2),
            "topic": topic}


# -- the peer: the child process ----------------------------------------------------------------
def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(bootstrap: str, topic: str, expected: int, state_dir: str, group: str) -> None:
    """The quixstreams application; prints JSON lines to stdout, logs to stderr."""
    from quixstreams import Application

    from events.customer_events import IdentityMarker, decode
    from projections import customer_view

    ERASURE = "customer.erasure_requested"  # services.processors.view_stage.ERASURE
    fold_one = customer_view._apply  # the fold's one-event step; see the module's docstring

    counts = {"processed": 0, "folded": 0, "markers": 0, "undecodable": 0, "erased": 0, "fold_errors": 0}
    times: dict[str, float] = {}
    started = time.monotonic()

    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=state_dir, loglevel="WARNING")
    source = app.topic(topic, value_deserializer="bytes")
    sdf = app.dataframe(source)

    def fold(value: bytes, state) -> None:
        if "first" not in times:
            times["first"] = time.monotonic()
            times["cpu_first"] = time.process_time()
        try:
            item = decode(value or b"")
        except (ValueError, KeyError, TypeError):
            counts["undecodable"] += 1
        else:
            if isinstance(item, IdentityMarker):
                counts["markers"] += 1
            elif item.type == ERASURE:
                state.delete("view")
                counts["erased"] += 1
            else:
                view = state.get("view")
                view = customer_view.upgrade(view) if view is not None else customer_view.empty(item.customer_id)
                try:
                    fold_one(view, item)
                except Exception:
                    counts["fold_errors"] += 1
                else:
                    state.set("view", view)
                    counts["folded"] += 1
        counts["processed"] += 1
        if counts["processed"] >= expected and "last" not in times:
            times["last"] = time.monotonic()
            times["cpu_last"] = time.process_time()
            app.stop()

    sdf.update(fold, stateful=True)

    stop_reporting = threading.Event()

    def report() -> None:
        while not stop_reporting.wait(PROGRESS_EVERY_S):
            _emit({"processed": counts["processed"], "rss_mb": round(_peak_rss_mb(), 1)})

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    app.run()
    stop_reporting.set()
    ended = time.monotonic()
    first, last = times.get("first"), times.get("last", ended)
    user, system = os.times()[:2]
    cpu_window = times.get("cpu_last", time.process_time()) - times.get("cpu_first", 0.0)
    _emit({"done": True, **counts, "seconds": round(last - first, 3) if first else None,
           "cpu_s_first_to_last": round(cpu_window, 3),
           "startup_s": round(first - started, 2) if first else None, "shutdown_s": round(ended - last, 2),
           "cpu_s": round(user + system, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)})


# -- the peer: the parent -----------------------------------------------------------------------
def topic_records(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` now: the sum over partitions of end - beginning offsets."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="crm-bench-peer-ends")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        consumer.close()


def cleanup(bootstrap: str, group: str, state_dir: Path | None = None) -> list[str]:
    """Deletes what a peer run left: its internal topics (changelog__<group>--...), its consumer
    group and its state folder. Returns the topics deleted."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bench-peer-admin")
    try:
        doomed = [t for t in admin.list_topics() if re.match(rf"(changelog|repartition)__{re.escape(group)}--", t)]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=60_000)
        delete_groups = getattr(admin, "delete_groups", None) or admin.delete_consumer_groups  # kafka-python 3 / 2
        try:
            delete_groups([group])
        except Exception:  # never joined, or already gone
            pass
    finally:
        admin.close()
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    return doomed


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def run_peer(bootstrap: str, topic: str, expected: int, *, home: Path = BENCH_HOME, timeout_s: float = 3600,
             stall_s: float = 180, keep: bool = False) -> dict:
    """Runs the quixstreams peer in a process of its own over ``expected`` records of ``topic``;
    returns events, seconds, rate (events/s), peak_rss_mb and details."""
    if expected <= 0:
        raise ValueError(f"nothing to fold on {topic}")
    group = f"bench-peer-{uuid.uuid4().hex[:8]}"
    state_dir = home / "peer" / group
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = home / "peer" / f"{group}.log"
    if not PEER_PYTHON.exists():
        raise RuntimeError(f"no {PEER_PYTHON}: `make bench` makes the peer's virtualenv (quixstreams)")
    argv = [str(PEER_PYTHON), "-m", "bench.peer", "--bootstrap", bootstrap, "--topic", topic,
            "--expected", str(expected), "--state-dir", str(state_dir), "--group", group]
    done: dict | None = None
    lines: list[dict] = []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
                                start_new_session=True)
        reader_lines: list[str] = []
        got_line = threading.Condition()
        eof = threading.Event()

        def read() -> None:
            for line in proc.stdout:
                with got_line:
                    reader_lines.append(line)
                    got_line.notify()
            with got_line:
                eof.set()
                got_line.notify()

        threading.Thread(target=read, daemon=True).start()
        start = time.monotonic()
        deadline = start + timeout_s
        last_change, last_processed, first_seen = start, 0, None
        try:
            with progress_bar() as progress:
                task = progress.add_task("quixstreams peer: view fold", total=expected, stats="starting ...")
                while done is None:
                    with got_line:
                        if not reader_lines:
                            got_line.wait(1.0)
                        pending, reader_lines[:] = list(reader_lines), []
                    now = time.monotonic()
                    for raw in pending:
                        try:
                            message = json.loads(raw)
                        except ValueError:
                            continue
                        lines.append(message)
                        if message.get("done"):
                            done = message
                            break
                        processed = message.get("processed", 0)
                        if processed > last_processed:
                            if first_seen is None:
                                first_seen = (now, last_processed)
                            last_change, last_processed = now, processed
                        rate = ""
                        if first_seen and now > first_seen[0]:
                            rate = f"{(processed - first_seen[1]) / (now - first_seen[0]):,.0f} ev/s"
                        progress.update(task, completed=min(processed, expected),
                                        stats=f"{rate}  rss {message.get('rss_mb', 0):,.0f} MB")
                    if done is not None:
                        break
                    if eof.is_set() and not pending:
                        with got_line:
                            if reader_lines:
                                continue
                        proc.wait(30)
                        raise RuntimeError(f"the quixstreams peer exited with {proc.returncode} before it was done "
                                           f"({last_processed:,} of {expected:,}); see {log_path}:\n{_tail(log_path)}")
                    if now > deadline or now - last_change > stall_s:
                        raise RuntimeError(f"the quixstreams peer stalled at {last_processed:,} of {expected:,} "
                                           f"records; see {log_path}:\n{_tail(log_path)}")
                progress.update(task, completed=expected, stats="done")
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: quixstreams stops cleanly
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            state_mb = _dir_mb(state_dir)
            if not keep:
                try:
                    cleanup(bootstrap, group, state_dir)
                except Exception as exc:  # a leftover topic must not cost the figure
                    console.log(f"[yellow]peer cleanup: {exc!r}")
    seconds = max(done["seconds"] or 0.0, 1e-9)
    if done["fold_errors"]:
        console.log(f"[yellow]quixstreams peer: {done['fold_errors']:,} events the fold refused")
    return {"events": done["processed"], "seconds": seconds, "rate": done["processed"] / seconds,
            "peak_rss_mb": done["peak_rss_mb"],
            "details": {k: done[k] for k in ("folded", "markers", "undecodable", "erased", "fold_errors",
                                              "startup_s", "shutdown_s", "cpu_s", "cpu_s_first_to_last")}
            | {"events_per_cpu_s": round(done["processed"] / max(done["cpu_s_first_to_last"], 1e-9))}
            | {"state_dir_mb": round(state_mb, 1), "consumer_group": group, "topic": topic,
               "quixstreams": _quix_version(), "log": str(log_path)}}


def _quix_version() -> str:
    try:  # installed in the peer's virtualenv, not this one
        out = subprocess.run([str(PEER_PYTHON), "-c", "from importlib.metadata import version; print(version('quixstreams'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the benchmark ------------------------------------------------------------------------------
def run(ctx: Context) -> list[Result]:
    bootstrap = ctx.stack.kafka_bootstrap
    console.rule("against a Python peer: the customer-view fold with quixstreams")
    expected = topic_records(bootstrap, CUSTOMER_EVENTS)
    peer = run_peer(bootstrap, CUSTOMER_EVENTS, expected)
    ctx.shared["peer_rate"] = peer["rate"]
    console.log(f"quixstreams peer: {peer['rate']:,.0f} events/s ({peer['events']:,} records in "
                f"{peer['seconds']:.1f} s; {peer['details']['events_per_cpu_s']:,} per CPU second), "
                f"peak RSS {peer['peak_rss_mb']:,.0f} MB")
    what_peer = (f"the customer-view fold written with quixstreams {peer['details']['quixstreams']} "
                 f"(RocksDB state, changelog, defaults) over {peer['events']:,} records of {CUSTOMER_EVENTS}")
    ours = ctx.shared.get("processing_rate")
    if ours:
        ratio = ours / peer["rate"]
        return [Result("peer.quixstreams", "processing a loaded log (identity + every projection, persisted, "
                       "1 worker) against the quixstreams peer", ours, "events/s", peer["rate"], what_peer,
                       f">= {TARGET_RATIO} x the quixstreams peer", ratio >= TARGET_RATIO, ratio=ratio,
                       details={"peer": peer})]
    return [Result("peer.quixstreams", what_peer, peer["rate"], "events/s", None, "", "", None,
                   details={"peer": peer})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default=CUSTOMER_EVENTS)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--group", default=None, help="consumer group (default bench-peer-<random>)")
    args = parser.parse_args()
    child(args.bootstrap, args.topic, args.expected, args.state_dir, args.group or f"bench-peer-{uuid.uuid4().hex[:8]}")


if __name__ == "__main__":
    main()
