"""The faust application: agents that feed batches from Kafka to the stage runners.

faust supplies the consumer group, batching (``take_events``) and the producer. It is *not*
trusted with positions: its offset tracker can commit past in-flight messages and duplicate on
rebalance (faust-streaming issues 606, 316, 517, 323). After faust seeks a newly assigned
partition to its committed offset, we seek it again to the offset stored in PostgreSQL with the
read model (or to its start when none is stored), so processing always resumes exactly where the
last committed transaction ended.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Iterable

import faust
import psycopg2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.vault import from_settings as vault_from_settings
from services.common.kafka_security import KafkaSecurity
from services.common.settings import Settings
from projections import alerts
from projections.business_hours import Calendar
from services.processors.identity_stage import IdentityStage
from services.processors.indicator_stage import IndicatorProjection
from services.processors.records import Output, Record
from services.processors.runner import BatchRunner, load_offsets
from services.processors.view_stage import ViewStage
from services.processors.feed_relay import FeedRelay
from services.processors.state_stage import StateProjection, StateTicker
from projections.customer_state import load_rules

log = logging.getLogger(__name__)

STAGES = {"identity": IdentityStage, "view": ViewStage}

DRAIN_TIMEOUT_S = 20.0
"""How long a stopping worker waits for its batches in flight to commit (within Kubernetes' default
30 s grace period); a batch still retrying then (PostgreSQL down) is rolled back and redone by the next worker."""


class PositionedApp(faust.App):
    """A faust App whose stream positions come from PostgreSQL."""

    stored_positions: dict  # topic -> loader of {partition: next offset}
    runners: list  # BatchRunner of each stage, closed on stop

    async def on_stop(self) -> None:
        # Drain first (SIGTERM): each batch in flight commits while the producer and the PostgreSQL
        # session it needs are still there; faust would cancel the agents mid-batch after this.
        runners = getattr(self, "runners", ())
        await asyncio.gather(*(runner.drain(DRAIN_TIMEOUT_S) for runner in runners))
        ticker = getattr(self, "ticker", None)
        if ticker is not None:
            ticker.stop()
        relay = getattr(self, "relay", None)
        if relay is not None:
            await relay.stop()
        await super().on_stop()
        for runner in runners:
            runner.close()

    def _new_consumer(self):
        consumer = super()._new_consumer()
        faust_seek = consumer.perform_seek

        async def perform_seek() -> None:
            await faust_seek()
            await self._seek_to_stored(consumer)

        consumer.perform_seek = perform_seek
        return consumer

    async def _seek_to_stored(self, consumer) -> None:
        assigned = consumer.assignment()
        for topic, loader in self.stored_positions.items():
            tps = [tp for tp in assigned if tp.topic == topic]
            if not tps:
                continue
            stored = await self._load_positions(topic, loader)
            for tp in tps:
                # no stored position: nothing of this partition was ever applied, so it is read from
                # its start. Never faust's committed offset: a worker that took a batch and lost the
                # partition in a rebalance before committing to PostgreSQL may have had faust commit
                # past it, and the batch would be skipped by the next owner
                await consumer.seek(tp, stored.get(tp.partition, 0))
            log.info("partitions positioned from PostgreSQL", extra={
                "topic": topic, "positions": {tp.partition: stored.get(tp.partition) for tp in sorted(tps)}})


    async def _load_positions(self, topic: str, loader) -> dict[int, int]:
        """The stored positions; waits (with backoff) while PostgreSQL is unreachable rather than
        resuming from positions it cannot confirm."""
        delay = 0.5
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(None, loader)
            except psycopg2.OperationalError as exc:
                log.warning("cannot read stored positions, retrying", extra={
                    "topic": topic, "error": str(exc).strip(), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def build_app(settings: Settings, stages: Iterable[str] = ("identity", "view")) -> PositionedApp:
    """Wire the faust app, its topics and one batching agent per stage."""
    datadir = Path(settings.home) / "faust" / settings.processor_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    kafka_security = KafkaSecurity.from_settings(settings)
    app = PositionedApp(
        settings.processor_id,
        **kafka_security.faust(settings.kafka_bootstrap),  # broker URL and credentials (TLS, SASL)
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
        producer_linger_ms=1,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=settings.processor_web_port,
        web_in_thread=False,
        broker_max_poll_records=settings.batch_size,
        # a crashed worker's partitions move to the others within seconds, not faust's default minute
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    app.stored_positions = {}
    runners: list[BatchRunner] = []

    async def publish(outputs: list[Output]) -> None:
        producer = app.producer
        futures = [await producer.send(o.topic, o.key, o.value, None,
                                       o.timestamp_ms / 1000 if o.timestamp_ms else None, list(o.headers))
                   for o in outputs]
        if futures:
            await asyncio.gather(*futures)

    vault = vault_from_settings(settings)  # refuses to start without a master key
    vault.listen(settings.pg_dsn)
    for name in stages:
        if name == "identity":
            stage = IdentityStage(settings.default_region, settings.identity_limits, vault=vault,
                                  blocked=settings.blocked)
        else:
            state = StateProjection(load_rules(settings.customer_state_rules or None))
            stage = ViewStage(IndicatorProjection(Calendar.from_config(settings.business_hours),
                                                  settings.indicator_max_lateness_s,
                                                  alerts.rules(settings.indicator_alerts)), state, vault)
            _add_state_tasks(app, state, settings, kafka_security)
        runner = BatchRunner(stage, settings.pg_dsn, settings.processor_id, publish)
        runners.append(runner)
        topic = app.topic(stage.topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw", internal=False)
        app.stored_positions[stage.topic] = (
            lambda t=stage.topic: load_offsets(settings.pg_dsn, settings.processor_id, t))
        _add_agent(app, topic, runner, settings)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok", "service": "crm-processor", "stages": list(stages)})

    @app.page("/metrics")
    async def metrics(web, request):
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.runners = runners
    return app


def _add_state_tasks(app: PositionedApp, state: StateProjection, settings: Settings,
                     kafka_security: KafkaSecurity) -> None:
    """The clock tick of the customer state and the feed relay, beside the view stage."""
    app.relay = FeedRelay(settings.pg_dsn, settings.kafka_bootstrap, f"{settings.processor_id}.feed-relay",
                          poll_s=settings.feed_relay_poll_s, security=kafka_security)
    ticker = app.ticker = StateTicker(state, settings.pg_dsn)

    @app.task
    async def feed_relay() -> None:
        await app.relay.run()

    @app.timer(interval=settings.state_tick_s)
    async def customer_state_tick() -> None:
        await ticker.run()


def _add_agent(app: faust.App, topic, runner: BatchRunner, settings: Settings) -> None:
    async def process(stream):
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            records = [Record(e.message.topic, e.message.partition, e.message.offset, e.message.key,
                              e.message.value, tuple(e.message.headers or ()), e.message.timestamp and
                              int(e.message.timestamp * 1000)) for e in events]
            await runner.run_drainable(records)

    process.__name__ = f"{runner.stage.name}_agent"
    app.agent(topic, name=f"crm.{runner.stage.name}", concurrency=1)(process)
