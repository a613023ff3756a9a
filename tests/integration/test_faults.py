"""Faults survived on the real broker and database, each while events flow through the collector:
a broker stop and restart, a PostgreSQL restart, collector restarts, the collector with the broker
down, a processor worker stopped with SIGTERM mid-stream, and a chaos run with all of them (and
kill -9 of a worker). After each, the read model equals the reference fold of the events the
collector answered 2xx for: nothing lost, nothing counted twice.

They stop and start the session's broker and database; every other test copes with that, so they
run wherever the shuffled order puts them. ``make chaos`` runs the chaos test alone with 50,000 events
(``CRM_CHAOS_EVENTS``); its figures go to ``$CRM_TEST_HOME/chaos-<events>.json``.
"""
from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path

import psycopg2
import pytest

from events.envelope import event_key
from services.common.topics import CUSTOMER_EVENTS, TOUCHPOINTS
from tests import http
from tests.chaos import (FAULTS, Chaos, batches_in_flight, journeys, json_lines, keys_on_log, read_log,
                         start_at_log_end, stopping_lines, waiting_for_kafka)
from tests.conftest import TEST_HOME
from tests.integration.test_exactly_once import applied, assert_equals_reference
from tests.integration.test_processors import publish
from tests.processes import wait_for

CHAOS_EVENTS = int(os.environ.get("CRM_CHAOS_EVENTS", "6000"))
CHAOS_ROUNDS = int(os.environ.get("CRM_CHAOS_ROUNDS", "1" if CHAOS_EVENTS < 20_000 else "2"))
CHAOS_RATE = float(os.environ.get("CRM_CHAOS_RATE", "100" if CHAOS_EVENTS < 20_000 else "300"))


def _ephemeral(port: str) -> bool:
    lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return lo <= int(port) <= hi


restarts_infrastructure = pytest.mark.skipif(
    any(_ephemeral(os.environ.get(var, default)) for var, default in
        (("CRM_TEST_KAFKA_PORT", "19092"), ("CRM_TEST_KAFKA_CONTROLLER_PORT", "19093"), ("CRM_TEST_PG_PORT", "15432"))),
    reason="a test port is in the kernel's ephemeral port range: while the broker or PostgreSQL is down, a client "
           "reconnecting can be given that very port and connect to itself, and the restarted server then cannot "
           "bind it; choose CRM_TEST_*_PORT below /proc/sys/net/ipv4/ip_local_port_range")
"""For the tests that stop and start the broker or PostgreSQL."""

CLEAN_EXITS = (0, -signal.SIGTERM)
"""How the collector ends after a graceful shutdown: uvicorn re-raises the SIGTERM it handled, so
that a supervisor sees the signal."""


def shut_down_cleanly(collector) -> bool:
    """The collector drained its requests and closed its producer (the lifespan ended)."""
    return any(line.get("msg") == "Application shutdown complete." for line in json_lines(collector.log_path))


def seed(unique: str) -> int:
    return int(unique[:8], 16)


def assert_exact(figures: dict) -> None:
    """Every accepted event applied once, and the read model equal to the reference."""
    assert figures["unconfirmed"] == 0 and figures["rejected"] == 0, figures["answers"]
    assert figures["lost"] == 0, f"{figures['lost']} accepted events lost"
    assert figures["duplicated"] == 0, f"{figures['duplicated']} events counted twice"
    assert figures["unconfirmed_applied"] == 0
    assert figures["customers_differing"] == 0, figures["customers_differing_examples"]
    assert figures["indicators_differing"] == {}
    assert figures["oracle_differences"] == 0, figures["oracle_differences_examples"]
    assert "error" not in figures["feed"], figures["feed"]
    assert figures["feed"]["changes"] > figures["customers"] / 2


