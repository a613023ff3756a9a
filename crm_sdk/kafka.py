"""Straight to Kafka, for trusted producers inside the platform (a bulk import, the simulator's
``--kafka`` mode): touchpoints written to ``crm.touchpoints`` with kafka-python, as the collector
writes them.

Each event is validated by the platform's own models (``events.envelope.validate``: the same
checks as the collector; an invalid one comes back in ``rejected`` with the reasons and is not
written) and sealed by the key vault (pseudonyms for identifiers, personal fields encrypted under
the subject's key) before it leaves the process, so the producer needs PostgreSQL and the master key
(``VaultSealer.from_settings``). Writing unsealed events must be asked for (``allow_unsealed=True``):
the processors accept them, but then personal data sits in the log in clear. Records are structured
CloudEvents (``content-type: application/cloudevents+json``), keyed by the event's primary
identifier. ``send`` returns once Kafka acknowledged every record (acks=all).

Channel systems outside the platform use the HTTP ``Client``: it needs only an API key.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

from crm_sdk.http import SendResult
from events.envelope import InvalidEvent, Touchpoint, validate
from events.kafka_binding import structured_headers

TOUCHPOINTS = "crm.touchpoints"
HEADERS = structured_headers()


class VaultSealer:
    """Seals touchpoints with the platform's key vault (services/common/vault.py), one PostgreSQL
    round trip per batch for identifiers not seen within the vault's cache time."""

    def __init__(self, dsn: str, vault):
        from services.common.db import TransactionPool

        self.vault = vault
        self.pool = TransactionPool(dsn, maxconn=1, application_name="crm-sdk-kafka")

    @classmethod
    def from_settings(cls, settings=None) -> "VaultSealer":
        from services.common import settings as settings_mod
        from services.common.vault import from_settings

        settings = settings or settings_mod.load()
        return cls(settings.pg_dsn, from_settings(settings))

    def seal(self, touchpoints: list[Touchpoint]) -> list[tuple[bytes, bytes]]:
        with self.pool.transaction() as cur:
            self.vault.subjects(cur, [i for tp in touchpoints for i in tp.identifiers])
            return [self.vault.seal(cur, tp) for tp in touchpoints]

    def close(self) -> None:
        self.pool.close()


class KafkaSink:
    def __init__(self, bootstrap: str, *, sealer: VaultSealer | None = None, allow_unsealed: bool = False,
                 topic: str = TOUCHPOINTS, default_region: str = "CN", ack_timeout_s: float = 30.0,
                 blocked: frozenset[str] | None = None, **producer_config: Any):
        if sealer is None and not allow_unsealed:
            raise ValueError("give a sealer (VaultSealer.from_settings()), or allow_unsealed=True to write personal "
                             "data to the log in clear")
        self.sealer, self.topic, self.default_region = sealer, topic, default_region
        self.blocked = blocked  # placeholder values refused as identifiers (default: the platform's default list)
        self.ack_timeout_s = ack_timeout_s
        self.producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5,
                                      batch_size=256 * 1024, client_id="crm-sdk", **producer_config)

    def _unsealed(self, tp: Touchpoint) -> tuple[bytes, bytes]:
        ident = tp.primary_identifier
        return f"{ident.kind}:{ident.value}".encode(), orjson.dumps(tp.to_cloudevent())

    def send(self, events: Iterable[dict[str, Any]]) -> SendResult:
        result = SendResult()
        received = datetime.now(timezone.utc)
        valid: list[Touchpoint] = []
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(events):
            try:
                tp = validate(item, received_at=received, default_region=self.default_region, blocked=self.blocked)
            except InvalidEvent as exc:
                result.rejected.append({"index": index, "id": item.get("id") if isinstance(item, dict) else None,
                                        "reason": exc.kind, "errors": [e.as_dict() for e in exc.errors]})
                continue
            result.accepted.append(tp.id)
            if (tp.source, tp.id) not in seen:
                seen.add((tp.source, tp.id))
                valid.append(tp)
        if not valid:
            return result
        records = self.sealer.seal(valid) if self.sealer is not None else [self._unsealed(tp) for tp in valid]
        try:
            futures = [self.producer.send(self.topic, key=key, value=value, headers=HEADERS) for key, value in records]
            self.producer.flush(timeout=self.ack_timeout_s)
            for f in futures:
                f.get(timeout=0)
        except KafkaError as exc:
            result.failed, result.error = len(result.accepted), f"{type(exc).__name__}: {exc}"
            result.accepted = []
        return result

    def close(self) -> None:
        self.producer.close()
        if self.sealer is not None:
            self.sealer.close()

    def __enter__(self) -> "KafkaSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
