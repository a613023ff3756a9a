"""The webhook dispatcher: consumes ``crm.customer-changes``, enqueues deliveries, sends them.

* The consumer (aiokafka, ``read_committed``, in the consumer group ``CRM_WEBHOOKS_ID``, so
  dispatchers share the partitions) feeds batches to the processors' ``BatchRunner`` with the enqueue stage: deliveries
  and consumed positions are committed in one PostgreSQL transaction. Kafka's committed offsets
  are never used: on every assignment the partitions are positioned from ``processor_offsets``;
  a partition without a stored position starts where the earliest enabled subscription became
  active (by record timestamp), or at its end when there is none.
* The sender (``sender.py``) leases due deliveries and posts them.
* ``/healthz`` and ``/metrics`` are served on ``CRM_WEBHOOKS_HOST:CRM_WEBHOOKS_PORT``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import asynccontextmanager
from typing import Any

import psycopg2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from projections.customer_state import load_rules
from services.common.vault import from_settings as vault_from_settings
from services.common.db import TransactionPool
from services.common.kafka_follow import follow
from services.common.kafka_security import KafkaSecurity
from services.common.settings import Settings, names
from services.common.topics import CUSTOMER_CHANGES
from services.processors.records import Output, Record
from services.processors.runner import BatchRunner, load_offsets
from services.webhooks import store
from services.webhooks.enqueue import EnqueueStage
from services.webhooks.filters import gates
from services.webhooks.sender import Sender

log = logging.getLogger(__name__)


class ChangeConsumer(ConsumerRebalanceListener):
    """Feeds the enqueue stage from ``crm.customer-changes``; reconnects with backoff."""

    def __init__(self, settings: Settings, pool: TransactionPool, sender: Sender):
        self.settings = settings
        self.kafka_security = KafkaSecurity.from_settings(settings)
        self.pool = pool
        self.sender = sender
        self.assigned: list[int] = []
        self.error: str | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # the segments that need consent, from the customer-state rules the processors use
        stage = EnqueueStage(gates(load_rules(settings.customer_state_rules or None)))
        self.runner = BatchRunner(stage, settings.pg_dsn, settings.webhooks_id, self._publish)

    async def _publish(self, outputs: list[Output]) -> None:
        """Dead letters, acknowledged by Kafka before the batch commits."""
        if not outputs:
            return
        if self._producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                        client_id=f"{self.settings.webhooks_id}-deadletters",
                                        **self.kafka_security.aiokafka())
            await producer.start()
            self._producer = producer
        await asyncio.gather(*[self._producer.send_and_wait(o.topic, o.value, key=o.key, headers=list(o.headers))
                               for o in outputs])

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _earliest_active(self) -> int | None:
        with self.pool.transaction() as cur:
            return store.earliest_active_ms(cur)

    async def on_partitions_revoked(self, revoked) -> None:
        self.assigned = []

    async def on_partitions_assigned(self, assigned) -> None:
        """Position every assigned partition from PostgreSQL (never from Kafka's commits)."""
        consumer, tps = self._consumer, sorted(assigned)
        delay = 0.5
        while True:
            try:
                stored = await self._in_thread(load_offsets, self.settings.pg_dsn, self.settings.webhooks_id,
                                               CUSTOMER_CHANGES)
                missing = [tp for tp in tps if tp.partition not in stored]
                starts: dict[TopicPartition, int] = {}
                if missing:
                    # the ends first: a subscription created after this look finds its changes past them
                    starts = dict(await consumer.end_offsets(missing))
                    since = await self._in_thread(self._earliest_active)
                    if since is not None:
                        found = await consumer.offsets_for_times({tp: since for tp in missing})
                        starts.update({tp: at.offset for tp, at in found.items() if at is not None})
                break
            except Exception as exc:  # PostgreSQL or Kafka unreachable: never start from a guess
                log.warning("cannot position the partitions, retrying", extra={
                    "error": f"{type(exc).__name__}: {exc}".strip(), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        positions = {tp.partition: stored.get(tp.partition, starts.get(tp)) for tp in tps}
        for tp in tps:
            consumer.seek(tp, positions[tp.partition])
        self.assigned = [tp.partition for tp in tps]
        log.info("partitions positioned from PostgreSQL", extra={"topic": CUSTOMER_CHANGES, "positions": positions,
                                                                 "stored": sorted(stored)})

    async def run(self) -> None:
        def make() -> AIOKafkaConsumer:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap, group_id=self.settings.webhooks_id,
                client_id=self.settings.webhooks_id, enable_auto_commit=False, auto_offset_reset="earliest",
                isolation_level="read_committed",  # the feed relay publishes in Kafka transactions
                max_poll_records=self.settings.batch_size, fetch_max_wait_ms=100,
                # a crashed dispatcher's partitions move to the others within seconds
                session_timeout_ms=10000, heartbeat_interval_ms=2000, **self.kafka_security.aiokafka())
            return self._consumer

        async def start(consumer: AIOKafkaConsumer) -> None:
            consumer.subscribe([CUSTOMER_CHANGES], listener=self)
            await consumer.start()
            self.error = None

        async def handle(batches: dict) -> None:
            records = [Record(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp)
                       for messages in batches.values() for m in messages]
            if records:
                await self.runner.run(records)
                self.sender.wake()

        def lost(error: str, retry_in_s: float) -> None:
            self.error = error
            self.assigned = []
            log.warning("change consumer failed, reconnecting", extra={"error": error, "retry_in_s": retry_in_s})

        await follow(make, start, handle, lost, max_records=self.settings.batch_size)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        await self._in_thread(self.runner.close)


def create_app(settings: Settings) -> FastAPI:
    """The dispatcher process: consumer and sender run beside its /healthz and /metrics."""
    dispatcher = f"{socket.gethostname()}:{os.getpid()}"
    pool = TransactionPool(settings.pg_dsn, maxconn=4, application_name="crm-webhooks")
    vault = vault_from_settings(settings)  # refuses to start without a master key

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        vault.listen(settings.pg_dsn)
        sender = Sender(pool, dispatcher=dispatcher, schedule=settings.webhooks_retry_schedule_s,
                        jitter=settings.webhooks_retry_jitter, timeout_s=settings.webhooks_timeout_s,
                        lease_s=settings.webhooks_lease_s, concurrency=settings.webhooks_concurrency,
                        per_subscription=settings.webhooks_per_subscription, poll_s=settings.webhooks_poll_s,
                        vault=vault, allowed_hosts=names(settings.webhooks_allowed_hosts))
        consumer = ChangeConsumer(settings, pool, sender)
        app.state.sender, app.state.consumer = sender, consumer
        tasks = [asyncio.create_task(consumer.run(), name="webhooks-consumer"),
                 asyncio.create_task(sender.run(), name="webhooks-sender")]
        log.info("webhook dispatcher started", extra={"dispatcher": dispatcher, "group": settings.webhooks_id})
        yield
        tasks[0].cancel()
        await sender.stop(grace_s=settings.webhooks_timeout_s + 1)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.close()
        pool.close()

    app = FastAPI(title="CRM webhook dispatcher", lifespan=lifespan, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        def ping() -> str:
            try:
                with pool.transaction() as cur:
                    cur.execute("SELECT 1")
                return "ok"
            except psycopg2.Error as exc:
                return f"unavailable: {exc}".strip()

        consumer: ChangeConsumer = app.state.consumer
        return {"status": "ok", "service": "crm-webhooks", "dispatcher": dispatcher,
                "database": await asyncio.get_running_loop().run_in_executor(None, ping),
                "consumer": {"partitions": consumer.assigned, "error": consumer.error},
                "in_flight": len(app.state.sender.in_flight)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
