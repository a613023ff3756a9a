"""Runs one stage over batches with exactly-once effects on PostgreSQL (README: Guarantees and how they are kept).

For every batch, in one PostgreSQL transaction:
  1. lock this consumer's offset rows for the batch's partitions and drop records below them
     (redeliveries after a crash or rebalance);
  2. let the stage write its read-model changes and say what to publish;
  3. store the next offsets;
then publish the outputs and wait for Kafka's acknowledgement, and only then commit. A crash
before the commit re-runs the batch: the read model is unchanged, and whatever was published
again carries the same event ids, which the next stage deduplicates.

Transient failures (PostgreSQL or Kafka unavailable, deadlocks) retry the same batch with
backoff. Any other failure splits the batch and retries record by record, so one poison record
goes to the dead-letter topic and never blocks its partition.

A worker that stops (SIGTERM) drains: the batch in flight runs to its commit (``run_drainable``
shields it from the agent's cancellation, ``drain`` waits for it) and no new batch starts, so the
next owner of the partitions starts exactly where this one committed, with nothing to redo.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Protocol

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extras
from prometheus_client import Counter, Gauge, Histogram

from services.common.db import connect
from services.processors.records import Output, Record, deadletter

log = logging.getLogger(__name__)

RECORDS = Counter("crm_processor_records_total", "records consumed and committed", ["stage"])
OUTPUTS = Counter("crm_processor_outputs_total", "records published", ["stage", "topic"])
DEADLETTERS = Counter("crm_processor_deadletters_total", "records sent to the dead-letter topic", ["stage"])
RETRIES = Counter("crm_processor_retries_total", "batch retries after transient failures", ["stage"])
BATCH_SECONDS = Histogram("crm_processor_batch_seconds", "time to process and commit one batch", ["stage"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PHASE_SECONDS = Counter("crm_processor_phase_seconds_total",
                        "time spent per phase of the batches: prepare (read model, in PostgreSQL), "
                        "publish (until Kafka acknowledged), commit (PostgreSQL)", ["stage", "phase"])
LAST_COMMIT = Gauge("crm_processor_last_commit_timestamp", "unix time of the last committed batch", ["stage"])
IN_FLIGHT = Gauge("crm_processor_batches_in_flight", "batches taken and not yet committed", ["stage"])

TRANSIENT_DB = (psycopg2.OperationalError, psycopg2.InterfaceError,
                psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)


class Stage(Protocol):
    name: str
    topic: str

    def prepare(self, cur, records: list[Record]) -> list[Output]: ...


class TransientError(Exception):
    """The batch may succeed if retried as it is."""


Publisher = Callable[[list[Output]], Awaitable[None]]


def load_offsets(dsn: str, consumer: str, topic: str) -> dict[int, int]:
    """The next offset to read per partition, as committed with the read model."""
    conn = connect(dsn, application_name=f"{consumer}-offsets")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT partition, next_offset FROM processor_offsets WHERE consumer = %s AND topic = %s",
                        (consumer, topic))
            return dict(cur.fetchall())
    finally:
        conn.close()


class BatchRunner:
    """Applies batches of one topic's records through a stage; see the module docstring."""

    def __init__(self, stage: Stage, dsn: str, consumer: str, publish: Publisher, *,
                 max_backoff_s: float = 5.0):
        self.stage = stage
        self.dsn = dsn
        self.consumer = consumer
        self.publish = publish
        self.max_backoff_s = max_backoff_s
        self._conn = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pg-{stage.name}")
        self._in_flight: asyncio.Task | None = None
        self._in_flight_records: list[Record] = []
        self._draining = False

    # -- PostgreSQL work, always on the runner's one thread ------------------------------------
    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, application_name=f"{self.consumer}-{self.stage.name}")
            psycopg2.extras.register_default_jsonb(self._conn, loads=orjson.loads)
        return self._conn

    def _prepare(self, records: list[Record], replacement: list[Output] | None = None) -> list[Output]:
        conn = self._connection()
        cur = conn.cursor()
        partitions = sorted({r.partition for r in records})
        topic = self.stage.topic
        psycopg2.extras.execute_values(cur, """
            INSERT INTO processor_offsets (consumer, topic, partition, next_offset) VALUES %s
            ON CONFLICT DO NOTHING""", [(self.consumer, topic, p, 0) for p in partitions])
        cur.execute("""SELECT partition, next_offset FROM processor_offsets
                       WHERE consumer = %s AND topic = %s AND partition = ANY(%s)
                       ORDER BY partition FOR UPDATE""", (self.consumer, topic, partitions))
        committed = dict(cur.fetchall())
        fresh = [r for r in records if r.offset >= committed[r.partition]]
        if not fresh:
            outputs: list[Output] = []
        elif replacement is not None:  # a dead-lettered record: only its offset moves on
            outputs = replacement
        else:
            outputs = self.stage.prepare(cur, fresh)
        nexts: dict[int, int] = {}
        newest: dict[int, int] = {}  # partition -> Kafka timestamp (ms) of the newest record applied
        for r in fresh:
            nexts[r.partition] = max(nexts.get(r.partition, 0), r.offset + 1)
            if r.timestamp_ms:
                newest[r.partition] = max(newest.get(r.partition, 0), r.timestamp_ms)
        if nexts:
            psycopg2.extras.execute_values(cur, """
                UPDATE processor_offsets o SET next_offset = v.next_offset, updated_at = now(),
                    last_record_at = greatest(o.last_record_at, to_timestamp(v.newest_ms / 1000.0))
                FROM (VALUES %s) AS v(consumer, topic, partition, next_offset, newest_ms)
                WHERE o.consumer = v.consumer AND o.topic = v.topic AND o.partition = v.partition""",
                [(self.consumer, topic, p, n, newest.get(p)) for p, n in sorted(nexts.items())],
                template="(%s, %s, %s, %s, %s::bigint)")
        return outputs

    def _commit(self) -> None:
        self._conn.commit()

    def _rollback(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except psycopg2.Error:
                self._conn.close()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- one attempt, retries, poison isolation -----------------------------------------------
    async def _attempt(self, records: list[Record], replacement: list[Output] | None = None) -> int:
        phase = self._phase_clock()
        try:
            outputs = await self._in_thread(self._prepare, records, replacement)
        except TRANSIENT_DB as exc:
            await self._in_thread(self._drop_connection)
            raise TransientError(f"PostgreSQL: {exc}".strip()) from exc
        except Exception:
            await self._in_thread(self._rollback)
            raise
        phase("prepare")
        try:
            await self.publish(outputs)
        except Exception as exc:
            await self._in_thread(self._rollback)
            raise TransientError(f"Kafka publish failed: {exc!r}") from exc
        phase("publish")
        try:
            await self._in_thread(self._commit)
        except TRANSIENT_DB as exc:
            await self._in_thread(self._drop_connection)
            raise TransientError(f"PostgreSQL commit: {exc}") from exc
        phase("commit")
        for out in outputs:
            OUTPUTS.labels(self.stage.name, out.topic).inc()
            if out.topic.endswith("deadletter"):
                DEADLETTERS.labels(self.stage.name).inc()
        return len(outputs)

    def _phase_clock(self) -> Callable[[str], None]:
        """Adds the time since the last call to the named phase's counter."""
        last = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal last
            now = time.perf_counter()
            PHASE_SECONDS.labels(self.stage.name, name).inc(now - last)
            last = now
        return phase

    async def run_drainable(self, records: list[Record]) -> None:
        """``run``, as a task of its own that the caller's cancellation does not interrupt: a worker
        that stops lets the batch commit (see ``drain``). Once draining, a new batch is not started;
        this waits to be cancelled and its records go to the next owner of the partitions."""
        if self._draining:
            await asyncio.Event().wait()
        self._in_flight = asyncio.ensure_future(self.run(records))
        self._in_flight_records = records
        IN_FLIGHT.labels(self.stage.name).inc()
        self._in_flight.add_done_callback(lambda _: IN_FLIGHT.labels(self.stage.name).dec())
        await asyncio.shield(self._in_flight)

    async def drain(self, timeout_s: float) -> bool:
        """Start no new batch and wait, at most ``timeout_s``, for the one in flight to commit.
        Returns False when it had to be abandoned (still retrying, say with PostgreSQL down): it is
        cancelled, its transaction rolls back and the next worker redoes it."""
        self._draining = True
        batch, records = self._in_flight, self._in_flight_records
        if batch is None or batch.done():
            log.info("stopping: no batch in flight", extra={"stage": self.stage.name})
            return True
        positions: dict[int, int] = {}
        for r in records:
            positions[r.partition] = max(positions.get(r.partition, 0), r.offset + 1)
        try:
            await asyncio.wait_for(asyncio.shield(batch), timeout_s)
        except asyncio.TimeoutError:
            batch.cancel()
            log.warning("stopping: batch in flight abandoned; the next worker redoes it", extra={
                "stage": self.stage.name, "records": len(records), "timeout_s": timeout_s})
            return False
        except Exception as exc:  # the batch failed for good; nothing of it committed
            log.warning("stopping: batch in flight failed", extra={"stage": self.stage.name, "error": repr(exc)})
            return False
        log.info("stopping: batch in flight drained and committed", extra={
            "stage": self.stage.name, "topic": self.stage.topic, "records": len(records), "positions": positions})
        return True

    async def run(self, records: list[Record], replacement: list[Output] | None = None) -> None:
        """Apply one batch; returns when it is committed (retrying as long as it takes)."""
        if not records:
            return
        started = time.perf_counter()
        backoff = 0.1
        while True:
            try:
                await self._attempt(records, replacement)
                break
            except TransientError as exc:
                RETRIES.labels(self.stage.name).inc()
                log.warning("batch failed, retrying", extra={"stage": self.stage.name, "error": str(exc),
                                                             "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:
                if replacement is not None:
                    raise
                if len(records) > 1:
                    log.warning("batch failed, isolating the bad record", extra={
                        "stage": self.stage.name, "error": repr(exc), "records": len(records)})
                    for record in records:
                        await self.run([record])
                    return
                await self._deadletter(records[0], exc)
                break
        RECORDS.labels(self.stage.name).inc(len(records))
        BATCH_SECONDS.labels(self.stage.name).observe(time.perf_counter() - started)
        LAST_COMMIT.labels(self.stage.name).set(time.time())

    async def _deadletter(self, record: Record, exc: Exception) -> None:
        log.error("record dead-lettered", extra={"stage": self.stage.name, "topic": record.topic,
                                                 "partition": record.partition, "offset": record.offset,
                                                 "error": repr(exc)})
        dead = deadletter(record, stage=self.stage.name, kind="processing_error", reason=f"{type(exc).__name__}: {exc}")
        await self.run([record], replacement=[dead])

    def close(self) -> None:
        self._executor.submit(self._drop_connection).result()
        self._executor.shutdown(wait=True)

