"""The feed relay: publishes the feed outbox to crm.customer-changes and crm.customer-state, each
row exactly once, in outbox order (which is each customer's order).

Why an outbox: the state and its changes are decided in the view stage's PostgreSQL transaction;
publishing from there could publish a change and then lose the transaction (or commit it and
crash before publishing). The outbox rows commit with the read model; this relay moves them.

Exactly once, with a Kafka transaction per relay batch:
  1. PostgreSQL: number the batch (``feed_outbox.batch = b``) and commit, so the rows in flight are known;
  2. Kafka: in one transaction, produce the rows and commit the offset ``b`` of the relay's
     consumer group (``send_offsets_to_transaction``): Kafka itself records which batch made it;
  3. PostgreSQL: delete the batch's rows.
A relay that starts (or takes over) first reads the group's committed offset: numbered rows of a
batch at or below it were published (delete them), others were not (publish them again, before
anything newer). The transactional id fences a relay that lost its leadership but still runs, and
consumers reading with ``isolation.level=read_committed`` never see an aborted attempt.

One relay runs per database at a time (a PostgreSQL session advisory lock); any processor worker
running the view stage may take over when it goes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import psycopg2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge

from services.common.db import connect, lock_id
from services.common.kafka_security import PLAINTEXT, KafkaSecurity
from services.common.topics import CUSTOMER_CHANGES

log = logging.getLogger(__name__)

RELAYED = Counter("crm_feed_relayed_total", "feed records published by the relay", ["topic"])
BACKLOG = Gauge("crm_feed_outbox_backlog", "feed outbox rows waiting at the last relay poll")
LEADER = Gauge("crm_feed_relay_leader", "1 while this process is the feed relay")

POSITION = TopicPartition(CUSTOMER_CHANGES, 0)
"""Where the relay's consumer group keeps its committed batch number (an offset used as a counter)."""


