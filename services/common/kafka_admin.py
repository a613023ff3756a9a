"""Kafka readiness check and topic creation (used by ``deploy/kafka.sh`` and by tests).

``wait_ready`` waits until the broker really serves a produce (acks=all) and a fetch of the same
record, not merely until its port is open. ``ensure_topics`` creates the topics of
:mod:`services.common.topics` idempotently.

Command line, run from the repository root::

    python -m services.common.kafka_admin ready --bootstrap 127.0.0.1:9092 --timeout 90
    python -m services.common.kafka_admin create-topics --bootstrap 127.0.0.1:9092 --partitions 4
    python -m services.common.kafka_admin scram-user --bootstrap 127.0.0.1:9092

The command line connects as the ``CRM_KAFKA_SECURITY_PROTOCOL`` / ``CRM_KAFKA_SASL_*`` /
``CRM_KAFKA_SSL_*`` settings say (:mod:`services.common.kafka_security`); ``scram-user`` creates
or updates the SCRAM credential of ``CRM_KAFKA_SASL_USERNAME`` (password ``CRM_KAFKA_SASL_PASSWORD``,
never on the command line), connected over the PLAINTEXT listener given.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Iterator

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import KafkaAdminClient
from pydantic import SecretStr

from services.common.kafka_security import PLAINTEXT, KafkaSecurity
from services.common.topics import TOPICS, TopicSpec

log = logging.getLogger(__name__)

PROBE_TOPIC = "crm.healthcheck"


class _Complaints(logging.Handler):
    """kafka-python's warnings, kept instead of shown: the clearest one explains a failure."""

    # what a retry will not cure: refused credentials, an untrusted or unreadable certificate
    TELLING = ("Authentication", "Sasl", "SASL", "Handshake failed", "certificate", "CERTIFICATE", "SSLError")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages = [*self.messages[-49:], record.getMessage()]

    def reason(self) -> str | None:
        telling = [m for m in self.messages if any(word in m for word in self.TELLING)]
        return (telling or self.messages or [None])[-1]

    def explain(self, error: BaseException) -> str:
        reason = self.reason()
        return f"{error!r}" + (f"; the Kafka client said: {reason}" if reason and reason not in str(error) else "")


@contextlib.contextmanager
def _quiet_kafka_logs() -> Iterator[_Complaints]:
    """Keep kafka-python's connection-refused/retry chatter off the console while we poll a starting
    broker; its complaints are kept to explain a failure (e.g. an authentication refused)."""
    logger = logging.getLogger("kafka")
    old_level, old_propagate = logger.level, logger.propagate
    complaints = _Complaints()
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(complaints)
    try:
        yield complaints
    finally:
        logger.removeHandler(complaints)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextlib.contextmanager
def _explained(complaints: _Complaints) -> Iterator[None]:
    """A Kafka client error re-raised with what the client logged about it (a timeout alone says little)."""
    try:
        yield
    except kafka_errors.KafkaError as exc:
        raise RuntimeError(complaints.explain(exc)) from exc


def _admin(bootstrap: str, timeout_ms: int, security: KafkaSecurity = PLAINTEXT) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-kafka-admin",
                            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms, **security.kafka_python())


def _create(admin: KafkaAdminClient, specs: dict[str, dict], timeout_ms: int) -> list[str]:
    """Create the given topics; return those created now (already-existing ones are skipped)."""
    if not specs:
        return []
    result = admin.create_topics(specs, timeout_ms=timeout_ms, raise_errors=False)
    created, failures = [], []
    for topic in result["topics"]:
        error = kafka_errors.for_code(topic["error_code"])
        if error is kafka_errors.NoError:
            created.append(topic["name"])
        elif error is not kafka_errors.TopicAlreadyExistsError:  # lost a race: fine
            failures.append(f"{topic['name']}: {error.__name__} {topic.get('error_message') or ''}".strip())
    if failures:
        raise RuntimeError("could not create topics: " + "; ".join(failures))
    if created:
        admin.wait_for_topics(created, timeout_ms=timeout_ms)
    return created


def _probe(bootstrap: str, budget_s: float, security: KafkaSecurity = PLAINTEXT) -> None:
    """One round trip: ensure the probe topic, produce a unique record with acks=all, fetch it back."""
    ms = max(1000, int(budget_s * 1000))
    admin = _admin(bootstrap, ms, security)
    try:
        if PROBE_TOPIC not in admin.list_topics():
            _create(admin, {PROBE_TOPIC: {"num_partitions": 1, "replication_factor": 1}}, ms)
    finally:
        admin.close()

    token = uuid.uuid4().hex.encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="crm-ready", acks="all",
                             bootstrap_timeout_ms=ms, max_block_ms=ms, request_timeout_ms=ms,
                             delivery_timeout_ms=ms + 1000, linger_ms=0, **security.kafka_python())
    try:
        sent = producer.send(PROBE_TOPIC, key=b"ready", value=token).get(timeout=budget_s)
    finally:
        producer.close(timeout=2)

    tp = TopicPartition(PROBE_TOPIC, sent.partition)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="crm-ready", group_id=None,
                             enable_auto_commit=False, bootstrap_timeout_ms=ms,
                             request_timeout_ms=max(ms, 2000), fetch_max_wait_ms=200, **security.kafka_python())
    try:
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                if record.value == token:
                    return
        raise RuntimeError(f"record produced at {tp.topic}[{tp.partition}]@{sent.offset} was not fetched back")
    finally:
        consumer.close()


