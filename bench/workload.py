"""The benchmark's workload: realistic touchpoints of simulated customers (``services.simulator``:
calls, emails, web sessions, orders, surveys, tickets, with identifiers written the many ways
people write them), sealed exactly as the collector seals them, written onto ``crm.touchpoints``.

Sealing runs the collector's own code (``events.envelope.validate`` then ``Vault.seal``) in this
process against the run's database, so the log the processors read is byte for byte what a
collector would have written, without paying for the HTTP hop a million times (the collector is
measured on its own by ``bench.ingest``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import psycopg2
from kafka import KafkaProducer

from events.envelope import validate
from services.common.topics import TOUCHPOINTS
from services.simulator.journeys import JourneyGenerator

from bench.common import progress_bar

START = datetime(2026, 10, 1, tzinfo=timezone.utc)
HEADERS = [("content-type", b"application/cloudevents+json")]


def events(n: int, seed: int = 8) -> Iterator[dict]:
    """The first ``n`` events of simulated customers, journey by journey in blocks of customers (each
    block in event-time order), as the simulator sends them."""
    gen = JourneyGenerator(seed=seed, start=START)
    sent = 0
    first = 0
    while sent < n:
        block = 2000
        for event in gen.stream(block, first_index=first):
            yield event
            sent += 1
            if sent >= n:
                return
        first += block


def sealed(dsn: str, master_key: str, n: int, *, seed: int = 8, chunk: int = 2000
           ) -> Iterator[tuple[list[tuple[bytes, bytes]], int]]:
    """The first ``n`` simulated touchpoints validated and sealed as the collector does it, a chunk
    at a time: yields (Kafka key and value of each sealed event, events refused by validation)."""
    from services.common.vault import Vault, load_master_key

    vault = Vault(load_master_key(master_key, None))
    conn = psycopg2.connect(dsn)
    received = datetime.now(timezone.utc)
    batch: list = []
    refused = 0
    try:
        for i, event in enumerate(events(n, seed), 1):
            try:
                batch.append(validate(event, received_at=received))
            except Exception:
                refused += 1
            if len(batch) >= chunk or (i == n and (batch or refused)):
                with conn, conn.cursor() as cur:
                    vault.subjects(cur, [x for tp in batch for x in tp.identifiers])  # one round trip
                    yield [vault.seal(cur, tp) for tp in batch], refused
                batch, refused = [], 0
    finally:
        conn.close()
        vault.close()


def load(bootstrap: str, dsn: str, n: int, master_key: str, *, seed: int = 8, chunk: int = 2000) -> dict:
    """Seals ``n`` simulated touchpoints and writes them to ``crm.touchpoints``; returns counts."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024,
                             client_id="crm-bench-load")
    written = refused = 0
    try:
        with progress_bar() as progress:
            task = progress.add_task("load the log (seal, write)", total=n, stats="")
            for records, bad in sealed(dsn, master_key, n, seed=seed, chunk=chunk):
                for key, value in records:
                    producer.send(TOUCHPOINTS, key=key, value=value, headers=HEADERS)
                written += len(records)
                refused += bad
                progress.update(task, advance=len(records) + bad, stats=f"{written:,} written")
            producer.flush(timeout=600)
    finally:
        producer.close()
    return {"written": written, "refused_by_validation": refused}