class FeedRelay:
    def __init__(self, dsn: str, bootstrap: str, name: str, *, batch_size: int = 1000, poll_s: float = 0.05,
                 security: KafkaSecurity = PLAINTEXT):
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.security = security
        self.name = name  # transactional id and consumer group of this deployment's relay
        self.batch_size = batch_size
        self.poll_s = poll_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feed-relay")
        self._conn = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = False
        self._wake = asyncio.Event()  # set by stop(): ends the loop's pauses at once
        self._loop_done: asyncio.Event | None = None  # set when run() has returned

    # -- PostgreSQL, on the relay's own thread ------------------------------------------------------
    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _lead(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, application_name="crm-feed-relay", autocommit=True)
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_id("feed-relay"),))
            return cur.fetchone()[0]

    def _release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.close()  # ends the session: the advisory lock goes with it
            except psycopg2.Error:
                pass
        self._conn = None

    def _settle(self, committed: int) -> list[tuple]:
        """After (re)starting: forget batches Kafka has; return the rows of the one it has not."""
        with self._conn.cursor() as cur:
            cur.execute("DELETE FROM feed_outbox WHERE batch <= %s", (committed,))
            cur.execute("SELECT seq, batch, topic, key, value, headers FROM feed_outbox WHERE batch IS NOT NULL "
                        "ORDER BY seq")
            return cur.fetchall()

    def _next_batch(self) -> tuple[int, list[tuple]] | None:
        with self._conn.cursor() as cur:
            cur.execute("SELECT seq, topic, key, value, headers FROM feed_outbox WHERE batch IS NULL "
                        "ORDER BY seq LIMIT %s", (self.batch_size,))
            rows = cur.fetchall()
            BACKLOG.set(len(rows))
            if not rows:
                return None
            cur.execute("SELECT nextval('feed_relay_batch')")
            batch = cur.fetchone()[0]
            cur.execute("UPDATE feed_outbox SET batch = %s WHERE seq = ANY(%s)", (batch, [r[0] for r in rows]))
            return batch, [(seq, batch, t, k, v, h) for seq, t, k, v, h in rows]

    def _done(self, batch: int) -> None:
        with self._conn.cursor() as cur:
            cur.execute("DELETE FROM feed_outbox WHERE batch = %s", (batch,))

    # -- Kafka --------------------------------------------------------------------------------------
    async def _committed_batch(self) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.name,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    **self.security.aiokafka())
        await consumer.start()
        try:
            committed = await consumer.committed(POSITION)
        finally:
            await consumer.stop()
        return committed or 0

    async def _publish(self, batch: int, rows: list[tuple]) -> None:
        producer = self._producer
        await producer.begin_transaction()
        try:
            futures = []
            for _seq, _batch, topic, key, value, headers in rows:
                futures.append(await producer.send(
                    topic, value=bytes(value) if value is not None else None, key=key.encode(),
                    headers=[(n, v.encode()) for n, v in (headers if isinstance(headers, list) else orjson.loads(headers))]))
            await producer.send_offsets_to_transaction({POSITION: OffsetAndMetadata(batch, "")}, self.name)
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        except ProducerFenced:
            raise
        except BaseException:
            try:
                await producer.abort_transaction()
            except Exception:  # the producer is unusable; the caller starts a new one
                pass
            raise
        for row in rows:
            RELAYED.labels(row[2]).inc()

    # -- the loop -----------------------------------------------------------------------------------
    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def run(self) -> None:
        """Relay until ``stop``: lead when nobody else does."""
        self._loop_done = asyncio.Event()
        try:
            await self._run()
        finally:
            self._loop_done.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if not await self._db(self._lead):  # another relay leads; keep the session, try again
                    await self._pause(2.0)
                    continue
            except psycopg2.Error as exc:
                log.warning("feed relay cannot reach PostgreSQL", extra={"relay": self.name, "error": str(exc).strip()})
                await self._db(self._release)
                await self._pause(2.0)
                continue
            try:
                LEADER.set(1)
                log.info("feed relay leading", extra={"relay": self.name})
                await self._relay()
            except asyncio.CancelledError:
                raise
            except (psycopg2.Error, KafkaError, OSError) as exc:
                log.warning("feed relay interrupted, restarting", extra={"relay": self.name, "error": repr(exc)})
                await self._pause(1.0)
            except Exception:  # a bug must not stop the feed for good; the rows wait in the outbox
                log.exception("feed relay failed, restarting", extra={"relay": self.name})
                await self._pause(5.0)
            finally:
                LEADER.set(0)
                await self._stop_producer()
                await self._db(self._release)

    async def _relay(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, transactional_id=self.name,
                                          enable_idempotence=True, acks="all", linger_ms=1,
                                          **self.security.aiokafka())
        await self._producer.start()  # fences any earlier relay of this name and aborts what it left open
        committed = await self._committed_batch()
        pending = await self._db(self._settle, committed)
        if pending:
            log.info("feed relay re-sending an unconfirmed batch", extra={"rows": len(pending)})
            for batch in sorted({r[1] for r in pending}):
                rows = [r for r in pending if r[1] == batch]
                await self._publish(batch, rows)
                await self._db(self._done, batch)
        while not self._stopping:
            found = await self._db(self._next_batch)
            if found is None:
                await asyncio.sleep(self.poll_s)
                continue
            batch, rows = found
            started = time.perf_counter()
            await self._publish(batch, rows)
            await self._db(self._done, batch)
            log.debug("feed batch relayed", extra={"batch": batch, "rows": len(rows),
                                                   "ms": round((time.perf_counter() - started) * 1000, 1)})

    async def _stop_producer(self) -> None:
        if self._producer is not None:
            try:
                await self._producer.stop()
            except Exception:
                pass
            self._producer = None

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Let the batch in flight finish (published, then deleted from the outbox) and stop. Stopping
        its producer under it would be safe (the next relay settles the batch) but not clean."""
        self._stopping = True
        self._wake.set()
        if self._loop_done is not None:
            try:
                await asyncio.wait_for(self._loop_done.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.warning("feed relay did not finish its batch in time; the next relay settles it",
                            extra={"relay": self.name, "timeout_s": timeout_s})
        await self._stop_producer()
        await self._db(self._release)
        self._executor.shutdown(wait=False)