def wait_ready(bootstrap: str, timeout: float, security: KafkaSecurity = PLAINTEXT) -> None:
    """Block until the broker at ``bootstrap`` accepts a produce (acks=all) and serves it back.

    Creates the probe topic ``crm.healthcheck`` (1 partition) when missing. Raises
    :class:`TimeoutError` carrying the last error when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    with _quiet_kafka_logs() as complaints:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Kafka at {bootstrap} ({security.describe()}) not ready after {timeout:g}s; "
                                   f"last error: {complaints.explain(last) if last else None}")
            try:
                _probe(bootstrap, min(remaining, 15.0), security)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def ensure_topics(bootstrap: str, partitions: int, replication_factor: int = 1,
                  security: KafkaSecurity = PLAINTEXT, specs: tuple[TopicSpec, ...] = TOPICS) -> list[str]:
    """Create every topic of ``specs`` (``services.common.topics.TOPICS``) that does not exist yet.

    New topics get ``partitions`` partitions and their spec's config. Existing topics are left
    alone; one with fewer partitions than asked only logs a warning. Returns the names created.
    """
    timeout_ms = 15000
    with _quiet_kafka_logs() as complaints, _explained(complaints), \
            contextlib.closing(_admin(bootstrap, timeout_ms, security)) as admin:
        existing = set(admin.list_topics())
        wanted = {spec.name: {"num_partitions": partitions, "replication_factor": replication_factor,
                              "configs": dict(spec.config)}
                  for spec in specs if spec.name not in existing}
        present = [spec.name for spec in specs if spec.name in existing]
        fewer = sorted(f"{t['name']}={len(t.get('partitions') or [])}"
                       for t in (admin.describe_topics(present) if present else [])
                       if len(t.get("partitions") or []) < partitions)
        if fewer:
            log.warning("existing topics have fewer partitions than the %d asked, left as they are: %s",
                        partitions, ", ".join(fewer))
        return _create(admin, wanted, timeout_ms)


def ensure_scram_user(bootstrap: str, username: str, password: SecretStr, mechanism: str = "SCRAM-SHA-512",
                      security: KafkaSecurity = PLAINTEXT) -> None:
    """Create or update the SCRAM credential of ``username`` (KRaft stores it in the cluster
    metadata); the broker then authenticates SCRAM clients of that name with ``password``."""
    from kafka.admin import UserScramCredentialUpsertion

    if mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ValueError(f"not a SCRAM mechanism: {mechanism!r} (SCRAM-SHA-256 or SCRAM-SHA-512)")
    with _quiet_kafka_logs() as complaints, _explained(complaints), \
            contextlib.closing(_admin(bootstrap, 15000, security)) as admin:
        upsert = UserScramCredentialUpsertion(username, mechanism, password.get_secret_value(), iterations=8192)
        error = admin.alter_user_scram_credentials([upsert]).get(username)
    if error:
        raise RuntimeError(f"could not set the {mechanism} credential of {username}: {error}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m services.common.kafka_admin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("ready", help="wait until the broker accepts produce and fetch")
    ready.add_argument("--bootstrap", required=True)
    ready.add_argument("--timeout", type=float, default=90.0, help="seconds (default 90)")
    create = sub.add_parser("create-topics", help="create the platform's topics if missing")
    create.add_argument("--bootstrap", required=True)
    create.add_argument("--partitions", type=int, required=True)
    create.add_argument("--replication-factor", type=int, default=1)
    scram = sub.add_parser("scram-user", help="create or update the SCRAM credential of CRM_KAFKA_SASL_USERNAME "
                                              "(password CRM_KAFKA_SASL_PASSWORD, mechanism CRM_KAFKA_SASL_MECHANISM)")
    scram.add_argument("--bootstrap", required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="kafka_admin: %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # failures are reported below, once
    try:
        from services.common.settings import load

        cfg = load()
        security = KafkaSecurity.from_settings(cfg)
        if args.command == "ready":
            started = time.monotonic()
            wait_ready(args.bootstrap, args.timeout, security)
            print(f"kafka_admin: {args.bootstrap} ready (produce+fetch ok, {security.describe()}) "
                  f"in {time.monotonic() - started:.1f}s")
        elif args.command == "scram-user":
            if not (cfg.kafka_sasl_username and cfg.kafka_sasl_password):
                raise ValueError("set CRM_KAFKA_SASL_USERNAME and CRM_KAFKA_SASL_PASSWORD")
            mechanism = cfg.kafka_sasl_mechanism or "SCRAM-SHA-512"
            ensure_scram_user(args.bootstrap, cfg.kafka_sasl_username, cfg.kafka_sasl_password, mechanism, security)
            print(f"kafka_admin: {mechanism} credential of {cfg.kafka_sasl_username} set")
        else:
            if args.partitions < 1 or args.replication_factor < 1:
                parser.error("--partitions and --replication-factor must be >= 1")
            created = ensure_topics(args.bootstrap, args.partitions, args.replication_factor, security)
            print(f"kafka_admin: topics created: {', '.join(created) if created else 'none (all exist)'}")
    except Exception as exc:  # noqa: BLE001 - report any failure as a clear one-liner
        print(f"kafka_admin: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
