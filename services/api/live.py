"""The API's live feed: one Kafka consumer of ``crm.indicators`` per API process, fanned out to
every open Server-Sent Events stream.

The consumer belongs to no consumer group and starts at the end of the topic: a stream shows
what happens from the moment it is opened, after a snapshot read from PostgreSQL. Each stream has
a bounded queue; a client too slow to keep up loses its oldest updates (counted), never the
process's memory. When Kafka is unreachable the hub retries with backoff and the API keeps
answering everything else.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter, Gauge

from services.common.kafka_follow import follow
from services.common.kafka_security import PLAINTEXT, KafkaSecurity
from services.common.topics import INDICATORS

log = logging.getLogger(__name__)

STREAMS = Gauge("crm_api_live_streams", "open live streams")
DELIVERED = Counter("crm_api_live_messages_total", "live messages handed to streams")
DROPPED = Counter("crm_api_live_dropped_total", "live messages dropped for streams too slow to keep up")


class Hub:
    def __init__(self, bootstrap: str, *, queue_size: int = 2000, security: KafkaSecurity = PLAINTEXT):
        self.bootstrap = bootstrap
        self.security = security
        self.queue_size = queue_size
        self.subscribers: set[asyncio.Queue] = set()
        self.ready = asyncio.Event()
        self.error: str | None = None
        self._task: asyncio.Task | None = None

    async def start(self, wait_s: float = 10.0) -> None:
        """Start following the topic; waits (up to ``wait_s``) until positioned at its end."""
        self._task = asyncio.create_task(self._run(), name="crm-live-hub")
        try:
            await asyncio.wait_for(self.ready.wait(), wait_s)
        except asyncio.TimeoutError:
            log.warning("live hub not connected yet; retrying in the background", extra={"error": self.error})

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self.subscribers.add(queue)
        STREAMS.inc()
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        if queue in self.subscribers:
            self.subscribers.discard(queue)
            STREAMS.dec()

    def publish(self, message: dict[str, Any]) -> None:
        for queue in self.subscribers:
            if queue.full():
                queue.get_nowait()
                DROPPED.inc()
            queue.put_nowait(message)
            DELIVERED.inc()

    async def _run(self) -> None:
        def make() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(INDICATORS, bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=100,
                                    client_id="crm-api-live", **self.security.aiokafka())

        async def start(consumer: AIOKafkaConsumer) -> None:
            await consumer.start()
            await consumer.seek_to_end()
            for tp in consumer.assignment():
                await consumer.position(tp)  # fix the start now, before the API answers
            self.error = None
            self.ready.set()
            log.info("live hub following the indicator topic", extra={"topic": INDICATORS})

        async def handle(batches: dict) -> None:
            for records in batches.values():
                for record in records:
                    try:
                        self.publish(orjson.loads(record.value))
                    except orjson.JSONDecodeError:
                        log.warning("undecodable indicator update skipped", extra={"offset": record.offset})

        def lost(error: str, retry_in_s: float) -> None:
            self.error = error
            self.ready.clear()
            log.warning("live hub lost Kafka, retrying", extra={"error": error, "retry_in_s": retry_in_s})

        await follow(make, start, handle, lost)
