"""The feed relay on the real broker and database: a crash at each step of a relay batch neither
loses nor repeats a record, and records keep their outbox order."""
from __future__ import annotations

import asyncio
import json

import orjson
import psycopg2
import psycopg2.extras

from services.common.kafka_admin import ensure_topics
from services.common.topics import CUSTOMER_CHANGES, NAMESPACE, in_namespace
from services.processors.feed_relay import FeedRelay
from tests.feed import outbox_empty, read_topic
from tests.processes import wait_for


def add_rows(dsn: str, topic: str, keys: list[str], n: int, start: int = 0) -> None:
    rows = [(topic, key, orjson.dumps({"n": i, "key": key}), '[["content-type", "application/json"]]')
            for i in range(start, start + n) for key in keys]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, "INSERT INTO feed_outbox (topic, key, value, headers) VALUES %s", rows,
                                       template="(%s, %s, %s, %s::jsonb)")


async def relay_once(relay: FeedRelay, *, crash_after: str | None) -> None:
    """One relay batch by hand, stopping where a crash would: after numbering ("numbered") or after
    the Kafka commit ("published"), before the rows are deleted."""
    await relay._db(relay._lead)
    relay._producer = __import__("aiokafka").AIOKafkaProducer(
        bootstrap_servers=relay.bootstrap, transactional_id=relay.name, enable_idempotence=True, acks="all")
    await relay._producer.start()
    batch, rows = await relay._db(relay._next_batch)
    if crash_after != "numbered":
        await relay._publish(batch, rows)
    if crash_after is None:
        await relay._db(relay._done, batch)
    await relay._stop_producer()
    await relay._db(relay._release)


def test_a_relay_crash_at_any_step_neither_loses_nor_repeats(stack, unique):
    dsn = stack.new_database()
    prefix = f"t{unique}."  # this test's own topics
    ensure_topics(stack.kafka_bootstrap, 4, specs=in_namespace(prefix))
    topic = prefix + CUSTOMER_CHANGES.removeprefix(NAMESPACE)
    keys = [f"relay-{unique}-{k}" for k in range(5)]
    name = f"crm-test-{unique}.feed-relay"

    async def scenario() -> None:
        add_rows(dsn, topic, keys, 4)
        await relay_once(FeedRelay(dsn, stack.kafka_bootstrap, name, batch_size=8), crash_after="published")
        await relay_once(FeedRelay(dsn, stack.kafka_bootstrap, name, batch_size=8), crash_after="numbered")
        add_rows(dsn, topic, keys, 4, start=4)
        relay = FeedRelay(dsn, stack.kafka_bootstrap, name, poll_s=0.02)
        task = asyncio.create_task(relay.run())
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: outbox_empty(dsn), 60, "the outbox to drain"))
        finally:
            await relay.stop()
            task.cancel()

    asyncio.run(scenario())
    records = read_topic(stack.kafka_bootstrap, topic, set(keys))
    by_key: dict[str, list[int]] = {}
    for r in records:
        by_key.setdefault(r.key.decode(), []).append(json.loads(r.value)["n"])
    # every record once, each key's records in outbox order
    assert by_key == {key: list(range(8)) for key in keys}
