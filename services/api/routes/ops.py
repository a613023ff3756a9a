"""Pipeline health for the operations dashboard: how much the collector accepted and the stages
processed, consumer lag per group and partition, the dead letters, how fresh each projection is, and
whether the broker and the database answer.

Positions come from where each consumer keeps them: the stages and the webhook dispatchers store
theirs in ``processor_offsets`` with the read model (the only positions that say what the
projections hold); any other consumer group (a downstream subscriber) from Kafka's committed
offsets. The answer is computed at most once per ``CACHE_S`` per API process, so a wall of
dashboards costs the broker one query every few seconds.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

import psycopg2
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from services.common.apikeys import INDICATORS_READ
from services.common.auth import require
from services.common.kafka_security import KafkaSecurity
from services.common.settings import Settings
from services.common.topics import CUSTOMER_EVENTS, DEADLETTER, TOPICS, TOUCHPOINTS

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"], dependencies=[Depends(require(INDICATORS_READ))])

CACHE_S = 2.0
RATE_WINDOW_S = 30.0


class Reachability(BaseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class PartitionLag(BaseModel):
    partition: int
    position: int | None = Field(description="next offset the consumer will read")
    end: int | None = Field(description="the partition's end offset (the next offset to be written)")
    lag: int | None
    last_record_at: datetime | None = Field(None, description="Kafka timestamp of the newest record applied")
    updated_at: datetime | None = Field(None, description="when the position was last committed")


class ConsumerLag(BaseModel):
    group: str
    topic: str
    stored_in: str = Field(description="'postgresql' (positions committed with the read model), 'kafka', or "
                                       "'outbox' (the feed relay: lag is the feed_outbox rows not yet published)")
    lag: int | None
    freshness_s: float | None = Field(None, description="age of the newest record applied (None: none yet); "
                                                           "the feed relay: of the oldest row waiting (0: none)")
    partitions: list[PartitionLag]


class Pipeline(BaseModel):
    at: datetime
    accepted_total: int | None = Field(description="events the collector accepted onto crm.touchpoints (all time)")
    processed_total: int = Field(description="touchpoints the identity stage committed (all time)")
    projected_total: int = Field(description="customer events the view stage committed (all time)")
    accepted_per_s: float | None = Field(description=f"over the last {RATE_WINDOW_S:.0f} s (None: too few samples yet)")
    processed_per_s: float | None
    projected_per_s: float | None
    deadletters_total: int | None = Field(description="records on crm.deadletter")
    freshness_s: float | None = Field(description="age of the newest event applied by the view stage")
    lag_total: int | None = Field(description="records written but not yet applied, all stages")
    consumers: list[ConsumerLag]
    kafka: Reachability
    database: Reachability


class _Kafka:
    """A kafka-python consumer (no group) and admin client kept between calls; dropped on error."""

    def __init__(self, bootstrap: str, security: KafkaSecurity):
        self.bootstrap, self.security = bootstrap, security
        self._consumer = self._admin = None

    def _clients(self):
        from kafka import KafkaConsumer
        from kafka.admin import KafkaAdminClient

        options = dict(bootstrap_servers=self.bootstrap, request_timeout_ms=5000, **self.security.kafka_python())
        if self._consumer is None:
            self._consumer = KafkaConsumer(client_id="crm-api-ops", enable_auto_commit=False, **options)
        if self._admin is None:
            self._admin = KafkaAdminClient(client_id="crm-api-ops-admin", **options)
        return self._consumer, self._admin

    def offsets(self, topics: list[str], skip_groups: set[str]) -> dict[str, Any]:
        """End and beginning offsets of the topics' partitions, and the committed offsets of the
        consumer groups not in ``skip_groups``."""
        from kafka import TopicPartition

        try:
            consumer, admin = self._clients()
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            ends = consumer.end_offsets(tps)
            begins = consumer.beginning_offsets(tps)
            wanted = []
            for group in admin.list_groups():  # kafka-python 3: dicts
                name, protocol = group["group_id"], group.get("protocol_type")
                if name not in skip_groups and protocol in (None, "", "consumer"):
                    wanted.append(name)
            committed = admin.list_group_offsets({name: None for name in wanted}) if wanted else {}
            groups = {name: {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
                      for name, offsets in committed.items()}
            return {"ends": ends, "begins": begins, "groups": groups}
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        for client in (self._consumer, self._admin):
            try:
                if client is not None:
                    client.close()
            except Exception:  # closing a broken client
                pass
        self._consumer = self._admin = None


class PipelineHealth:
    """Computes ``Pipeline`` (see the module); one per API process."""

    def __init__(self, settings: Settings, db):
        self.settings, self.db = settings, db
        self.relay = f"{settings.processor_id}.feed-relay"  # its group's name (services/processors/app.py)
        self.kafka = _Kafka(settings.kafka_bootstrap, KafkaSecurity.from_settings(settings))
        self._lock = threading.Lock()
        self._cached: tuple[float, Pipeline] | None = None
        self._samples: deque[tuple[float, int | None, int, int]] = deque(maxlen=120)

    def get(self) -> Pipeline:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < CACHE_S:
                return self._cached[1]
            answer = self._compute(now)
            self._cached = (now, answer)
            return answer

    def close(self) -> None:
        self.kafka.close()

    def _rate(self, now: float, index: int, current: int | None) -> float | None:
        old = [s for s in self._samples if now - s[0] <= RATE_WINDOW_S + CACHE_S and s[index] is not None]
        if current is None or not old or now - old[0][0] < 1.0:
            return None
        return max(current - old[0][index], 0) / (now - old[0][0])

    def _compute(self, now: float) -> Pipeline:
        rows, database, outbox = [], Reachability(ok=False), None
        started = time.perf_counter()
        try:
            with self.db.cursor() as cur:
                cur.execute("""SELECT consumer, topic, partition, next_offset, last_record_at, updated_at
                               FROM processor_offsets ORDER BY consumer, topic, partition""")
                rows = cur.fetchall()
                cur.execute("SELECT count(*), min(created_at) FROM feed_outbox")
                outbox = cur.fetchone()
            database = Reachability(ok=True, latency_ms=round(1000 * (time.perf_counter() - started), 1))
        except psycopg2.Error as exc:
            database = Reachability(ok=False, error=str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        stored_groups = {r[0] for r in rows}
        topics = sorted({t.name for t in TOPICS})
        started = time.perf_counter()
        try:
            # the relay commits a batch number, not a position, as its group's offset (feed_relay.py):
            # set against the topic's end it is no lag at all, so its row comes from the outbox instead
            offsets = self.kafka.offsets(topics, stored_groups | {self.relay})
            kafka = Reachability(ok=True, latency_ms=round(1000 * (time.perf_counter() - started), 1))
        except Exception as exc:
            log.warning("pipeline health: Kafka unavailable", extra={"error": repr(exc)})
            offsets = None
            kafka = Reachability(ok=False, error=f"{type(exc).__name__}: {exc}".strip())
        ends = {(tp.topic, tp.partition): end for tp, end in (offsets or {}).get("ends", {}).items()}
        begins = {(tp.topic, tp.partition): b for tp, b in (offsets or {}).get("begins", {}).items()}
        wall = datetime.now(timezone.utc)

        consumers: dict[tuple[str, str], list[PartitionLag]] = {}
        for consumer, topic, partition, position, last_at, updated in rows:
            end = ends.get((topic, partition))
            consumers.setdefault((consumer, topic), []).append(PartitionLag(
                partition=partition, position=position, end=end,
                lag=max(end - position, 0) if end is not None else None, last_record_at=last_at, updated_at=updated))
        for (group, topic), parts in consumers.items():  # partitions not read yet: from their beginning
            have = {p.partition for p in parts}
            parts += [PartitionLag(partition=n, position=None, end=end, lag=end - begins.get((t, n), 0))
                      for (t, n), end in sorted(ends.items()) if t == topic and n not in have]
            parts.sort(key=lambda p: p.partition)
        out = [self._group(g, t, "postgresql", parts, wall) for (g, t), parts in consumers.items()]
        for group, committed in sorted((offsets or {}).get("groups", {}).items()):
            by_topic: dict[str, list[PartitionLag]] = {}
            for tp, position in sorted(committed.items()):
                end = ends.get((tp.topic, tp.partition))
                by_topic.setdefault(tp.topic, []).append(PartitionLag(
                    partition=tp.partition, position=position, end=end,
                    lag=max(end - position, 0) if end is not None else None))
            out += [self._group(group, topic, "kafka", parts, wall) for topic, parts in by_topic.items()]

        if outbox is not None:
            waiting, oldest = outbox
            out.append(ConsumerLag(group=self.relay, topic="feed_outbox", stored_in="outbox", lag=waiting, partitions=[],
                                   freshness_s=round(max((wall - oldest).total_seconds(), 0.0), 3) if oldest else 0.0))

        def stored_total(topic: str) -> int:
            return sum(r[3] for r in rows if r[1] == topic and r[0] == self.settings.processor_id)

        accepted = sum(e for (t, _), e in ends.items() if t == TOUCHPOINTS) if offsets else None
        processed, projected = stored_total(TOUCHPOINTS), stored_total(CUSTOMER_EVENTS)
        deadletters = None
        if offsets:
            deadletters = sum(e - begins.get(k, 0) for k, e in ends.items() if k[0] == DEADLETTER)
        rates = (self._rate(now, 1, accepted), self._rate(now, 2, processed), self._rate(now, 3, projected))
        self._samples.append((now, accepted, processed, projected))
        view = [c for c in out if c.group == self.settings.processor_id and c.topic == CUSTOMER_EVENTS]
        lags = [c.lag for c in out if c.stored_in == "postgresql"]
        return Pipeline(at=wall, accepted_total=accepted, processed_total=processed, projected_total=projected,
                        accepted_per_s=rates[0], processed_per_s=rates[1], projected_per_s=rates[2],
                        deadletters_total=deadletters, freshness_s=view[0].freshness_s if view else None,
                        lag_total=sum(lags) if lags and None not in lags else None,
                        consumers=out, kafka=kafka, database=database)

    @staticmethod
    def _group(group: str, topic: str, stored_in: str, parts: list[PartitionLag], wall: datetime) -> ConsumerLag:
        lags = [p.lag for p in parts]
        newest = max((p.last_record_at for p in parts if p.last_record_at), default=None)
        return ConsumerLag(group=group, topic=topic, stored_in=stored_in, partitions=parts,
                           lag=sum(lags) if None not in lags else None,
                           freshness_s=round(max((wall - newest).total_seconds(), 0.0), 3) if newest else None)


@router.get("/v1/ops/pipeline", response_model=Pipeline)
def pipeline(request: Request) -> Pipeline:
    """Pipeline health: events accepted and processed (totals and per second), consumer lag per
    group and partition, dead letters, projection freshness, broker and database reachability."""
    return request.app.state.pipeline.get()
