"""Reading the customer feed back from Kafka and checking it against the stored customer state."""
from __future__ import annotations

import json

import orjson
import psycopg2
import psycopg2.extras
from kafka import KafkaConsumer, TopicPartition

from examples.downstream_consumer import CustomerMirror
from services.common.topics import CUSTOMER_CHANGES
from tests.processes import wait_for


def stored_states(dsn: str, cids: list[str] | None = None) -> dict[str, dict]:
    """customer id -> {live, version, snapshot} as stored (every customer when ``cids`` is None)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.register_default_jsonb(cur, loads=orjson.loads)
        cur.execute("SELECT customer_id, live, version, snapshot FROM customer_state"
                    + (" WHERE customer_id = ANY(%s)" if cids is not None else ""), (cids,) if cids is not None else ())
        return {cid: {"live": live, "version": version, "snapshot": snap} for cid, live, version, snap in cur.fetchall()}


def outbox_empty(dsn: str) -> bool:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM feed_outbox")
        return cur.fetchone()[0] == 0


def read_records(bootstrap: str, topics, keys: set[str] | None = None) -> list:
    """Every committed record of ``topics`` (with one of ``keys``, when given), in partition order.

    The one way the tests read Kafka: to the end offsets taken when the read starts, never "until
    the consumer is idle" (a slow fetch would end such a read early and a "nothing was written"
    check would then prove nothing). To wait for a record, poll this with ``wait_for``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out = []
    while any(consumer.position(tp) < end[tp] for tp in parts):
        for records in consumer.poll(timeout_ms=500).values():
            out += [r for r in records if keys is None or (r.key and r.key.decode("utf-8", "replace") in keys)]
    consumer.close()
    return out


def read_topic(bootstrap: str, topic: str, keys: set[str]) -> list:
    """Every committed record of ``topic`` with one of ``keys``, in partition order."""
    return read_records(bootstrap, [topic], keys)


def assert_feed_matches_state(platform, cids: set[str]) -> dict[str, int]:
    """The feed of these customers (their changes on Kafka, a mirror bootstrapped from the snapshot
    topic) says exactly what PostgreSQL holds: each change once, in order. Returns counts."""
    dsn, bootstrap = platform.dsn, platform.stack.kafka_bootstrap
    wait_for(lambda: outbox_empty(dsn), 60, "the feed outbox to drain")
    stored = stored_states(dsn, sorted(cids))
    mirror = CustomerMirror(bootstrap, platform.topic_prefix)
    try:
        mirror.bootstrap_from_snapshots()
        live = {c: s["snapshot"] for c, s in stored.items() if s["live"]}
        mirror.follow(until=lambda m: {c: m.customers[c] for c in cids if c in m.customers} == live, timeout_s=60)
        mirrored = {c: mirror.customers[c] for c in cids if c in mirror.customers}
    finally:
        mirror.close()
    assert mirrored == live, f"{sum(1 for c in live if mirrored.get(c) != live[c])} of {len(live)} customers differ"
    changes = [json.loads(r.value) for r in read_topic(bootstrap, platform.topic(CUSTOMER_CHANGES), set(stored))]
    ids = [c["id"] for c in changes]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} changes were published twice"
    last: dict[str, int] = {}
    for c in changes:
        assert c["sequence"] >= last.get(c["subject"], 0), f"{c['subject']}: change {c['id']} out of order"
        last[c["subject"]] = c["sequence"]
    assert last == {c: s["version"] for c, s in stored.items()}, "the last change of a customer is not its version"
    return {"customers": len(stored), "live": len(live), "changes": len(changes)}