def stored_offsets(dsn: str, consumer: str) -> dict[tuple[str, int], int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT topic, partition, next_offset FROM processor_offsets WHERE consumer = %s", (consumer,))
        out = {(t, p): n for t, p, n in cur.fetchall()}
    conn.close()
    return out


@restarts_infrastructure
def test_broker_stop_and_restart_while_events_flow(platform, unique):
    chaos = Chaos(platform, events=3000, faults=["broker_restart"], seed=seed(unique), workers=1, rate=200)
    worker = chaos.workers
    figures = chaos.run()
    assert_exact(figures)
    # the outage reached the sender as 503s with Retry-After, and the same worker went on afterwards
    assert figures["answers"].get("503", 0) >= 1 and set(figures["retry_after"]) == {"5"}, figures["answers"]
    assert all(w.proc.poll() is None for w in worker), "a worker died with the broker"


@restarts_infrastructure
def test_postgres_restart_while_events_flow(platform, unique):
    chaos = Chaos(platform, events=3000, faults=["postgres_restart"], seed=seed(unique), workers=1, rate=200)
    figures = chaos.run()
    assert_exact(figures)
    (worker,) = chaos.workers
    assert worker.proc.poll() is None, "the worker died with PostgreSQL"
    retried = [line for line in json_lines(worker.log_path) if line.get("msg") == "batch failed, retrying"]
    assert retried, "no batch met the outage; the worker should have retried one"


def test_collector_restarts_while_a_sender_is_sending(platform, unique):
    chaos = Chaos(platform, events=3000, faults=["collector_sigterm", "collector_kill9"], seed=seed(unique),
                  workers=1, rate=200)
    figures = chaos.run()
    assert_exact(figures)
    assert all(rc in CLEAN_EXITS for rc in figures["collector_sigterm_exits"]), figures["collector_sigterm_exits"]
    assert figures["answers"].get("connection error", 0) >= 1, "the sender never saw the collector gone"


@restarts_infrastructure
def test_with_the_broker_down_the_collector_answers_503_and_writes_nothing(platform, unique):
    """503 with Retry-After while the broker is down, also for a request caught by a SIGTERM of the
    collector; none of the refused events surfaces later (the collector that refused them stays up
    while the broker comes back), and every event answered 2xx is in the read model after recovery."""
    stack = platform.stack
    starts = start_at_log_end(platform)
    platform.processor()
    _, url = platform.collector(CRM_KAFKA_ACK_TIMEOUT_S="3")
    stopping, stopping_url = platform.collector(CRM_KAFKA_ACK_TIMEOUT_S="3")
    events = journeys(seed(unique), 1200)
    before, refused, after = events[:500], events[500:600], events[600:]
    for lo in range(0, len(before), 100):  # both producers connected, the partitions' leaders known
        assert http.post(f"{(url, stopping_url)[lo // 100 % 2]}/v1/events", json=before[lo:lo + 100],
                          timeout=30).status_code == 202

    stack.script("kafka.sh", "stop")
    try:
        r = http.post(f"{url}/v1/events", json=refused[:50], timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5" and "nothing was accepted" in r.json()["error"]
        # a request waiting for Kafka when its collector gets SIGTERM is answered before the collector exits
        answer: dict = {}
        pending = threading.Thread(target=lambda: answer.update(
            r=http.post(f"{stopping_url}/v1/events", json=refused[50:], timeout=60)))
        pending_failed = lambda: "r" in answer  # noqa: E731 - answered before the SIGTERM: the precondition failed
        pending.start()
        # the request is inside its 3 s wait for an acknowledgement (the collector says so)
        wait_for(lambda: waiting_for_kafka(stopping_url) >= 1 or pending_failed(), 30,
                 "the request to wait for Kafka in the collector", interval=0.01)
        assert not pending_failed(), answer
        assert stopping.stop(timeout=60) in CLEAN_EXITS, stopping.log_tail()
        assert shut_down_cleanly(stopping), stopping.log_tail()
        pending.join(60)
        assert answer["r"].status_code == 503 and answer["r"].headers["retry-after"] == "5"
    finally:
        stack.script("kafka.sh", "start")

    accepted = list(before)
    for lo in range(0, len(after), 100):  # a channel re-sending after Retry-After until 2xx
        chunk = after[lo:lo + 100]
        wait_for(lambda: http.post(f"{url}/v1/events", json=chunk, timeout=30).status_code == 202, 120,
                 "the collector to accept again", interval=1.0)
        accepted += chunk
    assert_equals_reference(platform.dsn, accepted, timeout=300, sealed_by=platform)
    # nothing of the refused requests was written, then or later
    refused_keys = {event_key(e["source"], e["id"]) for e in refused}
    on_log = keys_on_log(read_log(stack.kafka_bootstrap, starts, platform.topic(TOUCHPOINTS)))
    assert not refused_keys & set(on_log), f"{len(refused_keys & set(on_log))} refused events were written"
    assert applied(platform.dsn, sorted(refused_keys)) == 0
    assert {event_key(e["source"], e["id"]) for e in accepted} <= set(on_log)


def test_sigterm_drains_the_batch_in_flight_and_commits_before_exit(platform, unique):
    """A worker stopped with SIGTERM in the middle of a backlog finishes and commits the batch in
    flight, exits 0, and the next worker starts exactly where it committed: nothing redone."""
    stack = platform.stack
    starts = start_at_log_end(platform)
    events = journeys(seed(unique), 5000)
    publish(platform, events)  # a backlog, so the worker is always in the middle of a batch
    keys = sorted({event_key(e["source"], e["id"]) for e in events})
    drained: list[dict] = []
    # the injection is retried until its precondition held: the SIGTERM met a batch in flight
    for _attempt in range(10):
        before = applied(platform.dsn, keys)
        worker = platform.processor(CRM_BATCH_SIZE="500")
        wait_for(lambda: applied(platform.dsn, keys) > before, 120, "the worker to commit a batch")
        assert applied(platform.dsn, keys) < len(keys), "the backlog ran out; make it longer"
        wait_for(lambda: batches_in_flight(worker) > 0, 60, "a batch in flight", interval=0.005)
        assert worker.stop(timeout=120) == 0, worker.log_tail()
        lines = stopping_lines(worker)
        assert len(lines) == 2 and all(line["msg"] in ("stopping: batch in flight drained and committed",
                                                       "stopping: no batch in flight") for line in lines), lines
        drained = [line for line in lines if line["msg"] == "stopping: batch in flight drained and committed"]
        if drained:
            break
    assert drained, "no batch was in flight at any of ten SIGTERMs"

    # what was processed is what is stored: the drained batches' positions are the committed ones
    stored = stored_offsets(platform.dsn, platform.processor_id)
    for line in drained:
        assert line["records"] > 0
        for partition, position in line["positions"].items():
            assert stored[(line["topic"], int(partition))] == position, (line, stored)

    successor = platform.processor()
    assert_equals_reference(platform.dsn, events, timeout=300)
    positioned = [line for line in json_lines(successor.log_path)
                  if line.get("msg") == "partitions positioned from PostgreSQL"]
    for line in positioned:
        for partition, position in line["positions"].items():
            if position is not None:
                assert position == stored[(line["topic"], int(partition))], (line, stored)
    # each touchpoint went through the identity stage once: none was published twice downstream
    republished = keys_on_log(read_log(stack.kafka_bootstrap, starts, platform.topic(CUSTOMER_EVENTS)))
    assert set(keys) <= set(republished)
    assert collections.Counter(republished[k] for k in keys) == {1: len(keys)}


@restarts_infrastructure
@pytest.mark.chaos
@pytest.mark.timeout(900 + CHAOS_EVENTS // 15)
def test_chaos_every_fault_while_events_flow_and_the_read_model_equals_the_reference(platform, unique):
    faults = ["processor_kill9", "broker_restart", "collector_sigterm", "postgres_restart", "processor_sigterm",
              "collector_kill9"] * CHAOS_ROUNDS
    assert set(faults) == set(FAULTS)
    chaos = Chaos(platform, events=CHAOS_EVENTS, faults=faults, seed=seed(unique), workers=2, rate=CHAOS_RATE,
                  out=TEST_HOME / f"chaos-{CHAOS_EVENTS}.json")
    figures = chaos.run()
    assert figures["events"] == figures["sent"] == CHAOS_EVENTS
    assert_exact(figures)
    assert figures["accepted"] == CHAOS_EVENTS
    assert figures["faults"] == dict(collections.Counter(faults))
    assert figures["processor_sigterm_exits"] == [0] * CHAOS_ROUNDS
    assert len(figures["collector_sigterm_exits"]) == CHAOS_ROUNDS
    assert all(rc in CLEAN_EXITS for rc in figures["collector_sigterm_exits"]), figures["collector_sigterm_exits"]
