"""The Kafka producer of the collector and the API (kafka-python, acks=all), awaitable from asyncio.

``send_all`` resolves only when Kafka has acknowledged every record; any failure raises
``KafkaUnavailable`` so the route answers 503 and the sender retries. Retries are safe: records
keep their CloudEvents ``source`` + ``id``, and processing deduplicates on them.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from services.common.kafka_security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time; nothing was confirmed to the sender."""


class KafkaPublisher:
    def __init__(self, bootstrap: str, *, ack_timeout_s: float = 10.0, reconnect_every_s: float = 2.0,
                 client_id: str = "crm-ingest", security: KafkaSecurity = PLAINTEXT):
        self.client_id = client_id
        self.bootstrap = bootstrap
        self.security = security
        self.ack_timeout_s = ack_timeout_s
        self.reconnect_every_s = reconnect_every_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._last_attempt = 0.0
        self.last_error: str | None = None
        # what the broker last did for us (monotonic times): an acknowledgement or a failure
        self._last_ack: float | None = None
        self._last_failure: float | None = None
        self._probe = None  # a group-less consumer kept for health probes while nothing is sent
        self._probed: tuple[float, bool, str | None] | None = None
        self._probe_lock = threading.Lock()

    def _create(self) -> KafkaProducer:
        timeout_ms = int(self.ack_timeout_s * 1000)
        linger_ms = 2
        return KafkaProducer(
            bootstrap_servers=self.bootstrap.split(","),
            acks="all",
            linger_ms=linger_ms,
            batch_size=256 * 1024,
            max_request_size=2 * 1024 * 1024,
            retries=3,
            # Not idempotent: kafka-python 3.0's idempotent producer stops sending for good once it
            # resets its producer id (after a batch it had sent expires or runs out of retries, as
            # around a broker restart): every later request would be answered 503. A record written
            # twice by a retry is harmless: the processors deduplicate on source + id.
            enable_idempotence=False,
            max_block_ms=timeout_ms,
            # kafka-python waits 30 s for a first broker by default; a sender should hear 503 sooner
            bootstrap_timeout_ms=timeout_ms,
            # A record not acknowledged within the ack timeout is failed by the producer itself, so it
            # is never written after its request was answered 503 (the default keeps it queued for
            # 2 minutes and writes it when the broker is back: accepted after all, having said no).
            delivery_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms - linger_ms,
            max_in_flight_requests_per_connection=5,
            client_id=self.client_id,
            **self.security.kafka_python(),
        )

    def producer(self) -> KafkaProducer:
        """The connected producer; raises KafkaUnavailable while the broker cannot be reached."""
        if self._producer is not None:
            return self._producer
        with self._lock:
            if self._producer is None:
                now = time.monotonic()
                if now - self._last_attempt < self.reconnect_every_s and self.last_error:
                    raise KafkaUnavailable(self.last_error)
                self._last_attempt = now
                try:
                    self._producer = self._create()
                    self.last_error = None
                except (KafkaError, OSError) as exc:  # OSError: e.g. a TLS file that cannot be read
                    self._last_failure = time.monotonic()
                    self.last_error = (f"cannot connect to Kafka at {self.bootstrap} "
                                       f"({self.security.describe()}): {exc}")
                    raise KafkaUnavailable(self.last_error) from exc
        return self._producer

    HEALTH_FRESH_S = 5.0
    """An acknowledgement or failure younger than this answers ``health`` without asking the broker;
    a probe's answer is kept as long (health checks every few seconds cost the broker little)."""

    def health(self) -> tuple[bool, str | None]:
        """(reachable, why not): from the newest acknowledgement or failure when it is fresh, else
        from a metadata request to the cluster. (kafka-python's ``bootstrap_connected()`` is true
        only while bootstrapping, so it said "unavailable" while every send was acknowledged.)
        Blocking: call it from a thread."""
        now = time.monotonic()
        ack, failure = self._last_ack, self._last_failure
        newest = max((t for t in (ack, failure) if t is not None), default=None)
        if newest is not None and now - newest < self.HEALTH_FRESH_S:
            return (True, None) if newest == ack else (False, self.last_error)
        with self._probe_lock:
            if self._probed is not None and now - self._probed[0] < self.HEALTH_FRESH_S:
                return self._probed[1], self._probed[2]
            try:
                if self._probe is None:
                    from kafka import KafkaConsumer
                    timeout_ms = int(min(self.ack_timeout_s, 5.0) * 1000)
                    self._probe = KafkaConsumer(
                        bootstrap_servers=self.bootstrap.split(","), client_id=f"{self.client_id}-health",
                        enable_auto_commit=False, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                        **self.security.kafka_python())
                self._probe.topics()  # always a request to the cluster, never the cached metadata
                answer: tuple[bool, str | None] = (True, None)
            except Exception as exc:  # any failure is the answer, and the next probe starts afresh
                self._close_probe()
                answer = (False, f"Kafka at {self.bootstrap} did not answer a metadata request: {exc!r}")
            self._probed = (time.monotonic(), *answer)
            return answer

    def _close_probe(self) -> None:
        if self._probe is not None:
            try:
                self._probe.close()
            except Exception:  # closing a broken client
                pass
            self._probe = None

    async def send_all(self, records: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]) -> None:
        """Produce ``(topic, key, value, headers)`` records and wait for every acknowledgement."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        producer = await loop.run_in_executor(None, self.producer)
        waiting: list[asyncio.Future] = []

        def bridge(kafka_future) -> asyncio.Future:
            fut = loop.create_future()

            def ok(_meta) -> None:
                self._last_ack = time.monotonic()
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

            def failed(exc) -> None:
                self._last_failure, self.last_error = time.monotonic(), f"not acknowledged: {exc!r}"
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(KafkaUnavailable(repr(exc))))

            kafka_future.add_callback(ok)
            kafka_future.add_errback(failed)
            return fut

        def submit() -> None:
            for topic, key, value, headers in records:
                waiting.append(bridge(producer.send(topic, key=key, value=value, headers=headers)))

        try:
            await loop.run_in_executor(None, submit)
        except KafkaError as exc:  # e.g. metadata not available within max_block_ms
            for fut in waiting:
                fut.cancel()
            self._last_failure, self.last_error = time.monotonic(), repr(exc)
            raise KafkaUnavailable(repr(exc)) from exc
        try:
            await asyncio.wait_for(asyncio.gather(*waiting), timeout=self.ack_timeout_s + 1)
        except asyncio.TimeoutError as exc:
            self._last_failure, self.last_error = time.monotonic(), f"no acknowledgement within {self.ack_timeout_s}s"
            raise KafkaUnavailable(f"Kafka did not acknowledge within {self.ack_timeout_s}s") from exc

    def close(self) -> None:
        """Flush and close (the requests are answered by then; anything left unacknowledged was
        answered 503)."""
        with self._probe_lock:
            self._close_probe()
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except KafkaError as exc:  # the broker is unreachable: nothing left was confirmed to anyone
                log.warning("kafka producer closed without flushing", extra={"error": repr(exc)})
            self._producer = None
